"""The SFT datasets of runs (``data.name``) and their model-ready splits.

Registered into :data:`fedft.data.datasets.DATASETS` when that module loads: ``chatterbot-sft``
(y = language, so partitions split by language), ``trivia``, ``humaneval-tests``,
``stdlib-code`` (y = direction) and ``synthetic-sft`` (tests). A split is an :class:`SFTSplit`:
batches padded to their longest example, with response-only token labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fedft.config import DataConfig
from fedft.data.datasets import DATASETS, EncodedSplit, RawData


def _sft_raw(examples: list, test_fraction: float, group: Callable[[Any], str] = lambda e: e.group) -> RawData:
    """SFT examples as raw splits: a keyed test split (no group straddles it), y = group index."""
    from fedft.data.sft_sets import split_by_key

    parts = split_by_key(examples, key=lambda e: e.prompt, fractions=(0.0, test_fraction))
    names = sorted({group(e) for e in examples})
    index = {n: i for i, n in enumerate(names)}

    def ys(xs: list) -> np.ndarray:
        return np.array([index[group(e)] for e in xs], dtype=np.int64)

    return RawData("sft", parts["train"], ys(parts["train"]), parts["test"], ys(parts["test"]), names)


#: test fractions of the prompt-keyed splits: trivia's questions are chatterbot's English trivia
#: prompts, and equal fractions put every trivia test question in chatterbot-sft's test split too
CHATTERBOT_TEST = TRIVIA_TEST = 0.2


@DATASETS.register("chatterbot-sft")
def _chatterbot_sft(cfg: DataConfig) -> RawData:
    """chatterbot turn pairs in every language; y = language (partition by language)."""
    from fedft.assets import asset_dir
    from fedft.data.sft_sets import chatterbot_pairs

    return _sft_raw(chatterbot_pairs(asset_dir("chatterbot")), CHATTERBOT_TEST, group=lambda e: e.group.split("/")[0])


@DATASETS.register("trivia")
def _trivia(cfg: DataConfig) -> RawData:
    from fedft.assets import asset_dir
    from fedft.data.sft_sets import trivia

    return _sft_raw(trivia(asset_dir("chatterbot")), TRIVIA_TEST)


@DATASETS.register("humaneval-tests")
def _humaneval_tests(cfg: DataConfig) -> RawData:
    """HumanEval function -> unit tests; a fixed quarter of the problems is the test split."""
    from fedft.assets import asset_dir
    from fedft.data.sft_sets import humaneval_unit_tests

    return _sft_raw(humaneval_unit_tests(asset_dir("humaneval")), 0.25, group=lambda e: e.task)


@DATASETS.register("stdlib-code")
def _stdlib_code(cfg: DataConfig) -> RawData:
    """Standard-library docstring <-> function pairs; y = the direction (doc2func / func2doc)."""
    from fedft.data.sft_sets import stdlib_code

    return _sft_raw(stdlib_code()[0], 0.1, group=lambda e: e.task)


@DATASETS.register("synthetic-sft")
def _synthetic_sft(cfg: DataConfig, n: int = 300) -> RawData:
    """Addition questions answered in words, in two phrasings (the groups), for tests."""
    from fedft.data.sft import SFTExample

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
             "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
    rng = np.random.default_rng(0)
    examples = []
    for k in range(n):
        a, b = (int(v) for v in rng.integers(0, 10, 2))
        q = f"what is {words[a]} plus {words[b]} ?" if k % 2 else f"add {words[a]} and {words[b]} ."
        examples.append(SFTExample(f"{q} #{k}", words[a + b], task="add", group="what" if k % 2 else "add"))
    return _sft_raw(examples, 0.2)


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


class SFTSplit(EncodedSplit):
    """A split of tokenised SFT examples, padded per batch to its longest example (``labels`` in
    a batch are the response-only token labels; :attr:`labels` here are the group indices)."""

    def __init__(self, items: list, groups: torch.Tensor, pad_id: int) -> None:
        super().__init__({}, groups)
        self.items, self.pad_id = items, pad_id

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        from fedft.data.sft import pad_batch

        b = pad_batch([self.items[int(i)] for i in idx], self.pad_id)
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": b["labels"]}

    def max_tokens(self, idx: np.ndarray) -> int:
        """The longest example among ``idx``: no batch of them is padded beyond it."""
        return max(len(self.items[int(i)]) for i in idx)


def encode_sft(x: list, y: torch.Tensor, preprocess: Any, max_length: int, system: str | None = None) -> SFTSplit:
    """Tokenise SFT examples, each prompt after the ``system`` turn if given (cached under
    FEDFT_HOME/cache/sft for a real tokenizer)."""
    from fedft.data.sft import tokenize as sft_tokenize
    from fedft.data.sft import tokenize_cached

    if system and not getattr(preprocess, "chat_template", None):
        from fedft.errors import ConfigError

        raise ConfigError("data.system_prompt needs a tokenizer with a chat template; set data.system_prompt = \"\"")
    if hasattr(preprocess, "get_vocab"):
        from fedft.assets import fedft_home

        items = tokenize_cached(x, preprocess, max_length, fedft_home() / "cache" / "sft", system=system)
    else:  # the hashing tokenizer of tiny test models
        items = [sft_tokenize(ex, preprocess, max_length, system=system) for ex in x]
    return SFTSplit(items, y, _pad_id(preprocess))


@DATASETS.register("arith")
def _arith(cfg: DataConfig) -> RawData:
    """Arithmetic word problems, one reasoning-style answer each (fedft.data.arith); y = operation."""
    from fedft.data.arith import TEST_FRACTION, examples

    return _sft_raw(examples(("reasoning",)), TEST_FRACTION, group=lambda e: e.task)


@DATASETS.register("arith-candidates")
def _arith_candidates(cfg: DataConfig) -> RawData:
    """The same problems with one correct answer per style (the GRAPE pool); y = style."""
    from fedft.data.arith import TEST_FRACTION, examples

    return _sft_raw(examples(), TEST_FRACTION)
