"""The data and the reward classifiers of experiments/llm_tqstar.py.

Data (seed 0, the same for every cell): BBC News articles, deduplicated, in a seeded order. The
first ``PROMPT_PER_SECTION`` articles of each section are the prompt pool (never seen by a
classifier); the rest is split at random into halves A and B.

Classifiers [D]: all-MiniLM-L6-v2 (asset ``minilm-l6``) with a linear head on its mean-pooled
output (its sentence-embedding recipe), all weights fine-tuned as a 5-way section classifier.
Each is trained on snippets of its half: per article one window of 8-40 words of the body (a
seeded start and length: generated texts are that short, and ARGS scores partial texts), AdamW,
constant lr, ``clf_epochs`` epochs of batch 16, max 64 tokens. Classifier A gives the target
reward r(y) = P_A(target | y) and the baseline reward r_BL(y) = P_A(baseline topic | y);
classifier B, trained on the other half, gives the evaluation reward P_B(target | y), so that
decoding that exploits A's quirks is not rewarded by the judge. Held-out accuracy: each on the
other half's snippets and on the prompt pool's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

POOL_SEED = 0  # [D]
PROMPT_PER_SECTION = 20  # [D] articles per section kept for prompts (100 in all)
SNIPPET_WORDS = (8, 40)  # [D]
MAX_TOKENS = 64  # [D] classifier input


def articles() -> tuple[list[str], list[str]]:
    """Deduplicated BBC articles and their section names, in corpus order."""
    from fedft.assets import asset_dir
    from fedft.data.sources import load_bbc_news

    texts, labels, names = load_bbc_news(asset_dir("bbc-news"))
    seen: dict[str, str] = {}
    for t, y in zip(texts, labels, strict=True):
        seen.setdefault(t, names[int(y)])
    return list(seen), list(seen.values())


def snippet(article: str, rng: Any) -> str:
    """A window of 8-40 words of the article's body (the headline line skipped)."""
    words = article.strip().partition("\n")[2].split() or article.split()
    n = int(rng.integers(SNIPPET_WORDS[0], SNIPPET_WORDS[1] + 1))
    start = int(rng.integers(0, max(len(words) - n, 0) + 1))
    return " ".join(words[start: start + n])


def opening(article: str, words: int = 6) -> str:
    """The body's first ``words`` words: a start that leaves the story's topic mostly open."""
    body = article.strip().partition("\n")[2].split() or article.split()
    return " ".join(body[:words])


def make_data() -> dict[str, Any]:
    """Prompt pool (per section), halves A and B as snippet lists with labels (cheap: made anew
    in every process, the same each time)."""
    import numpy as np

    texts, sections = articles()
    names = sorted(set(sections))
    rng = np.random.default_rng(POOL_SEED)
    order = rng.permutation(len(texts)).tolist()
    pool: list[int] = []
    for s in names:
        pool += [i for i in order if sections[i] == s][:PROMPT_PER_SECTION]
    rest = [i for i in order if i not in set(pool)]
    half = len(rest) // 2

    def snippets(idx: Sequence[int]) -> dict[str, list]:
        return {"texts": [snippet(texts[i], rng) for i in idx], "labels": [names.index(sections[i]) for i in idx]}

    return {"names": names, "seed": POOL_SEED, "prompt_pool": [{"section": sections[i], "opening": opening(texts[i])}
                                                                for i in sorted(pool)],
            "pool_snippets": snippets(sorted(pool)), "A": snippets(sorted(rest[:half])),
            "B": snippets(sorted(rest[half:]))}


class TopicClassifier:
    """MiniLM + linear head on the mean-pooled output; ``probs(texts)`` (N, C) cached per text."""

    def __init__(self, name: str, n_classes: int, seed: int = 0) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from fedft.model.loading import resolve

        torch.manual_seed(seed)
        self.tok = AutoTokenizer.from_pretrained(resolve(name))
        self.encoder = AutoModel.from_pretrained(resolve(name))
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, n_classes)
        self.cache: dict[str, Any] = {}
        self.calls = 0

    def parameters(self) -> list:
        return [*self.encoder.parameters(), *self.head.parameters()]

    def logits(self, texts: list[str]) -> Any:
        enc = self.tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        h = self.encoder(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1e-9))

    def probs(self, texts: Sequence[str], batch_size: int = 64) -> Any:
        import numpy as np
        import torch

        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        self.encoder.eval()
        with torch.no_grad():
            for at in range(0, len(todo), batch_size):
                part = todo[at: at + batch_size]
                self.calls += len(part)
                for t, p in zip(part, torch.softmax(self.logits(part), -1).numpy(), strict=True):
                    self.cache[t] = p
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.head.out_features))

    def state(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "head": self.head.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.head.load_state_dict(state["head"])


def train_classifier(clf: TopicClassifier, texts: list[str], labels: list[int], epochs: int, lr: float,
                     seed: int = 0, batch_size: int = 16) -> list[float]:
    """Fine-tune every weight with AdamW (constant lr); the mean loss of each epoch."""
    import numpy as np
    import torch

    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=0.01)
    rng, y, out = np.random.default_rng(seed), torch.tensor(labels), []
    clf.encoder.train()
    for _ in range(epochs):
        order, total = rng.permutation(len(texts)), 0.0
        for at in range(0, len(texts), batch_size):
            idx = order[at: at + batch_size].tolist()
            loss = torch.nn.functional.cross_entropy(clf.logits([texts[i] for i in idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        out.append(total / len(texts))
    clf.encoder.eval()
    clf.cache.clear()
    return out


def accuracy(clf: TopicClassifier, data: dict[str, list]) -> float:
    p = clf.probs(data["texts"])
    return float((p.argmax(-1) == data["labels"]).mean()) if len(p) else float("nan")


def cache_dir() -> Path:
    from fedft.assets.catalog import fedft_home

    return fedft_home() / "cache" / "llm_tqstar"


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def classifier(half: str, data: dict[str, Any], opts: Any) -> tuple[TopicClassifier, dict[str, Any]]:
    """Classifier ``half`` (A or B): its weights from the cache when there, else trained (and
    cached); and what its training did (nothing when it came from the cache)."""
    import torch

    n = opts.clf_max or len(data[half]["texts"])
    train = {k: v[:n] for k, v in data[half].items()}
    key = {"half": half, "model": opts.classifier, "epochs": opts.clf_epochs, "lr": opts.clf_lr,
           "seed": POOL_SEED, "snippets": len(train["texts"]), "first": train["texts"][0]}
    path = cache_dir() / f"clf_{half}_{key_hash(key)}.pt"
    clf = TopicClassifier(opts.classifier, len(data["names"]), seed=POOL_SEED)
    rec: dict[str, Any] = {"half": half, "key": key}
    if path.is_file():
        clf.load(torch.load(path))
        rec["cached"] = True
    else:
        t0 = time.perf_counter()
        rec["losses"] = train_classifier(clf, train["texts"], train["labels"], opts.clf_epochs, opts.clf_lr)
        rec["train_s"] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(clf.state(), path)
    return clf, rec


def classifier_record(half: str, data: dict[str, Any], opts: Any) -> dict[str, Any]:
    """Train (or load) classifier ``half`` and measure its held-out accuracy: on the other half's
    snippets and on the prompt pool's."""
    clf, rec = classifier(half, data, opts)
    rec["acc_other_half"] = accuracy(clf, data["B" if half == "A" else "A"])
    rec["acc_prompt_pool"] = accuracy(clf, data["pool_snippets"])
    return rec
