"""Benchmark: one split training step through the gRPC body service vs the same maths in one process.

Both paths run ``fedft.split.split_step`` on the same DINOv2-small split (h = t = 0, 10 prompts)
and the same batches; "in-process" uses ``LoopbackTransport`` (the codec round trip in memory),
"grpc" uses ``GrpcTransport`` to a body service on 127.0.0.1. Steps are interleaved so both see
the same machine load; the ratio of medians is reported.

    .venv/bin/python experiments/bench_split_step.py --batch 16 --image-size 112 --steps 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from fedft.accounting import CommLedger
from fedft.body.client import GrpcTransport
from fedft.body.service import new_token, start_body_service
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.config import ExperimentConfig
from fedft.split import SplitSpec, split_model, split_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", default="dinov2-small")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from fedft.model import build_model

    cfg = ExperimentConfig.from_overrides([f"model.name={args.model}", f"data.image_size={args.image_size}",
                                           "method.name=prompt_tuning", "method.prompt_len=10"])
    model, _, pre = build_model(cfg, 10)
    parts = split_model(model, SplitSpec(0, 0))
    parts.freeze_body()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (args.batch, 28, 28), dtype=np.uint8)
    batch = {"pixel_values": pre(imgs), "labels": torch.as_tensor(rng.integers(0, 10, args.batch))}
    with torch.no_grad():
        h, _ = parts.head(batch)
    T, D = int(h.shape[1]), int(h.shape[2])
    handle = start_body_service(parts.body, token=new_token(), mode="frozen")
    times: dict[str, list[float]] = {"inprocess": [], "grpc": []}
    try:
        loop = LoopbackTransport(BodySession(parts.body), CommLedger())
        with GrpcTransport(handle.address, handle.token, CommLedger(), T=T, D=D, max_batch=args.batch) as grpc_t:
            for i in range(args.steps + 2):  # two warm-up steps per path
                for name, tr in (("inprocess", loop), ("grpc", grpc_t)):
                    model.zero_grad(set_to_none=True)
                    t0 = time.perf_counter()
                    split_step(parts, batch, tr, model.loss)
                    if i >= 2:
                        times[name].append(time.perf_counter() - t0)
    finally:
        handle.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"batch": args.batch, "image_size": args.image_size, "tokens": T, "hidden": D, "steps": args.steps,
           "threads": torch.get_num_threads(), "median_s": med, "ratio_grpc_over_inprocess": med["grpc"] / med["inprocess"]}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
