"""The main job in fp32 and in bf16 (``train.precision``) over several seeds: wall time and accuracy.

Runs ``fedft run`` (the embedded main job) once per seed and arm, interleaved seed by seed so
both arms see the same machine, into ``--root/<arm>-s<seed>``. Resumable: a finished run (its
summary.json exists) is kept, a killed one continues from its checkpoint (``--resume``). Then
it writes, per run and per arm, the final accuracy, the wall time and the median seconds per
round, with means and 95 % t-intervals over seeds, and copies each run's small artifacts
(config, summary, metrics, ledger) under ``--results``.

    .venv/bin/python experiments/precision_main_job.py --seeds 0 1 2
    .venv/bin/python experiments/precision_main_job.py --report-only   # tables from finished runs
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from scipy import stats

ARMS = {"fp32": "fp32", "bf16": "auto"}  # arm -> train.precision (auto resolves to bf16 where native)
ARTIFACTS = ("config.toml", "summary.json", "metrics.csv", "ledger.csv")


def run_one(root: Path, arm: str, seed: int, extra: list[str]) -> None:
    out = root / f"{arm}-s{seed}"
    if (out / "summary.json").is_file():
        print(f"{out}: done, kept")
        return
    cmd = [sys.executable, "-m", "fedft.cli", "run"]
    if (out / "checkpoint").exists():
        cmd += ["--resume", str(out)]
    else:
        cmd += ["--out", str(out), "--set", f"seed={seed}", "--set", f"train.precision={ARMS[arm]}",
                *[a for kv in extra for a in ("--set", kv)]]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def round_seconds(metrics: Path) -> list[float]:
    """Seconds of each round from the cumulative ``seconds`` column of metrics.csv."""
    with metrics.open() as f:
        cum = [float(r["seconds"]) for r in csv.DictReader(f)]
    return [b - a for a, b in zip([0.0, *cum[:-1]], cum, strict=True)]


def interval(xs: list[float]) -> dict[str, float]:
    """Mean and the half-width of its 95 % t-interval."""
    mean = statistics.fmean(xs)
    half = float(stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5) if len(xs) > 1 else float("nan")
    return {"mean": mean, "ci95": half, "n": len(xs)}


def collect(root: Path, results: Path, seeds: list[int]) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        for arm in ARMS:
            run = root / f"{arm}-s{seed}"
            if not (run / "summary.json").is_file():
                continue
            summary = json.loads((run / "summary.json").read_text())
            secs = round_seconds(run / "metrics.csv")
            rows.append({"arm": arm, "seed": seed, "precision_used": summary["precision"]["used"],
                         "attention": summary["precision"]["attention"],
                         "final_accuracy": summary["final_accuracy"], "wall_seconds": summary["wall_seconds"],
                         "median_round_seconds": round(statistics.median(secs), 2),
                         "bytes_total": summary["bytes_total"]})
            dest = results / "runs" / run.name
            dest.mkdir(parents=True, exist_ok=True)
            for name in ARTIFACTS:
                if (run / name).is_file():
                    shutil.copy2(run / name, dest / name)
    arms = {}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if mine:
            arms[arm] = {k: interval([r[k] for r in mine])
                         for k in ("final_accuracy", "wall_seconds", "median_round_seconds")}
    out: dict[str, Any] = {"runs": rows, "arms": arms}
    paired = [(a, b) for a in rows for b in rows
              if a["arm"] == "fp32" and b["arm"] == "bf16" and a["seed"] == b["seed"]]
    if paired:
        out["speedup_wall"] = interval([a["wall_seconds"] / b["wall_seconds"] for a, b in paired])
        out["accuracy_difference_bf16_minus_fp32"] = interval(
            [b["final_accuracy"] - a["final_accuracy"] for a, b in paired])
    return out


def table(out: dict[str, Any]) -> str:
    lines = ["| arm | seed | precision used | attention | final accuracy | wall s | median s/round | bytes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["runs"]:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['precision_used']} | {r['attention']} | "
                     f"{r['final_accuracy']:.3f} | {r['wall_seconds']:.0f} | {r['median_round_seconds']:.1f} | "
                     f"{r['bytes_total']:,} |")
    for arm, a in out["arms"].items():
        acc, wall, rnd = a["final_accuracy"], a["wall_seconds"], a["median_round_seconds"]
        lines.append(f"| **{arm}** mean ± 95 % CI (n={acc['n']}) | | | | {acc['mean']:.3f} ± {acc['ci95']:.3f} | "
                     f"{wall['mean']:.0f} ± {wall['ci95']:.0f} | {rnd['mean']:.1f} ± {rnd['ci95']:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default="runs/precision", help="run directories")
    ap.add_argument("--results", default="experiments/results/precision", help="artifacts and tables")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every run (e.g. federation.rounds=2 for a quick check)")
    ap.add_argument("--report-only", action="store_true", help="only collect finished runs")
    args = ap.parse_args()
    root, results = Path(args.root), Path(args.results)
    if not args.report_only:
        for seed in args.seeds:
            for arm in ARMS:
                run_one(root, arm, seed, args.set)
    out = collect(root, results, args.seeds)
    results.mkdir(parents=True, exist_ok=True)
    (results / "main_job.json").write_text(json.dumps(out, indent=2) + "\n")
    (results / "main_job.md").write_text(table(out) + "\n")
    print(table(out))
    for key in ("speedup_wall", "accuracy_difference_bf16_minus_fp32"):
        if key in out:
            print(f"{key}: {out[key]['mean']:.3f} ± {out[key]['ci95']:.3f} (n={out[key]['n']})")


if __name__ == "__main__":
    main()
