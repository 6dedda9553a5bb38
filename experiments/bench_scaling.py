"""Benchmark: time per round and peak memory of the simulation with N clients (default 10 and 100).

Runs the main job's config through ``fedft run`` (Flower simulation engine) with
``partition.num_clients=N`` for a few rounds, samples the machine's used memory
(MemTotal - MemAvailable) every 0.25 s, and reads the per-round times from metrics.csv.

    .venv/bin/python experiments/bench_scaling.py --clients 10 100 --rounds 2 --json experiments/results/scaling.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def used_bytes() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def run_one(config: str, n: int, rounds: int, out: Path, extra: list[str]) -> dict:
    base = used_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            peak[0] = max(peak[0], used_bytes())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    cmd = [sys.executable, "-m", "fedft.cli", "run", "--config", config, "--out", str(out),
           "--set", f"partition.num_clients={n}", "--set", f"federation.rounds={rounds}",
           "--set", "partition.min_size=1", "--set", "output.plots=false"]
    for e in extra:
        cmd += ["--set", e]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"run with {n} clients failed:\n{proc.stderr[-3000:]}")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    secs = [float(r["seconds"]) for r in rows]
    per_round = [secs[0]] + [b - a for a, b in zip(secs, secs[1:], strict=False)]
    summary = json.loads((out / "summary.json").read_text())
    return {"clients": n, "rounds": rounds, "seconds_per_round": per_round, "wall_seconds_total": round(wall, 1),
            "peak_extra_memory_gib": round((peak[0] - base) / 2**30, 2), "final_accuracy": summary["final_accuracy"],
            "bytes_total": summary["bytes_total"], "command": " ".join(cmd[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/configs/sfprompt_mnist.toml")
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="runs/bench_scaling")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    results = [run_one(args.config, n, args.rounds, Path(args.out) / f"clients_{n}", args.set) for n in args.clients]
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
