"""Time and bytes to reach an accuracy on resource-limited devices (issue 18, item 6).

SFPrompt, FL-Full, SFL-V1, SFL-V2 and SL are trained once per seed (``fedft compare`` with
``resources.devices`` set, so every run records its clients' plans in ``sim_plans.jsonl``), then
every run is re-timed on every device/network mix of ``MIXES`` (:mod:`fedft.resources.retime`, the
same code as ``fedft compare --mix``): what a client computes and sends does not depend on its
device's speed when there is no deadline, availability trace or over-selection, so one training run
serves every mix. The setting is the main job's (fedft/configs/sfprompt_mnist.toml: DINOv2-small,
MNIST at 112 px, Dirichlet(0.5) label skew, batch 8) scaled down to fit about 40 minutes of one core
(``SIZE``); the baselines use the optimiser FL-Full was tuned to on validation in
experiments/reports/sfprompt.md §3 (``TUNED``).

    .venv/bin/python experiments/resources_compare.py --seeds 0,1,2   # train (resumable), re-time
    .venv/bin/python experiments/resources_compare.py --retime-only   # re-time the trained runs
    .venv/bin/python experiments/resources_compare_report.py          # the report, from the artifacts
    .venv/bin/python experiments/resources_compare.py --tiny --results /tmp/rc --runs /tmp/rc_runs

Cells: ``train SEED LABEL`` (one entry of the compare, its own process; done when its artifacts
are copied) and ``fit`` (the client part's memory per entry, fedft.resources.memory). Then, in this
process and always again (seconds): the targets of ``TARGET_RULES`` over all seeds, per seed
``time_to_accuracy_<target>.csv`` (fedft.resources.report.time_to_accuracy on the copied
artifacts) and ``curves.csv`` (each run re-simulated per mix, round by round, with the critical
path split into compute / transfer / RTT / server / queue, with the default server and with one
that computes one request at a time), and ``summary.csv`` over seeds.

Writes --results (default experiments/results/resources/compare): ``<seed>/<label>/`` with
config.toml, summary.json, metrics.csv, partitions.json, sim_clients.csv and sim_plans.jsonl (all
a few kB), ``<seed>/time_to_accuracy_*.csv``, ``<seed>/curves.csv``, ``fit.json``,
``study.json``, ``summary.csv``. Full run directories go to --runs (default
runs/resources_compare).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resources_compare_report import TARGET_RULES, summarise  # noqa: E402
from study_cells import ROOT, run_cells, write_json  # noqa: E402

RESULTS = ROOT / "experiments/results/resources/compare"
RUNS = ROOT / "runs/resources_compare"
# [D] the main job scaled to ~40 min of one core for 5 strategies x 3 seeds: 5 clients (main job:
# 10) sharing 250 training images (2,000), 150 validation images (1,000) evaluated every round
# (every 2nd), 100 test images (the whole 10,000, evaluated once; unused here), 5 rounds (10).
# Kept: DINOv2-small, 112 px, batch 8, Dirichlet(0.5), the per-sample FLOPs and per-batch bytes.
SIZE = ["data.train_size=250", "data.val_size=150", "data.test_size=100", "partition.num_clients=5",
        "federation.rounds=5", "federation.eval_every=1", "federation.engine=inprocess", "train.threads=1",
        "output.plots=false"]
# [D] the plans are recorded under this mix (any would do: nothing here shapes training); the
# re-timing on it reproduces the runs' own sim_cumulative, a check of the re-timing
TRAIN_MIX = ["resources.devices=laptop", "resources.networks=ethernet-dc"]
# the optimiser FL-Full was tuned to on validation (experiments/reports/sfprompt.md §3, selected
# again for SFL-V1, SFL-V2 and SL in §8): AdamW, backbone lr 2e-5, plain classifier at 1e-3
TUNED = ["train.optimizer=adamw", "train.lr=0.00002", "train.head_lr=0.001", "train.head_preconditioner=none",
         "train.prompt_optimizer=same"]
# label -> (strategy, its own overrides); SFPrompt runs the main job's settings
ENTRIES: dict[str, tuple[str, list[str]]] = {
    "sfprompt": ("sfprompt", []),
    "fl_full": ("fl_full", TUNED),
    "sfl_v1": ("sfl_v1", TUNED),
    "sfl_v2": ("sfl_v2", TUNED),
    "sl": ("sl", TUNED),
}
# label -> (devices, networks) in resources.* form (fedft profiles); re-timing is free
MIXES: dict[str, tuple[str, str]] = {
    "phones-4g": ("phone-mid=0.5,phone-low=0.5", "4g"),
    "phones-3g": ("phone-mid=0.5,phone-low=0.5", "3g"),
    "phones-4g-trace": ("phone-mid=0.5,phone-low=0.5", "4g-trace"),
    "rpi4-wifi": ("rpi4", "wifi-home"),
    "laptop-wifi": ("laptop", "wifi-home"),
    "laptop-ethernet": ("laptop", "ethernet-dc"),
}
# resources.server_parallel values re-simulated: 0 (the default: the server computes every request
# at once when clients do not share a body) and 1 (one request at a time, whatever the strategy) [D]
SERVER_PARALLEL = (0, 1)
TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
        "data.val_size=32", "data.test_size=16", "partition.scheme=iid", "partition.num_clients=3",
        "partition.min_size=4", "federation.rounds=3", "federation.eval_every=1", "federation.engine=inprocess",
        "train.threads=1", "output.plots=false"]
ARTIFACTS = ("config.toml", "summary.json", "metrics.csv", "partitions.json", "sim_clients.csv", "sim_plans.jsonl")
BIG = 2_000_000  # [D] bytes: an artifact larger than this is reported, not copied


def sets(seed: int, tiny: bool) -> list[str]:
    return [*(TINY if tiny else SIZE), *TRAIN_MIX, f"seed={seed}"]


def compare_argv(seed: int, labels: list[str], out: Path, tiny: bool, mixes: bool = False,
                 target: float | None = None) -> list[str]:
    """The ``fedft compare`` arguments of ``labels`` at ``seed`` (with ``mixes``: and the re-timing)."""
    argv = ["compare", "--out", str(out), "--strategies", ",".join(f"{lab}={ENTRIES[lab][0]}" for lab in labels)]
    argv += [a for kv in sets(seed, tiny) for a in ("--set", kv)]
    argv += [a for lab in labels for kv in ENTRIES[lab][1] for a in ("--set-for", f"{lab}:{kv}")]
    if mixes:
        argv += [a for lab, (d, n) in MIXES.items() for a in ("--mix", f"{lab}={d}@{n}")]
    if target is not None:
        argv += ["--target", f"{target:.6f}"]
    return argv


# ---- cells -----------------------------------------------------------------------------------------


def train_cell(seed: int, label: str, runs: Path, results: Path, tiny: bool) -> None:
    """Train one entry at one seed (``fedft compare`` resumes a finished one) and copy its artifacts."""
    from fedft.cli import main as fedft

    rc = fedft(compare_argv(seed, [label], runs / str(seed), tiny))
    if rc:
        sys.exit(rc)
    src, dest = runs / str(seed) / label, results / str(seed) / label
    dest.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACTS:
        size = (src / name).stat().st_size
        if size > BIG:
            print(f"not copied: {src / name} is {size:,} bytes", file=sys.stderr)
            continue
        shutil.copy2(src / name, dest / name)


def fit_cell(results: Path, tiny: bool) -> None:
    """Each entry's client part in memory (fp32: the catalogue's devices compute fp32) against every
    device of ``MIXES``: fit.json."""
    from fedft.compare import entry_config
    from fedft.config import ExperimentConfig, main_job_path
    from fedft.data.datasets import load_raw
    from fedft.model import build_model
    from fedft.resources.memory import measure_cut, training_batch
    from fedft.resources.profiles import load_catalog
    from fedft.strategies import STRATEGIES

    base = ExperimentConfig.from_toml(main_job_path(), [*sets(0, tiny), "train.precision=fp32"])
    catalog = load_catalog("")
    names = sorted({n.split("=")[0] for d, _ in MIXES.values() for n in d.split(",")})
    raw = load_raw(base.data, base.seed)
    rows, models = [], {}
    for label, (strategy, over) in ENTRIES.items():
        cfg = entry_config(base, label, strategy, over, None)
        if cfg.method.name not in models:
            model, _, pre = build_model(cfg, raw.num_labels)
            models[cfg.method.name] = (model, training_batch(cfg, raw, pre))
        model, batch = models[cfg.method.name]
        split = STRATEGIES.get(strategy).family == "split"
        r = measure_cut(cfg, model, batch, (cfg.split.head_blocks, cfg.split.tail_blocks) if split else None)
        rows.append({"entry": label, **r.as_dict(), "batch": cfg.train.batch_size,
                     "fits": {n: r.total <= catalog.profile("device", n).memory_bytes for n in names},
                     "memory_bytes": {n: catalog.profile("device", n).memory_bytes for n in names}})
    write_json(results / "fit.json", rows)


# ---- re-timing ---------------------------------------------------------------------------------------


def targets(results: Path, seeds: list[int]) -> dict[str, float]:
    """The targets of ``TARGET_RULES`` from the copied metrics of every seed."""
    best: dict[str, list[float]] = {lab: [] for lab in ENTRIES}
    for seed in seeds:
        for lab in ENTRIES:
            with open(results / str(seed) / lab / "metrics.csv", newline="") as f:
                best[lab].append(max(float(r["val_accuracy"]) for r in csv.DictReader(f) if r["val_accuracy"]))
    out = {}
    for name, (labs, _) in TARGET_RULES.items():
        out[name] = 0.95 * min(v for lab in (list(ENTRIES) if labs == "all" else labs) for v in best[lab])
    return out


def _dotted(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d if d != {} else "-"


def study(goal: dict[str, float], seeds: list[int], tiny: bool) -> dict[str, Any]:
    """study.json: what the report needs to say how the artifacts were made."""
    from fedft.config import ExperimentConfig, main_job_path

    job = ExperimentConfig.from_toml(main_job_path()).to_dict()
    mine = dict(kv.split("=", 1) for kv in (TINY if tiny else SIZE))
    keys = ["model.name", "data.name", "data.image_size", "data.train_size", "data.val_size", "data.test_size",
            "partition.scheme", "partition.num_clients", "federation.rounds", "federation.eval_every",
            "federation.engine", "train.batch_size", "train.threads", "train.precision"]
    size = {k: [mine.get(k, "same"), _dotted(job, k)] for k in keys}
    size.update({k: [v, _dotted(job, k)] for k, v in mine.items() if k not in size})
    return {"targets": goal, "rules": {k: v[1] for k, v in TARGET_RULES.items()}, "seeds": seeds, "tiny": tiny,
            "entries": ENTRIES, "mixes": MIXES, "train_mix": TRAIN_MIX, "size_vs_main": size,
            "commands": [f".venv/bin/python experiments/resources_compare.py --seeds "
                         f"{','.join(map(str, seeds))}{' --tiny' if tiny else ''}",
                         ".venv/bin/python experiments/resources_compare_report.py"],
            "compare_command": ".venv/bin/fedft " + subprocess.list2cmdline(
                compare_argv(seeds[0], list(ENTRIES), RUNS.relative_to(ROOT) / str(seeds[0]), tiny, mixes=True,
                             target=goal["low"]))}


def resimulate(run: Path, devices: str, networks: str, server_parallel: int = 0) -> list[dict[str, Any]]:
    """Round by round, ``run`` re-simulated on this mix, with the round's critical path split by
    where its seconds went (fedft.resources.retime: in each group the client that finished last).
    ``server_parallel``: resources.server_parallel for the re-simulation (0 = unbounded)."""
    from fedft.resources.retime import retime

    return retime(run, devices, networks, server_parallel=server_parallel)


def retime_all(results: Path, seeds: list[int], tiny: bool) -> None:
    """study.json (targets, settings, commands), per seed time_to_accuracy_<target>.csv and curves.csv, and summary.csv."""
    from fedft.resources.report import TTA, time_to_accuracy

    goal = targets(results, seeds)
    write_json(results / "study.json", study(goal, seeds, tiny))
    labels = list(ENTRIES)
    for seed in seeds:
        d = results / str(seed)
        for name, value in goal.items():
            time_to_accuracy(d, labels, MIXES, value, show=False)
            (d / TTA).replace(d / f"time_to_accuracy_{name}.csv")
        for png in d.glob("accuracy_vs_time_*.png"):
            png.unlink()  # the report draws all seeds in one figure from curves.csv
        rows = [{"seed": seed, "mix": mix, "entry": lab, "server_parallel": k, **r} for k in SERVER_PARALLEL
                for mix, (dev, net) in MIXES.items() for lab in labels for r in resimulate(d / lab, dev, net, k)]
        with open(d / "curves.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    summary = summarise(results)
    with open(results / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    print(f"wrote {results / 'summary.csv'} ({len(summary)} rows); targets {goal}")


# ---- driver -------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Then: .venv/bin/python experiments/resources_compare_report.py")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2) [D]")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"artifacts (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--runs", type=Path, default=RUNS, help=f"full run directories (default {RUNS.relative_to(ROOT)})")
    p.add_argument("--tiny", action="store_true", help="tiny-vit on synthetic images: a smoke test of the pipeline")
    p.add_argument("--retime-only", action="store_true", help="skip training; re-time the copied artifacts")
    p.add_argument("--force", action="store_true", help="run the cells again even when their artifacts exist (fedft compare still skips an entry whose run directory holds a finished run of the same config: delete --runs to retrain)")
    p.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)  # internal: train SEED LABEL | fit
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.cell:
        if a.cell[0] == "fit":
            fit_cell(a.results, a.tiny)
        else:
            train_cell(int(a.cell[1]), a.cell[2], a.runs, a.results, a.tiny)
        return 0
    failed: list[str] = []
    if not a.retime_only:
        common = ["--results", str(a.results), "--runs", str(a.runs), *(["--tiny"] if a.tiny else [])]
        cells = [(["train", str(s), lab], a.results / str(s) / lab / "summary.json") for s in seeds for lab in ENTRIES]
        cells.append((["fit"], a.results / "fit.json"))
        todo = [(c, out) for c, out in cells if a.force or not out.is_file()]
        for c, _ in todo:
            if c[0] == "train":
                print("cell:", "fedft", subprocess.list2cmdline(compare_argv(int(c[1]), [c[2]], a.runs / c[1], a.tiny)),
                      flush=True)
        failed = run_cells([(" ".join(c), [sys.executable, __file__, "--cell", *c, *common]) for c, _ in todo], 1,
                           None if a.force else [out for _, out in todo])
    if failed:
        print(f"failed cells: {', '.join(failed)}", file=sys.stderr)
        return 1
    retime_all(a.results, seeds, a.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
