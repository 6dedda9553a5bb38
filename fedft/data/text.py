"""Text helpers: a deterministic hashing tokenizer for tiny random test models (no vocabulary file)."""

from __future__ import annotations

import re
import zlib

import torch

_WORD = re.compile(r"\w+|[^\w\s]")


class HashTokenizer:
    """Whitespace/punctuation tokenizer that hashes words into ``vocab_size`` ids.

    Only for tiny random models built from config in tests: real models use their own tokenizer.
    ids 0, 1, 2 are PAD, CLS (or BOS) and SEP (or EOS).
    """

    pad_token_id, cls_token_id, sep_token_id = 0, 1, 2
    eos_token_id = sep_token_id  # generation ends a row at SEP

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 8:
            raise ValueError("vocab_size must be >= 8")
        self.vocab_size = vocab_size
        self._words: dict[int, str] = {}  # id -> the first word seen with it, for decode

    def ids(self, text: str) -> list[int]:
        out = []
        for w in (w.lower() for w in _WORD.findall(text)):
            i = 3 + zlib.crc32(w.encode()) % (self.vocab_size - 3)
            self._words.setdefault(i, w)
            out.append(i)
        return out

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Space-joined words of ``ids``: each id's first word seen by :meth:`ids` (hashing is
        not invertible, so a collision decodes to the other word), ``<id>`` for ids never seen."""
        special = {self.pad_token_id: "<pad>", self.cls_token_id: "<cls>", self.sep_token_id: "<sep>"}
        words = [special[i] if i in special else self._words.get(i, f"<{i}>")
                 for i in ids if not (skip_special_tokens and i in special)]
        return " ".join(words)

    def __call__(self, texts: list[str], max_length: int, add_cls: bool = True) -> dict[str, torch.Tensor]:
        rows = []
        for t in texts:
            ids = self.ids(t)
            ids = ([self.cls_token_id] + ids[: max_length - 2] + [self.sep_token_id]) if add_cls \
                else ids[: max_length - 1] + [self.sep_token_id]
            rows.append(ids)
        out = torch.zeros(len(rows), max_length, dtype=torch.long)
        mask = torch.zeros(len(rows), max_length, dtype=torch.long)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        return {"input_ids": out, "attention_mask": mask}
