"""fedft's language-model paths against plain transformers on the same model, batch and precision
(issue 15): SFT training tokens per second and cached greedy generation tokens per second.

In one process, on SmolLM2-135M (the offline ``smollm2-135m`` asset):

- **SFT**: forward + backward of the response-only loss over ``--batch`` chat-formatted trivia
  examples (dynamic padding), every weight trainable, no optimizer step. fedft:
  ``TaskModel(batch)`` + ``TaskModel.loss``; plain: ``AutoModelForCausalLM(input_ids,
  attention_mask, labels=...)`` under the same autocast. Tokens = non-padding tokens.
- **Generation**: ``--new-tokens`` greedy tokens for ``--batch`` left-padded prompts with the KV
  cache. fedft: :func:`fedft.generation.generate`; plain: ``model.generate(do_sample=False)``,
  both run to the full length (no EOS). Tokens = new tokens.

Each measurement is the median of ``--repeats`` after one warm-up. Writes ``--out`` (JSON).

    .venv/bin/python experiments/bench_lm.py          # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _median_s(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from transformers import AutoModelForCausalLM

    from fedft.assets import asset_dir
    from fedft.config import DataConfig
    from fedft.data import sft
    from fedft.data.datasets import load_raw
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate, left_pad, load_for_generation
    from fedft.precision import describe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4, help="examples / prompts per batch (default 4)")
    p.add_argument("--new-tokens", type=int, default=32, help="generated tokens per prompt (default 32)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (default 7)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/lm/bench_lm.json")
    a = p.parse_args()

    ours, tok = load_for_generation("smollm2-135m", precision=a.precision)
    dtype = ours.compute_dtype
    plain = AutoModelForCausalLM.from_pretrained(asset_dir("smollm2-135m"), dtype=torch.float32)
    plain.set_attn_implementation(ours.backbone.config._attn_implementation)
    cast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype != torch.float32 else nullcontext

    raw = load_raw(DataConfig(name="trivia", train_size=0, val_size=0, test_size=0))
    items = [sft.tokenize(ex, tok, 256) for ex in raw.train_x[: a.batch]]
    batch = sft.pad_batch(items, tok.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
    sft_tokens = int(batch["attention_mask"].sum())

    def ours_sft() -> None:
        ours.train()
        ours.zero_grad(set_to_none=True)
        ours.loss(ours(inputs), inputs).backward()

    def plain_sft() -> None:
        plain.train()
        plain.zero_grad(set_to_none=True)
        with cast():
            out = plain(**inputs)
        out.loss.backward()

    for m in (ours, plain):
        m.requires_grad_(True)
    res: dict[str, Any] = {"model": "smollm2-135m", "batch": a.batch, "machine": platform.processor() or platform.machine(),
                           "threads": torch.get_num_threads(), "precision": describe(a.precision),
                           "sft_tokens_per_batch": sft_tokens}
    res["sft_fedft_s"] = _median_s(ours_sft, a.repeats)
    res["sft_plain_s"] = _median_s(plain_sft, a.repeats)
    for m in (ours, plain):
        m.zero_grad(set_to_none=True)
        m.eval()

    prompts = [chat_prompt_ids(tok, ex.prompt) for ex in raw.train_x[: a.batch]]
    cfg = GenerationConfig(max_new_tokens=a.new_tokens, eos_token_ids=(-1,))
    ids, mask = left_pad(prompts, tok.pad_token_id)

    def plain_gen() -> None:
        with torch.no_grad(), cast():
            plain.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                           min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    res["gen_fedft_s"] = _median_s(lambda: generate(ours, tok, prompts, cfg), a.repeats)
    res["gen_plain_s"] = _median_s(plain_gen, a.repeats)
    gen_tokens = a.batch * a.new_tokens
    res.update({
        "sft_fedft_tok_s": sft_tokens / res["sft_fedft_s"], "sft_plain_tok_s": sft_tokens / res["sft_plain_s"],
        "gen_fedft_tok_s": gen_tokens / res["gen_fedft_s"], "gen_plain_tok_s": gen_tokens / res["gen_plain_s"],
    })
    res["sft_fedft_over_plain"] = res["sft_fedft_tok_s"] / res["sft_plain_tok_s"]
    res["gen_fedft_over_plain"] = res["gen_fedft_tok_s"] / res["gen_plain_tok_s"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
