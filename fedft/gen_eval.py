"""Generative evaluation inside runs (``[generate]``): greedy completions judged per round.

A causal-LM run with ``generate.data`` set (an SFT dataset, e.g. ``trivia``) completes the
prompts of that dataset's ``generate.split`` with the current global model after every
evaluation (each ``federation.eval_every`` rounds, or each epoch centrally) and once on the
final model, and judges each completion against the example's response (exact match, token F1
or numeric). The score is the mean judgement: ``gen_score`` in metrics.csv, ``gen_*`` keys in
the summary; the final model's completions are in ``generations.jsonl``.

Decontamination: an example whose prompt is also a prompt of the run's training data is
dropped (chatterbot's English trivia file, for instance, is part of ``chatterbot-sft``); the
summary says how many were dropped. Prompts are rendered exactly as in training (chat template,
``data.system_prompt``) and left-truncated to ``data.max_length - generate.max_new_tokens`` tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedft.config import ExperimentConfig
from fedft.errors import ConfigError
from fedft.generation import GenerationConfig, generate_batched
from fedft.judges import JUDGES


def _eval_examples(cfg: ExperimentConfig) -> list:
    from fedft.data.datasets import load_raw

    g = cfg.generate
    data = replace(cfg.data, name=g.data, train_size=0, test_size=0,
                   val_size=cfg.data.val_size if g.split == "val" else 0)
    raw = load_raw(data, cfg.seed)
    if raw.modality != "sft":
        raise ConfigError(f"generate.data = {g.data!r} is not an SFT dataset; use one of chatterbot-sft, trivia, "
                          "humaneval-tests, stdlib-code, synthetic-sft")
    return list(raw.val_x if g.split == "val" else raw.test_x)


@dataclass
class GenerativeEval:
    """The run's generative evaluation set, its prompts and its judge."""

    name: str  # the judge (generate.judge)
    examples: list  # fedft.data.sft.SFTExample
    prompts: list[list[int]]
    removed: int  # examples dropped because their prompt is a training prompt
    judge: Any
    gen: GenerationConfig
    batch_size: int
    tokenizer: Any = field(repr=False)
    last: list = field(default_factory=list, repr=False)  # (completion, judgement) of the last score

    @classmethod
    def for_run(cls, cfg: ExperimentConfig, tokenizer: Any, train_x: list) -> GenerativeEval | None:
        """The evaluation of ``cfg.generate`` (None when ``generate.data`` is empty)."""
        from fedft.data.sft import render

        g = cfg.generate
        if not g.data:
            return None
        if cfg.model.task != "causal_lm":
            raise ConfigError("generate.data needs a language model: set model.task = 'causal_lm'")
        if not hasattr(tokenizer, "decode"):
            raise ConfigError(f"generate.data needs a tokenizer that decodes; {cfg.model.name} has none")
        seen = {getattr(e, "prompt", None) for e in train_x}
        pool = _eval_examples(cfg)
        kept = [e for e in pool if e.prompt not in seen]
        removed = len(pool) - len(kept)
        if not kept:
            raise ConfigError(f"every {g.split} prompt of {g.data!r} is also a training prompt; nothing to evaluate")
        if g.samples and g.samples < len(kept):
            order = np.random.default_rng([cfg.seed, 11]).permutation(len(kept))[: g.samples]
            kept = [kept[i] for i in sorted(order)]
        room = max(cfg.data.max_length - g.max_new_tokens, 1)
        system = cfg.data.system_prompt or None
        prompts = [render(e, tokenizer, system)[0][-room:] for e in kept]
        eos = getattr(tokenizer, "eos_token_id", None)
        gen = GenerationConfig(max_new_tokens=g.max_new_tokens, eos_token_ids=() if eos is None else (int(eos),))
        return cls(g.judge, kept, prompts, removed, JUDGES[g.judge](), gen, g.batch_size, tokenizer)

    def completions(self, model: Any) -> list[str]:
        """Greedy completions of every prompt, ``batch_size`` prompts at a time (by length)."""
        return generate_batched(model, self.tokenizer, self.prompts, self.gen, self.batch_size)

    def score(self, model: Any) -> float:
        """The mean judgement of the model's completions (judges' -1, cannot judge, counts as 0).
        The completions and judgements are kept for :meth:`write`."""
        texts = self.completions(model)
        verdicts = self.judge.judge([e.prompt for e in self.examples], texts, [e.response for e in self.examples])
        self.last = list(zip(texts, verdicts, strict=True))
        return float(np.mean([max(float(v), 0.0) for v in verdicts]))

    def write(self, path: str | Path) -> None:
        """The last scored completions as JSON lines: prompt, gold response, completion, judgement."""
        with open(path, "w", encoding="utf-8") as f:
            for e, (text, verdict) in zip(self.examples, self.last, strict=True):
                f.write(json.dumps({"prompt": e.prompt, "gold": e.response, "completion": text,
                                    self.name: float(verdict)}, ensure_ascii=False) + "\n")

    def summary(self, score: float, run_dir: str | Path | None = None) -> dict[str, Any]:
        """The summary's ``gen_*`` keys for the final model's ``score``; with ``run_dir``, the last
        scored completions are written there too (``generations.jsonl``)."""
        if run_dir is not None:
            from fedft.outputs import GENERATIONS

            self.write(Path(run_dir) / GENERATIONS)
        return {"gen_score": score, "gen_judge": self.name, "gen_samples": len(self.examples),
                "gen_decontaminated": self.removed}
