"""Every strategy on the real task in one ``fedft compare``, tuned on validation (issue 14).

One ``fedft compare`` runs SFPrompt (the main job's settings), the paper's SFPrompt
(``experiments/configs/sfprompt_paper.toml``, a small learning-rate sweep), SFPrompt's three
ablations, SFL, SFL-V1, SFL-V2, SL, FL-Full, FL-Linear and FL-Prompt on identical data,
partitions, seeds and rounds, at one size that fits a 2-core machine (``SIZE``). The strategies
that train the body get the optimiser that the FL-Full baseline of sfprompt.md §3 was tuned to
(AdamW, plain head); SFL-V1 and FL-Full at two backbone learning rates. Every candidate is an
entry of the same compare; the report keeps, per strategy, the candidate with the best final
validation accuracy and reports its test accuracy once. Two more groups run as their own
compare at the same size: ``variants`` (fedft's additions taken out of the main job one at a
time, and what the paper varies) and ``diagnostics`` (single changes to the paper's
configuration, to find why it fails; not selection candidates).

    .venv/bin/python experiments/strategy_compare.py                # run (resumable) + report
    .venv/bin/python experiments/strategy_compare.py --group variants     # sfprompt.md §9-10
    .venv/bin/python experiments/strategy_compare.py --group diagnostics  # sfprompt.md §9
    .venv/bin/python experiments/strategy_compare.py --seed 1             # §10, then --seed 2
    .venv/bin/python experiments/strategy_compare.py --report-only  # tables, plots, artifacts

Writes ``--results``/compare.csv (every entry), selected.csv (one row per strategy), tables.md,
accuracy_vs_bytes.png, accuracy_vs_client_flops.png, val_curves.png, and per entry
``runs/<label>/`` with config.toml, summary.json, metrics.csv and ledger_by_round.csv (the
ledger summed by round x kind x direction).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAPER = "experiments/configs/sfprompt_paper.toml"
# [D] one size for every strategy: 800 training images over the main job's 10 clients, 500
# validation images (every round), 2,000 test images (once), 5 rounds
SIZE = ["data.train_size=800", "data.val_size=500", "data.test_size=2000", "federation.rounds=5",
        "federation.eval_every=1"]
ADAMW = ["train.optimizer=adamw", "train.head_lr=0.001", "train.head_preconditioner=none",
         "train.prompt_optimizer=same"]
# label -> (strategy, reported as, overrides); the main job's settings unless overridden
ENTRIES: dict[str, tuple[str, str, list[str]]] = {
    "sfprompt": ("sfprompt", "sfprompt", []),
    # the paper's SFPrompt: the TOML (lr 0.05, prompt lr 0.5, the candidate validation chose) and
    # the other candidates of the sweep, each with every learning rate explicit
    "sfprompt_paper": ("sfprompt", "sfprompt_paper", []),
    "sfprompt_paper@p0.1": ("sfprompt", "sfprompt_paper", ["train.prompt_lr=0.1"]),
    "sfprompt_paper@p0.01": ("sfprompt", "sfprompt_paper", ["train.prompt_lr=0.01"]),
    "sfprompt_paper@lr0.01": ("sfprompt", "sfprompt_paper", ["train.lr=0.01", "train.prompt_lr=0.1"]),
    # the spec's alternative optimiser: Adam at 1e-3 for tail and prompts
    "sfprompt_paper@adam": ("sfprompt", "sfprompt_paper", ["train.optimizer=adam", "train.lr=0.001",
                                                          "train.prompt_lr=0.001"]),
    "sfprompt_no_local": ("sfprompt_no_local", "sfprompt_no_local", []),
    "sfprompt_no_prune": ("sfprompt_no_prune", "sfprompt_no_prune", []),
    "sfprompt_random": ("sfprompt_random", "sfprompt_random", []),
    "sfl": ("sfl", "sfl", []),
    # the strategies that train the body get §3's tuned FL-Full optimiser (SGD with the K-FAC
    # head diverged for a trainable backbone there): AdamW, plain head; backbone lr 2e-5 or 1e-4
    # (SL and SFL-V2 at 2e-5 only: the second lr, tried on SFL-V1 and FL-Full, did not fit the time)
    **{f"{s}{tag}": (s, s, [*ADAMW, f"train.lr={lr}"]) for s in ("sfl_v1", "sfl_v2", "sl", "fl_full")
       for tag, lr in (("", "0.00002"), ("@lr1e-4", "0.0001")) if not (tag and s in ("sfl_v2", "sl"))},
    "fl_linear": ("fl_linear", "fl_linear", []),
    "fl_prompt": ("fl_prompt", "fl_prompt", []),
}
# §9-10 (a second compare): each of fedft's five additions taken out of the main job alone, and
# what the paper itself varies: the prompt length, one head block on the client, the keep ratio
# (0.75 here; its end point 1.0 is sfprompt_no_prune in the compare)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "sfprompt-kfac": ("sfprompt", "sfprompt", ["train.head_preconditioner=none"]),
    "sfprompt-readout_bn": ("sfprompt", "sfprompt", ["model.readout_norm=none"]),
    "sfprompt-batch_scoring": ("sfprompt", "sfprompt", ["federation.sfprompt.score_norm=running"]),
    "sfprompt-local_lr_scale": ("sfprompt", "sfprompt", ["federation.sfprompt.local_lr_scale=1.0"]),
    # SGD for the prompts at the lr that did best for SGD when the main job was tuned (3e-4)
    "sfprompt-adam_prompts": ("sfprompt", "sfprompt", ["train.prompt_optimizer=same", "train.prompt_lr=0.0003"]),
    "sfprompt@P20": ("sfprompt", "sfprompt", ["method.prompt_len=20"]),
    "sfprompt@h1": ("sfprompt", "sfprompt", ["split.head_blocks=1"]),
    "sfprompt@keep0.75": ("sfprompt", "sfprompt", ["federation.sfprompt.keep_ratio=0.75"]),
}
# §9: one change each to the paper's configuration (as the TOML holds it after selection)
DIAGNOSTICS: dict[str, tuple[str, str, list[str]]] = {
    "sfprompt_paper+kfac": ("sfprompt", "sfprompt_paper", ["train.head_preconditioner=kfac"]),
    "sfprompt_paper+readout_bn": ("sfprompt", "sfprompt_paper", ["model.readout_norm=batchnorm"]),
    "sfprompt_paper-local": ("sfprompt_no_local", "sfprompt_paper", []),
    "sfprompt_paper@p3e-4": ("sfprompt", "sfprompt_paper", ["train.prompt_lr=0.0003"]),
}
GROUPS = {"compare": ENTRIES, "variants": VARIANTS, "diagnostics": DIAGNOSTICS}
# §10: the entries behind the verdict, again with seeds 1 and 2 (data subsample, validation
# split, partitions, initial prompts and client order all change with the seed)
SEEDED = ("sfprompt", "sfprompt_paper", "sfprompt_no_prune", "fl_full")
SEEDS = (1, 2)


def seed_label(label: str, seed: int) -> str:
    return label if seed == 0 else f"{label}_seed{seed}"
ARTIFACTS = ("config.toml", "summary.json", "metrics.csv")


def command(entries: dict[str, tuple[str, str, list[str]]], out: Path, seed: int = 0) -> list[str]:
    """The one ``fedft compare`` command line for ``entries`` (every entry at ``seed``)."""
    cmd = [str(ROOT / ".venv/bin/fedft"), "compare", "--out", str(out),
           "--strategies", ",".join(f"{lab}={s}" for lab, (s, _, _) in entries.items())]
    for kv in [*SIZE, f"seed={seed}"]:
        cmd += ["--set", kv]
    for lab, (_, _, over) in entries.items():
        cmd += [a for kv in over for a in ("--set-for", f"{lab}:{kv}")]
        if entries[lab][1] == "sfprompt_paper":
            cmd += ["--config-for", f"{lab}:{PAPER}"]
    return cmd


def ledger_by_round(run: Path) -> list[dict[str, Any]]:
    """The run's ledger summed by (round, kind, direction): bytes and message count."""
    total: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
    with open(run / "ledger.csv", newline="") as f:
        for e in csv.DictReader(f):
            t = total[(int(e["round"]), e["kind"], e["direction"])]
            t[0] += int(e["nbytes"])
            t[1] += 1
    return [{"round": r, "kind": k, "direction": d, "nbytes": v[0], "messages": v[1]}
            for (r, k, d), v in sorted(total.items())]


def copy_artifacts(run: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACTS:
        shutil.copy2(run / name, dest / name)
    rows = ledger_by_round(run)
    with open(dest / "ledger_by_round.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def entry_row(label: str, reported: str, d: Path) -> dict[str, Any]:
    """One entry from its committed artifacts (summary.json, metrics.csv)."""
    s = json.loads((d / "summary.json").read_text())
    with open(d / "metrics.csv", newline="") as f:
        curve = [float(r["val_accuracy"]) for r in csv.DictReader(f) if r["val_accuracy"]]
    k = s["bytes_by_kind"]
    return {
        "label": label, "strategy": reported, "val_accuracy": s["val_accuracy"], "test_accuracy": s["test_accuracy"],
        "val_curve": curve, "bytes_total": s["bytes_total"],
        "params_bytes": k.get("params_down", 0) + k.get("params_up", 0),
        "split_bytes": sum(v for kk, v in k.items() if kk.startswith(("activations", "grads"))),
        "control_bytes": k.get("control", 0), "client_flops": s["client_flops"], "server_flops": s["server_flops"],
        "wall_seconds": s["wall_seconds"], "test_samples": s["test_samples"], "val_samples": s["val_samples"],
    }


def load_rows(results: Path, entries: dict[str, tuple[str, str, list[str]]]) -> list[dict[str, Any]]:
    return [entry_row(lab, rep, results / "runs" / lab) for lab, (_, rep, _) in entries.items()
            if (results / "runs" / lab / "summary.json").is_file()]


def selected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per reported strategy, the candidate with the best final validation accuracy (first on ties)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["strategy"] not in best or r["val_accuracy"] > best[r["strategy"]]["val_accuracy"]:
            best[r["strategy"]] = r
    return list(best.values())


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def table(rows: list[dict[str, Any]], chosen: list[dict[str, Any]] | None = None) -> str:
    """The markdown table of ``rows``; the chosen candidates in bold."""
    keep = {id(r) for r in chosen} if chosen is not None else set()
    head = ("| entry | reported as | val acc (final) | test acc | val acc per round | bytes MB | params MB "
            "| split MB | client TFLOP | server TFLOP | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        b = "**" if id(r) in keep else ""
        lines.append(f"| {b}{r['label']}{b} | {r['strategy']} | {r['val_accuracy']:.3f} | {b}{r['test_accuracy']:.4f}{b} "
                     f"| {' '.join(f'{a:.2f}' for a in r['val_curve'])} | {_mb(r['bytes_total'])} "
                     f"| {_mb(r['params_bytes'])} | {_mb(r['split_bytes'])} | {r['client_flops'] / 1e12:.2f} "
                     f"| {r['server_flops'] / 1e12:.1f} | {r['wall_seconds']:.0f} |")
    return head + "\n".join(lines) + "\n"


def gap_line(chosen: list[dict[str, Any]]) -> str:
    """The gap to FL-Full (test accuracy of the validation-selected models), in points."""
    by = {r["strategy"]: r for r in chosen}
    full = by["fl_full"]["test_accuracy"]
    parts = [f"{s} {100 * (by[s]['test_accuracy'] - full):+.1f}" for s in ("sfprompt", "sfprompt_paper") if s in by]
    return f"Gap to FL-Full ({full:.4f}) in test-accuracy points: " + ", ".join(parts) + "\n"


def _mean_ci(xs: list[float]) -> str:
    """Mean ± the half-width of the 95 % Student-t interval, in points."""
    from scipy import stats

    m, sd = float(np.mean(xs)), float(np.std(xs, ddof=1))
    return f"{100 * m:.1f} ± {100 * stats.t.ppf(0.975, len(xs) - 1) * sd / np.sqrt(len(xs)):.1f}"


def seeds_table(results: Path) -> str:
    """Test accuracy per seed of the ``SEEDED`` entries, and the gap to FL-Full paired by seed
    (mean ± 95 % t-interval in points); empty until every seed of FL-Full has run."""
    seeds = (0, *SEEDS)
    acc = {lab: [json.loads(f.read_text())["test_accuracy"] if (f := results / "runs" / seed_label(lab, s)
                 / "summary.json").is_file() else None for s in seeds] for lab in SEEDED}
    if None in acc["fl_full"]:
        return ""
    lines = ["| entry | " + " | ".join(f"test acc seed {s}" for s in seeds)
             + " | mean ± 95 % CI (points) | gap to FL-Full, paired (points) |",
             "|---" * (len(seeds) + 3) + "|"]
    for lab, xs in acc.items():
        if None in xs:
            continue
        gap = _mean_ci([x - f for x, f in zip(xs, acc["fl_full"], strict=True)]) if lab != "fl_full" else "0"
        lines.append(f"| {lab} | " + " | ".join(f"{x:.4f}" for x in xs) + f" | {_mean_ci(xs)} | {gap} |")
    return "\n".join(lines) + "\n"


def plots(chosen: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for x, name, xlabel in (("bytes_total", "accuracy_vs_bytes.png", "bytes communicated over the run (MB, log)"),
                            ("client_flops", "accuracy_vs_client_flops.png", "client FLOPs over the run (TFLOP, log)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        scale = 1e6 if x == "bytes_total" else 1e12
        for r in chosen:
            ax.scatter(r[x] / scale, r["test_accuracy"], s=40)
            ax.annotate(r["strategy"], (r[x] / scale, r["test_accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (validation-selected)")
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in chosen:
        ax.plot(range(1, len(r["val_curve"]) + 1), r["val_curve"], marker="o", label=r["strategy"])
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "val_curves.png", dpi=120)
    plt.close(fig)


def report(root: Path, results: Path) -> str:
    """Copy artifacts of the finished entries, write the tables and plots; return tables.md."""
    for group, entries in GROUPS.items():
        for lab in entries:
            if (root / group / lab / "summary.json").is_file():
                copy_artifacts(root / group / lab, results / "runs" / lab)
    for seed in SEEDS:
        for lab in SEEDED:
            if (root / f"compare-seed{seed}" / lab / "summary.json").is_file():
                copy_artifacts(root / f"compare-seed{seed}" / lab, results / "runs" / seed_label(lab, seed))
    rows = load_rows(results, ENTRIES)
    chosen = selected(rows)
    results.mkdir(parents=True, exist_ok=True)
    for name, rs in (("compare.csv", rows), ("selected.csv", chosen)):
        with open(results / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "val_curve"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rs)
    plots(chosen, results)
    md = "## All candidates (selected in bold)\n\n" + table(rows, chosen)
    if {"fl_full", "sfprompt"} <= {r["strategy"] for r in chosen}:
        md += "\n" + gap_line(chosen)
    for title, entries in (("Variants", VARIANTS), ("Diagnostics of the paper's configuration", DIAGNOSTICS)):
        if (more := load_rows(results, entries)):
            md += f"\n## {title}\n\n" + table(more)
    if (st := seeds_table(results)):
        md += "\n## Three seeds\n\n" + st
    (results / "tables.md").write_text(md)
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("runs/strategy_compare"), help="run directories")
    p.add_argument("--results", type=Path, default=ROOT / "experiments/results/sfprompt/compare",
                   help="committed artifacts and tables")
    p.add_argument("--group", choices=list(GROUPS), default="compare",
                   help="which entries to run: the compare (§8), fedft's additions one at a time "
                        "(variants, §9-10) or single changes to the paper's configuration (diagnostics)")
    p.add_argument("--seed", type=int, default=0, choices=(0, *SEEDS),
                   help="with 1 or 2: run only the entries behind the verdict (SEEDED) at that seed")
    p.add_argument("--report-only", action="store_true", help="only copy artifacts and tabulate")
    a = p.parse_args()
    if not a.report_only:
        if a.seed:
            cmd = command({lab: ENTRIES[lab] for lab in SEEDED}, a.root / f"compare-seed{a.seed}", a.seed)
        else:
            cmd = command(GROUPS[a.group], a.root / a.group)
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        rc = subprocess.run(cmd).returncode
        if rc:
            sys.exit(rc)
    print(report(a.root, a.results))

if __name__ == "__main__":
    main()
