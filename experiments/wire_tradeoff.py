"""SFPrompt's split traffic in compressed wire formats: accuracy against bytes (issue 19).

Every arm runs SFPrompt with one wire format for the activations and the gradients
(``split.wire_dtype``; ``split.grad_wire_dtype`` left empty, so the same): fp32, fp16, bf16,
int8 (per-row absmax), int4 (groups of 32), topk (10 % of each row, error feedback on the
gradients) and topk_noef (the same without error feedback), over seeds 0, 1, 2 (a seed fixes
the data subsample, partition, initial prompts and client order, so arms pair by seed).

``--task vision`` (default): the main job at the comparison size of strategy_compare.py
(800 training images, 500 validation images every round, 2,000 test images once, 5 rounds),
so its bytes compare with FL-Full's in ``results/sfprompt/compare/compare.csv``.
``--task text``: SFPrompt on split SmolLM2-135M (experiments/configs/sfprompt_smollm2.toml) for
one round on 160 training texts over 4 clients, without its generative evaluation (``TEXT_SIZE``).

Each cell is one ``fedft run`` in its own process with one torch thread, resumable (a cell with
a summary.json under ``--results`` is skipped; a killed run continues from its checkpoint);
``--jobs 2`` runs two at once; ``--prefix`` runs each cell under a command (e.g. ``nice``).

    .venv/bin/python experiments/wire_tradeoff.py --jobs 2              # run (resumable) + report
    .venv/bin/python experiments/wire_tradeoff.py --task text --arms fp32,int8,int4,topk
    .venv/bin/python experiments/wire_tradeoff.py --report-only         # report from artifacts

Writes per cell ``--results/<task>/<arm>_s<seed>/`` (config.toml, summary.json, metrics.csv,
ledger_by_round.csv, cell.json with the wall time and command; ledger.csv when under 1 MB),
then ``--results/<task>/cells.csv``, ``--results/accuracy_vs_bytes.png`` and the report
(experiments/reports/wire.md, built by wire_report.py).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from study_cells import run_cells, study_parser, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments/results/wire"
REPORT = ROOT / "experiments/reports/wire.md"
# arm -> overrides; the gradients use wire_dtype's format (grad_wire_dtype "")
ARMS: dict[str, list[str]] = {
    "fp32": ["split.wire_dtype=fp32"],
    "fp16": ["split.wire_dtype=fp16"],
    "bf16": ["split.wire_dtype=bf16"],
    "int8": ["split.wire_dtype=int8"],
    "int4": ["split.wire_dtype=int4"],  # [D] group of 32
    "topk": ["split.wire_dtype=topk"],  # [D] 10 % of each row, error feedback on gradient frames
    "topk_noef": ["split.wire_dtype=topk", "split.error_feedback=false"],
}
# [D] strategy_compare.py's SIZE: the size at which FL-Full's bytes were measured
VISION_SIZE = ["data.train_size=800", "data.val_size=500", "data.test_size=2000", "federation.rounds=5",
               "federation.eval_every=1"]
# [D] one round on half the config's data and clients (160 training texts, 4 clients), no generative
# evaluation (its trivia exact match was 0.000 in llm.md, and it runs after every round): what fits
# a 2-core machine after the vision study
TEXT_SIZE = ["federation.rounds=1", "generate.data=", "data.train_size=160", "partition.num_clients=4"]
# task -> (config file or None for the embedded main job, overrides, default arms)
TASKS: dict[str, tuple[str | None, list[str], list[str]]] = {
    "vision": (None, VISION_SIZE, list(ARMS)),
    "text": ("experiments/configs/sfprompt_smollm2.toml", TEXT_SIZE, ["fp32", "int8", "int4", "topk"]),
}
ARTIFACTS = ("config.toml", "metrics.csv")
LEDGER_LIMIT = 1_000_000  # [D] ledger.csv is kept only under 1 MB (ledger_by_round.csv always)
SEEDS = [0, 1, 2]


def cell_dir(results: Path, task: str, arm: str, seed: int) -> Path:
    return results / task / f"{arm}_s{seed}"


def fedft_command(task: str, arm: str, seed: int, run: Path) -> list[str]:
    """The ``fedft run`` of one cell (``--resume`` when a killed run left its checkpoint)."""
    base = [sys.executable, "-m", "fedft.cli", "run"]
    if (run / "checkpoint").exists():
        return [*base, "--resume", str(run)]
    config, size, _ = TASKS[task]
    cmd = [*base, "--out", str(run)] + (["--config", config] if config else [])
    for kv in [*size, *ARMS[arm], f"seed={seed}", "train.threads=1"]:
        cmd += ["--set", kv]
    return cmd


def ledger_by_round(ledger: Path) -> list[dict[str, Any]]:
    """The ledger summed by (round, kind, direction): bytes and message count."""
    total: dict[tuple[int, str, str], list[int]] = {}
    with open(ledger, newline="") as f:
        for e in csv.DictReader(f):
            t = total.setdefault((int(e["round"]), e["kind"], e["direction"]), [0, 0])
            t[0] += int(e["nbytes"])
            t[1] += 1
    return [{"round": r, "kind": k, "direction": d, "nbytes": v[0], "messages": v[1]}
            for (r, k, d), v in sorted(total.items())]


def save_cell(run: Path, dest: Path, meta: dict[str, Any]) -> None:
    """Copy a finished run's small artifacts to ``dest``; summary.json last, atomically (its
    presence marks the cell done)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACTS:
        shutil.copy2(run / name, dest / name)
    ledger = run / "ledger.csv"
    if ledger.is_file():
        rows = ledger_by_round(ledger)
        with open(dest / "ledger_by_round.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["round", "kind", "direction", "nbytes", "messages"])
            w.writeheader()
            w.writerows(rows)
        if ledger.stat().st_size < LEDGER_LIMIT:
            shutil.copy2(ledger, dest / "ledger.csv")
    write_json(dest / "cell.json", meta)
    write_json(dest / "summary.json", json.loads((run / "summary.json").read_text()))


def run_cell(task: str, arm: str, seed: int, runs: Path, results: Path) -> int:
    """One cell: ``fedft run`` with one thread, timed, then its artifacts saved; the exit status."""
    run = runs / task / f"{arm}_s{seed}"
    if run.exists() and not (run / "checkpoint").exists():
        shutil.rmtree(run)  # a run killed before its first checkpoint starts over
    cmd = fedft_command(task, arm, seed, run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    env.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr_wire_"))
    print(shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    wall = time.perf_counter() - t0
    if rc == 0:
        shown = [c if c != sys.executable else ".venv/bin/python" for c in cmd]
        save_cell(run, cell_dir(results, task, arm, seed),
                  {"task": task, "arm": arm, "seed": seed, "cell_wall_seconds": round(wall, 1),
                   "threads": 1, "command": shlex.join(shown).replace(str(ROOT) + "/", "")})
    return rc


def run_study(a: Any) -> list[str]:
    """Every (arm, seed) cell without a summary.json, ``a.jobs`` at a time, seed-major order (a
    partial study has whole seeds); the labels that failed."""
    arms, seeds = a.arms.split(","), [int(s) for s in a.seeds.split(",")]
    todo = [(arm, s) for s in seeds for arm in arms
            if a.force or not (cell_dir(a.results, a.task, arm, s) / "summary.json").is_file()]
    me = [sys.executable, str(Path(__file__).resolve())]
    flags = ["--task", a.task, "--runs", str(a.runs), "--results", str(a.results)]
    commands = [(f"{arm} s{s}", [*shlex.split(a.prefix), *me, "--cell", arm, str(s), *flags]) for arm, s in todo]
    outputs = None if a.force else [cell_dir(a.results, a.task, arm, s) / "summary.json" for arm, s in todo]
    return run_cells(commands, a.jobs, outputs)


def parser() -> Any:
    p = study_parser(__doc__, ("ARM", "SEED"), "run one cell in this process (what --jobs spawns)",
                     SEEDS, "comma-separated seeds (default 0,1,2)",
                     ("--arms", [], f"comma-separated arms (default: the task's; any of {', '.join(ARMS)})"))
    p.add_argument("--task", choices=list(TASKS), default="vision", help="vision (default) or text")
    p.add_argument("--runs", type=Path, default=ROOT / "runs/wire", help="run directories (default runs/wire)")
    p.add_argument("--results", type=Path, default=RESULTS, help="artifacts (default experiments/results/wire)")
    p.add_argument("--report", type=Path, default=REPORT, help="report (default experiments/reports/wire.md)")
    p.add_argument("--prefix", default="", help="a command each cell runs under, e.g. 'nice -n 5' (default none)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.cell:
        arm, seed = a.cell
        if arm not in ARMS or not seed.isdigit():
            print(f"--cell wants an arm ({', '.join(ARMS)}) and an integer seed, got {arm} {seed}", file=sys.stderr)
            return 2
        return run_cell(a.task, arm, int(seed), a.runs, a.results)
    a.arms = a.arms or ",".join(TASKS[a.task][2])
    bad = [x for x in a.arms.split(",") if x not in ARMS] + [s for s in a.seeds.split(",") if not s.isdigit()]
    if bad:
        print(f"unknown arm or seed {', '.join(bad)}; arms: {', '.join(ARMS)}; seeds: integers", file=sys.stderr)
        return 2
    failed = [] if a.report_only else run_study(a)
    from wire_report import write_report

    write_report(a.results, a.report)
    if failed:
        print(f"failed cells: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
