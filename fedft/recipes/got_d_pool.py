"""The candidate pool and target set of the GOT-D experiment (Kang et al., ICLR 2024, arXiv
2405.02774), from the offline assets: the paper pre-fine-tunes on a large mixed corpus, selected
towards a small target sample; here BBC News plays both (one section is the target task),
mixed with chatterbot conversations and Python stdlib docstrings as off-target sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedft.data.sft import SFTExample
from fedft.recipes.got_d import chunk_texts


def _conversations(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Conversations rebuilt from consecutive (turn, next turn) pairs, turns joined by newlines."""
    convs: list[list[str]] = []
    for prompt, response in pairs:
        if convs and convs[-1][-1] == prompt:
            convs[-1].append(response)
        else:
            convs.append([prompt, response])
    return ["\n".join(c) for c in convs]


def _cap(texts: list[str], n: int | None, rng: np.random.Generator) -> list[str]:
    """At most ``n`` of ``texts``, a seeded subset kept in order."""
    if n is None or len(texts) <= n:
        return texts
    return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]


def gotd_pool(bbc_root: Path | str, chatterbot_root: Path | str, target_section: str = "tech",
              target_n: int = 100, heldout_n: int = 100, seed: int = 0, chunk_chars: int = 1000,
              per_source: int | None = None, stdlib: Path | str | None = None,
              ) -> tuple[list[str], list[str], list[str], list[str]]:
    """(pool_texts, pool_groups, target_texts, heldout_target_texts), all ~``chunk_chars``
    chunks [paper], deterministic for a ``seed``. Repeated BBC articles are read once and
    pool chunks equal to a target or held-out chunk are dropped.

    ``target_n`` and then ``heldout_n`` articles of ``target_section`` (a seeded permutation)
    become the target set and the held-out evaluation set; neither is in the pool. The pool holds
    the chunks of every other BBC article (group ``bbc/<section>``: the target section's other
    articles stay, flagged by their group), of the English chatterbot conversations
    (``chatterbot``) and of the Python stdlib docstrings (``stdlib``); ``per_source`` caps the
    chunks of each group (a seeded subset)."""
    from fedft.data.sft_sets import stdlib_code
    from fedft.data.sources import load_bbc_news, load_chatterbot

    texts, labels, names = load_bbc_news(bbc_root)
    first = sorted({t: i for i, t in reversed(list(enumerate(texts)))}.values())  # BBC News repeats ~100
    texts, labels = [texts[i] for i in first], labels[first]
    if target_section not in names:
        raise ValueError(f"BBC News has no section {target_section!r}; valid: {', '.join(names)}")
    rng = np.random.default_rng(seed)
    in_target = np.flatnonzero(labels == names.index(target_section))
    order = rng.permutation(in_target)
    if target_n < 1 or heldout_n < 0 or target_n + heldout_n > len(order):
        raise ValueError(f"target_n ({target_n}) + heldout_n ({heldout_n}) must fit the "
                         f"{len(order)} {target_section} articles, target_n >= 1")
    target_idx, heldout_idx = sorted(order[:target_n]), sorted(order[target_n: target_n + heldout_n])
    out = set(int(i) for i in order[: target_n + heldout_n])
    sources = {f"bbc/{name}": [t for i, t in enumerate(texts) if labels[i] == k and i not in out]
               for k, name in enumerate(names)}
    sources["chatterbot"] = _conversations(load_chatterbot(chatterbot_root, "english"))
    sources["stdlib"] = [e.response for e in stdlib_code(stdlib)[0] if e.task == "func2doc"]
    target = chunk_texts([texts[i] for i in target_idx], chunk_chars)
    heldout = chunk_texts([texts[i] for i in heldout_idx], chunk_chars)
    seen = set(target) | set(heldout)  # near-duplicate articles share passages
    pool_texts: list[str] = []
    pool_groups: list[str] = []
    for group, items in sources.items():
        chunks = _cap([c for c in chunk_texts(items, chunk_chars) if c not in seen], per_source, rng)
        pool_texts += chunks
        pool_groups += [group] * len(chunks)
    return pool_texts, pool_groups, target, heldout


def gotd_examples(pool_texts: Sequence[str], pool_groups: Sequence[str], target_texts: Sequence[str],
                  ) -> list[SFTExample]:
    """The pool of :class:`~fedft.recipes.got_d.GotDRecipe`: candidates (``task="candidate"``,
    their group) followed by the target texts (``task="target"``)."""
    return ([SFTExample("", t, task="candidate", group=g) for t, g in zip(pool_texts, pool_groups, strict=True)]
            + [SFTExample("", t, task="target", group="target") for t in target_texts])
