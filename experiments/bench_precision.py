"""Benchmark: compute precision (fp32 vs bf16) of the frozen DINOv2-small body, against the machine's peak.

Measures, on the machine it runs on:

* the matmul peak: the best of square GEMMs (1024, 2048, 3072) in fp32 and in bf16;
* per precision and batch: per-sample time of the body forward (no graph), the forward plus
  input-gradient backward (what the body service runs for every training batch), and a full
  split training step (head -> body -> tail, backward, optimizer step, as in the main job), with
  the FLOPs of each counted by ``FlopCounterMode`` and the achieved FLOP/s as a share of the peak
  of the same precision; the bf16 input gradient's cosine similarity to fp32 and the logits'
  largest difference;
* options (each measured, kept or not on the numbers): ``--attn eager`` against the default SDPA
  attention, ``--compile`` (``torch.compile`` of the body), ``--threads``, and ``--microbatch N``:
  N client batches run one after another against one batch of N times the size (the most that
  cross-client micro-batching in the body service could gain).

Precisions are interleaved repetition by repetition, so both see the same machine load; medians.

    .venv/bin/python experiments/bench_precision.py --out experiments/results/precision/bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedft.accounting import CommLedger
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.config import ExperimentConfig
from fedft.flops import counter
from fedft.model import set_precision
from fedft.precision import ATTENTIONS, DTYPES, attention, cpu_bf16_flags
from fedft.split import SplitSpec, split_model, split_step

PRECISIONS = ("fp32", "bf16")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gemm_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 3072), reps: int = 5) -> dict[str, Any]:
    """Best achieved FLOP/s of ``n x n @ n x n`` over ``sizes`` (2 n^3 FLOPs each)."""
    best: dict[str, Any] = {"gflops": 0.0}
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        gflops = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": round(gflops, 1), "n": n}
    return best


def build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from fedft.model import build_model

    cfg = ExperimentConfig.from_overrides([
        f"model.name={args.model}", f"data.image_size={args.image_size}", "method.name=prompt_tuning",
        "method.prompt_len=10", "model.readout_norm=batchnorm"])
    model, _, pre = build_model(cfg, 10)
    parts = split_model(model, SplitSpec(0, 0))
    parts.freeze_body()
    return model, parts, pre


def images(pre: Any, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    return {"pixel_values": pre(imgs), "labels": torch.as_tensor(rng.integers(0, 10, n))}


def flops_of(fn: Callable[[], Any]) -> int:
    with counter() as c:
        fn()
    return int(c.get_total_flops())


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Case:
    """The three measured calls of one batch size, for the model's current compute dtype."""

    def __init__(self, model: Any, parts: Any, batch: dict[str, torch.Tensor], body: Any) -> None:
        self.model, self.parts, self.batch, self.body = model, parts, batch, body
        with torch.no_grad():
            self.h = parts.head(batch)[0].detach()  # (B, T, D), fp32 in either precision
        self.g = torch.randn(self.h.shape, generator=torch.Generator().manual_seed(1))  # same in both
        self.session = BodySession(body)
        self.opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            return self.body(self.h, None)

    def forward_backward(self) -> torch.Tensor:
        self.session.forward(self.h, None)
        return self.session.backward(self.g)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        transport = LoopbackTransport(BodySession(self.body), CommLedger())
        split_step(self.parts, self.batch, transport, self.model.loss)
        self.opt.step()


def measure_batches(args: argparse.Namespace, model: Any, parts: Any, pre: Any, body: Any,
                    label: str) -> list[dict[str, Any]]:
    rows = []
    for b in args.batches:
        batch = images(pre, b)
        cases = {p: Case(model, parts, batch, body) for p in PRECISIONS}
        eager = Case(model, parts, batch, parts.body)  # FLOPs are counted on the eager body
        flops = {"forward": flops_of(eager.forward), "forward_backward": flops_of(eager.forward_backward),
                 "step": flops_of(eager.step)}
        quality: dict[str, Any] = {}
        for p, case in cases.items():  # one warm-up call of each (compiles a compiled body)
            set_precision(model, p, args.attn)
            quality[p] = (case.forward_backward(), case.forward())
            case.step()
        times: dict[str, dict[str, list[float]]] = {p: {k: [] for k in flops} for p in PRECISIONS}
        for _ in range(args.reps):
            for p, case in cases.items():
                set_precision(model, p, args.attn)
                times[p]["forward"].append(timed(case.forward))
                times[p]["forward_backward"].append(timed(case.forward_backward))
                times[p]["step"].append(timed(case.step))
        cos = float(F.cosine_similarity(quality["bf16"][0].double().flatten(), quality["fp32"][0].double().flatten(), dim=0))
        zdiff = float((quality["bf16"][1] - quality["fp32"][1]).abs().max())
        for p in PRECISIONS:
            row: dict[str, Any] = {"variant": label, "precision": p, "attention": attention(args.attn, p),
                                   "batch": b}
            for k, ts in times[p].items():
                med = statistics.median(ts)
                row[f"{k}_ms_per_sample"] = round(med / b * 1e3, 2)
                row[f"{k}_gflops"] = round(flops[k] / med / 1e9, 1)
                row[f"{k}_pct_peak"] = round(100 * flops[k] / med / 1e9 / args.peak[p]["gflops"], 1)
            if p == "bf16":
                row.update(input_grad_cosine_to_fp32=round(cos, 6), body_output_max_abs_diff=round(zdiff, 4))
            rows.append(row)
            print(json.dumps(row))
    set_precision(model, "fp32", args.attn)
    return rows


def concurrently(cases: list[Case]) -> float:
    """Seconds for every case's forward + backward, each in its own thread (as the body service
    serves concurrent clients)."""
    threads = [threading.Thread(target=c.forward_backward) for c in cases]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def microbatch(args: argparse.Namespace, model: Any, parts: Any, pre: Any) -> list[dict[str, Any]]:
    """N client batches of ``--batches[0]``: one after another, in N threads at once (what the
    body service does today), and merged into one batch (what micro-batching would do)."""
    b, n = args.batches[0], args.microbatch
    rows = []
    for p in PRECISIONS:
        set_precision(model, p, args.attn)
        small = [Case(model, parts, images(pre, b, seed=i), parts.body) for i in range(n)]
        merged = Case(model, parts, images(pre, b * n), parts.body)
        merged.forward_backward()
        small[0].forward_backward()
        ts: dict[str, list[float]] = {"sequential": [], "threads": [], "merged": []}
        for _ in range(args.reps):
            ts["sequential"].append(sum(timed(c.forward_backward) for c in small))
            ts["threads"].append(concurrently(small))
            ts["merged"].append(timed(merged.forward_backward))
        row: dict[str, Any] = {"precision": p, "clients": n, "batch_per_client": b}
        for k, v in ts.items():
            row[f"{k}_ms_per_sample"] = round(statistics.median(v) / (b * n) * 1e3, 2)
        row["merged_speedup_over_threads"] = round(row["threads_ms_per_sample"] / row["merged_ms_per_sample"], 3)
        rows.append(row)
        print(json.dumps(row))
    set_precision(model, "fp32", args.attn)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per call (median)")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--model", default="dinov2-small")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--attn", default="auto", choices=list(ATTENTIONS),
                    help="attention kernel (auto: fedft's choice per precision, see fedft/precision.py)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile of the body")
    ap.add_argument("--microbatch", type=int, default=0, help="also measure N client batches merged into one")
    ap.add_argument("--out", help="write the results (JSON) here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.peak = {p: gemm_peak(DTYPES[p]) for p in PRECISIONS}
    print("peak", json.dumps(args.peak))
    model, parts, pre = build(args)
    rows = measure_batches(args, model, parts, pre, parts.body, "no-compile")
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "bf16_flags": list(cpu_bf16_flags()),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "model": args.model, "image_size": args.image_size, "tokens": int(Case(model, parts, images(pre, 1),
                                                                                parts.body).h.shape[1]),
        "attn": args.attn, "peak": args.peak, "rows": rows}
    if args.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(parts.body)
        rows_c = measure_batches(args, model, parts, pre, compiled, "torch.compile")
        result["compile"] = {"rows": rows_c, "seconds_including_compilation": round(time.perf_counter() - t0, 1)}
    if args.microbatch:
        result["microbatch"] = microbatch(args, model, parts, pre)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
