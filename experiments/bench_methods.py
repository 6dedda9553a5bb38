"""Benchmark: every fine-tuning method on the image and the text task, centrally and federated.

For each task (``mnist``: DINOv2-small at 112 px; ``bbc``: MiniLM-L6 on BBC News) and method,
runs ``fedft run --config experiments/configs/methods/<task>_<method>.toml`` in its own process,
centrally as shipped and federated (``fedavg`` of the method's travelling tensors, in-process
engine, ``--clients`` clients, Dirichlet(0.5), ``--rounds`` rounds). Records the trainable
parameters, the bytes that travel per round (federated), accuracy, wall time and the peak RSS of
that process (``os.wait4``), and writes JSON plus a Markdown table.

    .venv/bin/python experiments/bench_methods.py --json experiments/results/methods.json \
        --markdown experiments/results/methods.md
    .venv/bin/python experiments/bench_methods.py --tasks mnist --methods lora,ia3 --modes central
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs" / "methods"
TASKS = {"mnist": "DINOv2-small / MNIST 112 px", "bbc": "MiniLM-L6 / BBC News"}


def methods() -> list[str]:
    from fedft.methods import METHODS

    return METHODS.names()


def run_one(task: str, method: str, mode: str, out: Path, clients: int, rounds: int, threads: int) -> dict:
    cfg = CONFIGS / f"{task}_{method}.toml"
    cmd = [str(ROOT / ".venv" / "bin" / "fedft"), "run", "--config", str(cfg), "--out", str(out),
           "--set", "output.plots=false", "--set", f"train.threads={threads}"]
    if mode == "federated":
        cmd += ["--set", "federation.strategy=fedavg", "--set", "federation.engine=inprocess",
                "--set", f"federation.rounds={rounds}", "--set", f"partition.num_clients={clients}",
                "--set", "partition.scheme=dirichlet", "--set", "partition.alpha=0.5",
                "--set", "partition.min_size=10", "--set", "train.epochs=1"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    rc = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else ""
    row = {"task": task, "method": method, "mode": mode, "rc": rc, "wall_s": round(wall, 1),
           "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "command": " ".join(cmd[1:])}
    if rc != 0:
        row["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
        return row
    s = json.loads((out / "summary.json").read_text())
    row["accuracy"] = s.get("final_accuracy")
    if s.get("method_report"):
        row["method_report"] = s["method_report"]
    if mode == "central":
        row["trainable_params"] = s.get("trainable_params")
    else:
        k = s.get("bytes_by_kind", {})
        row["travelling_params"] = s.get("travelling_params")
        row["bytes_per_round"] = int((k.get("params_up", 0) + k.get("params_down", 0)) / max(rounds, 1))
        row["bytes_up_per_round"] = int(k.get("params_up", 0) / max(rounds, 1))
    return row


def markdown(rows: list[dict]) -> str:
    def mib(b: float | None) -> str:
        return "–" if b is None else f"{b / 2**20:.2f} MiB"

    lines = []
    for task in TASKS:
        sub = [r for r in rows if r["task"] == task]
        if not sub:
            continue
        lines += [f"### {TASKS[task]}", "",
                  "| method | central: trainable params | central acc | central wall (s) | central peak RSS (MiB) "
                  "| fed: params down+up per round | fed: up per round | fed acc | fed wall (s) | fed peak RSS (MiB) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m in sorted({r["method"] for r in sub}):
            c = next((r for r in sub if r["method"] == m and r["mode"] == "central"), {})
            f = next((r for r in sub if r["method"] == m and r["mode"] == "federated"), {})

            def acc(r: dict) -> str:
                if not r:
                    return "–"
                return f"{r['accuracy']:.3f}" if r.get("accuracy") is not None else f"failed: {r.get('error', '')}"

            tp = c.get("trainable_params")
            lines.append(f"| {m} | {'–' if tp is None else f'{tp:,}'} | {acc(c)} | {c.get('wall_s', '–')} | "
                         f"{c.get('peak_rss_mib', '–')} | {mib(f.get('bytes_per_round'))} | "
                         f"{mib(f.get('bytes_up_per_round'))} | {acc(f)} | {f.get('wall_s', '–')} | "
                         f"{f.get('peak_rss_mib', '–')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tasks", default="mnist,bbc", help="comma-separated: mnist, bbc")
    ap.add_argument("--methods", default="", help="comma-separated (default: every registered method)")
    ap.add_argument("--modes", default="central,federated", help="central, federated or both")
    ap.add_argument("--clients", type=int, default=10, help="federated clients (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_methods", help="run directories")
    ap.add_argument("--json", type=Path, help="results JSON (rows are merged into an existing file)")
    ap.add_argument("--markdown", type=Path, help="write the tables here")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        ap.error(f"unknown task(s) {bad}; choose from {', '.join(TASKS)}")
    names = [m for m in args.methods.split(",") if m] or methods()
    modes = [m for m in args.modes.split(",") if m]
    rows: list[dict] = []
    if args.json and args.json.is_file():
        rows = json.loads(args.json.read_text())["rows"]
    from tqdm import tqdm

    jobs = [(t, m, mode) for t in tasks for m in names for mode in modes]
    for t, m, mode in tqdm(jobs, desc="methods", unit="run"):
        row = run_one(t, m, mode, args.out / f"{t}_{m}_{mode}", args.clients, args.rounds, args.threads)
        rows = [r for r in rows if (r["task"], r["method"], r["mode"]) != (t, m, mode)] + [row]
        tqdm.write(f"{t:5s} {m:14s} {mode:9s} rc={row['rc']} acc={row.get('accuracy')} wall={row['wall_s']}s "
                   f"rss={row['peak_rss_mib']}MiB {row.get('error', '')}")
        if args.json:  # after every run, so an interrupted benchmark keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"clients": args.clients, "rounds": args.rounds,
                                             "command": "python " + " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
