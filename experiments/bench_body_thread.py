"""Where the in-process engine's extra time goes (sfprompt.md §11): the frozen body's forward and
input-gradient backward on one batch of the main job, run on the main thread and on a second
Python thread, as the gRPC body service runs it.

Both engines serve the body from a gRPC server thread; the plain loop of ``bench_overhead.py``
calls it on the main thread. This times the same step, on the same tensors, both ways (median of
``--repeats`` timed blocks of ``--steps`` steps each, after a warm-up) and writes ``--out``.

    .venv/bin/python experiments/bench_body_thread.py     # about 1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _plain_loop(cfg):
    spec = importlib.util.spec_from_file_location("bench_overhead", ROOT / "experiments/bench_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_overhead"] = mod
    spec.loader.exec_module(mod)
    return mod.PlainLoop(cfg)


def main() -> None:
    from fedft.cli import default_config
    from fedft.precision import describe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5, help="timed blocks per thread")
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/sfprompt/body_thread.json")
    a = p.parse_args()
    cfg = default_config(["output.plots=false", "data.test_size=100"])
    loop = _plain_loop(cfg)
    parts = loop.parts
    batch = next(loop.train.batches(np.arange(cfg.train.batch_size), cfg.train.batch_size))
    h, mask = parts.head(batch)
    h = h.detach()

    def block() -> float:
        t0 = time.perf_counter()
        for _ in range(a.steps):
            x = h.clone().requires_grad_(True)
            z = parts.body(x, mask)
            z.backward(torch.ones_like(z))
        return (time.perf_counter() - t0) / a.steps

    def timed() -> float:
        block()  # warm-up
        return statistics.median(block() for _ in range(a.repeats))

    res = {"batch_size": cfg.train.batch_size, "threads": torch.get_num_threads(),
           "precision": describe(cfg.train.precision), "main_thread_s": timed()}
    out: dict[str, float] = {}
    th = threading.Thread(target=lambda: out.update(s=timed()))
    th.start()
    th.join()
    res["second_thread_s"] = out["s"]
    res["second_over_main"] = res["second_thread_s"] / res["main_thread_s"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
