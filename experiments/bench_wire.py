"""Benchmark: encode and decode time of each split wire format against one split step's compute.

At the split shape of each task, built from its real model and config: vision is the main job
(DINOv2-small, 112 px, 10 prompts; ``fedft/configs/sfprompt_mnist.toml``), text is split
SmolLM2-135M (``experiments/configs/sfprompt_smollm2.toml``; every row at the configured
``max_length``, the longest a batch gets). Per format: the median time to encode one
``(B, T, D)`` frame and to decode it, on a real body output; for gradients the sender's encoder
(:class:`fedft.body.wire.ErrorFeedback`, which also decodes its own frame for top-k). One split
step sends four such frames (activations up and down, gradients up and down), so a step's codec
time is ``2 x (act encode + decode) + 2 x (grad encode + decode)``, reported as a share of the
median time of one split step of the same model in process (``LoopbackTransport``, fp32 wire,
the config's compute precision).

    .venv/bin/python experiments/bench_wire.py --json experiments/results/wire/bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"vision": "fedft/configs/sfprompt_mnist.toml", "text": "experiments/configs/sfprompt_smollm2.toml"}
FORMATS = ["fp32", "fp16", "bf16", "int8", "int4", "topk"]


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def make_batch(cfg: Any, pre: Any, batch: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A batch of the task's shape: random 28x28 digits, or random tokens at ``max_length``."""
    if cfg.model.task == "causal_lm":
        ids = torch.as_tensor(rng.integers(0, 1000, (batch, cfg.data.max_length)))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    imgs = rng.integers(0, 255, (batch, 28, 28), dtype=np.uint8)
    return {"pixel_values": pre(imgs), "labels": torch.as_tensor(rng.integers(0, 10, batch))}


def split_setup(task: str, batch: int) -> tuple[Any, Any, dict[str, torch.Tensor], str]:
    """The task's model split at its config's cut, frozen body, its precision; a batch."""
    from fedft.config import ExperimentConfig
    from fedft.model import build_model, set_precision
    from fedft.split import SplitSpec, split_model

    cfg = ExperimentConfig.from_toml(ROOT / CONFIGS[task])
    model, _, pre = build_model(cfg, 10)
    set_precision(model, cfg.train.precision)
    parts = split_model(model, SplitSpec(cfg.split.head_blocks, cfg.split.tail_blocks))
    parts.freeze_body()
    return model, parts, make_batch(cfg, pre, batch, np.random.default_rng(0)), cfg.train.precision


def step_ms(model: Any, parts: Any, batch: dict[str, torch.Tensor], steps: int) -> tuple[float, torch.Tensor]:
    """Median ms of one split step (fp32 wire, in process), and a real body output."""
    from fedft.accounting import CommLedger
    from fedft.body.transport import BodySession, LoopbackTransport
    from fedft.split import split_step

    loop = LoopbackTransport(BodySession(parts.body), CommLedger())

    def one() -> None:
        model.zero_grad(set_to_none=True)
        split_step(parts, batch, loop, model.loss)

    ms = median_ms(one, steps)
    with torch.no_grad():
        h, mask = parts.head(batch)
        z = parts.body(h, mask)
    return ms, z.detach().float()


def codec_rows(z: torch.Tensor, repeats: int) -> list[dict[str, Any]]:
    """Per format: encode and decode ms of one frame, the gradient sender's encode ms, bytes."""
    from fedft.body import codec
    from fedft.body.wire import Wire

    rows = []
    for name in FORMATS:
        frame = codec.encode(z, name)
        sender = Wire(name).grad_encoder()
        rows.append({"format": name, "frame_bytes": len(frame), "bytes_vs_fp32": len(frame) / codec.frame_nbytes(z.shape, torch.float32),
                     "encode_ms": median_ms(lambda n=name: codec.encode(z, n), repeats),
                     "decode_ms": median_ms(lambda f=frame: codec.decode(f), repeats),
                     "grad_encode_ms": median_ms(lambda s=sender: s.encode(z), repeats),
                     "error_feedback": sender.enabled})
    return rows


def bench_task(task: str, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    model, parts, b, precision = split_setup(task, batch)
    step, z = step_ms(model, parts, b, steps)
    rows = codec_rows(z, repeats)
    for r in rows:
        r["step_codec_ms"] = 2 * (r["encode_ms"] + r["decode_ms"]) + 2 * (r["grad_encode_ms"] + r["decode_ms"])
        r["share_of_step"] = r["step_codec_ms"] / step
    B, T, D = (int(x) for x in z.shape)
    return {"task": task, "batch": B, "tokens": T, "hidden": D, "precision": precision, "step_ms": step,
            "steps": steps, "repeats": repeats, "formats": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="vision,text", help="comma-separated: vision, text (default both)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8, the configs' train.batch_size)")
    ap.add_argument("--steps", type=int, default=10, help="timed split steps (default 10)")
    ap.add_argument("--repeats", type=int, default=30, help="timed encodes/decodes per format (default 30)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the study's cells)")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    bad = [t for t in a.tasks.split(",") if t not in CONFIGS]
    if bad:
        ap.error(f"unknown task {', '.join(bad)}; use vision, text")
    torch.set_num_threads(a.threads)
    out = {"threads": torch.get_num_threads(), "tasks": [bench_task(t, a.batch, a.steps, a.repeats)
                                                         for t in a.tasks.split(",")]}
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
