"""Two checks behind fedft's device/network profiles (issue 18, docs/resources.md "Profiles").

1. Cost of the vectorised assignment and availability at 100,000 clients: ``assign`` of a device
   and a network mixture, ``Availability.online`` and ``online_until`` for 100 sampled clients
   (best of several repeats, seconds).
2. An anchor for the "fraction of peak" the catalogue assumes: fedft's counted FLOPs
   (``fedft.flops.counter``: matmuls and attention, 2 per multiply-add) of one fp32 training step
   (forward, backward, SGD with momentum) of a ViT-S-shaped encoder (dim 384, 6 heads, MLP 1536,
   197 tokens, batch 8, ``--layers`` blocks) divided by its wall time on ``--threads`` threads of
   this machine's CPU.

    .venv/bin/python experiments/bench_profiles.py \\
        --out experiments/results/resources/profiles/bench_profiles.json   # ~30 s on one core
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedft.flops import counter
from fedft.resources.availability import Availability
from fedft.resources.profiles import assign, builtin_catalog


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def scale_checks(n: int) -> dict[str, float]:
    cat = builtin_catalog()
    av = Availability.from_spec("cyclic:600,1800", n, 0)
    pids = np.arange(0, n, max(n // 100, 1))
    return {
        "assign_device_mixture_s": best_of(lambda: assign("phone-low=0.3,phone-mid=0.5,phone-high=0.2", "device",
                                                          n, 0, cat), 5),
        "assign_network_mixture_s": best_of(lambda: assign("4g=0.7,wifi-home=0.3", "network", n, 0, cat), 5),
        "availability_online_s": best_of(lambda: av.online(1234.5), 20),
        "availability_online_until_100_s": best_of(lambda: av.online_until(pids, 1234.5), 20),
    }


def training_rate(layers: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    block = [torch.nn.TransformerEncoderLayer(384, 6, 1536, dropout=0.0, batch_first=True, norm_first=True)
             for _ in range(layers)]
    model = torch.nn.Sequential(*block)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(8, 197, 384)

    def step() -> None:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()

    with counter() as c:
        step()
    flops = c.get_total_flops()
    seconds = best_of(step, repeats)
    return {"train_step_counted_flops": float(flops), "train_step_s": seconds,
            "train_gflops_per_s": flops / seconds / 1e9}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--clients", type=int, default=100_000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"clients": args.clients, **scale_checks(args.clients), "threads": args.threads,
              "layers": args.layers, **training_rate(args.layers, args.repeats), "cpu": cpu_name(),
              "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
