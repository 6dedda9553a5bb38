"""The report of wire_tradeoff.py (issue 19): tables, the accuracy-vs-bytes plot, the verdict
card and the codec benchmark, rebuilt from the committed artifacts under experiments/results/wire
and experiments/results/sfprompt/compare/compare.csv only (no run, no model).

    .venv/bin/python experiments/wire_tradeoff.py --report-only
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from study_cells import fmt_interval, interval
from wire_text import CLAIM, NOT_RUN, bench_section, eval_section, fuzz_section, header_lines, tail_lines

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "experiments/results/sfprompt/compare/compare.csv"
ORDER = ["fp32", "fp16", "bf16", "int8", "int4", "topk", "topk_noef"]
BYTES_GOAL, POINTS_GOAL = 0.10, 0.01  # the claim: <= 0.10 x FL-Full's bytes, within 1 point


def load_cells(results: Path, task: str) -> dict[str, list[dict[str, Any]]]:
    """The finished cells of ``task`` by arm, each list sorted by seed."""
    by: dict[str, list[dict[str, Any]]] = {}
    for d in sorted((results / task).glob("*_s*")):
        if not (d / "summary.json").is_file():
            continue
        s, meta = json.loads((d / "summary.json").read_text()), json.loads((d / "cell.json").read_text())
        ev = json.loads((d / "eval_on_wire.json").read_text()) if (d / "eval_on_wire.json").is_file() else None
        k = s["bytes_by_kind"]
        act = k.get("activations_up", 0) + k.get("activations_down", 0)
        grad = k.get("grads_up", 0) + k.get("grads_down", 0)
        by.setdefault(meta["arm"], []).append({
            # the final model over its wire (wire_eval.py) where re-evaluated, else the run's own numbers
            "arm": meta["arm"], "seed": meta["seed"], "eval": ev, "summary_val": s["val_accuracy"],
            "summary_test": s["test_accuracy"],
            "val": ev["val_accuracy_on_wire"] if ev else s["val_accuracy"],
            "test": ev["test_accuracy_on_wire"] if ev else s["test_accuracy"],
            "bytes": s["bytes_total"], "split": act + grad, "act": act, "grad": grad,
            "wall": meta["cell_wall_seconds"], "command": meta["command"]})
    for recs in by.values():
        recs.sort(key=lambda r: r["seed"])
    return {a: by[a] for a in ORDER if a in by}


def fl_full_bytes() -> int | None:
    """FL-Full's total bytes at the comparison size (compare.csv's row ``fl_full``)."""
    if not COMPARE.is_file():
        return None
    with open(COMPARE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] == "fl_full"]
    return int(rows[0]["bytes_total"]) if rows else None


def paired(recs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> list[float]:
    """Per seed both arms ran: ``key`` of ``recs`` minus that of ``base``."""
    b = {r["seed"]: r[key] for r in base}
    return [r[key] - b[r["seed"]] for r in recs if r["seed"] in b]


def ratio(recs: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> float:
    """Mean over paired seeds of ``key`` relative to ``base`` (nan without a pair)."""
    b = {r["seed"]: r[key] for r in base}
    xs = [r[key] / b[r["seed"]] for r in recs if r["seed"] in b and b[r["seed"]]]
    return sum(xs) / len(xs) if xs else math.nan


def pts(iv: tuple[int, float, float, float]) -> str:
    """An interval of accuracy differences in points."""
    return fmt_interval((iv[0], *(100 * x for x in iv[1:])), "+.1f")


def arm_table(cells: dict[str, list[dict[str, Any]]], full: int | None) -> list[str]:
    """One row per arm: accuracies with 95 % t-intervals, bytes and their ratios."""
    base = cells.get("fp32", [])
    lines = ["| arm | seeds | val acc (final round) | test acc | total MB | split MB | activations / fp32 "
             "| gradients / fp32 | total / FL-Full | cell wall s |", "|---" * 10 + "|"]
    for arm, recs in cells.items():
        mb = sum(r["bytes"] for r in recs) / len(recs)
        frac = f"{mb / full:.3f}" if full else "—"
        lines.append(
            f"| {arm} | {','.join(str(r['seed']) for r in recs)} | {fmt_interval(interval([r['val'] for r in recs]), '.3f')} "
            f"| {fmt_interval(interval([r['test'] for r in recs]), '.4f')} | {mb / 1e6:,.1f} "
            f"| {sum(r['split'] for r in recs) / len(recs) / 1e6:,.1f} | {ratio(recs, base, 'act'):.3f} "
            f"| {ratio(recs, base, 'grad'):.3f} | {frac} | {sum(r['wall'] for r in recs) / len(recs):.0f} |")
    return lines


def paired_table(cells: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Per arm and seed, accuracy minus fp32's at the same seed; mean and 95 % t-interval (points)."""
    base = cells.get("fp32", [])
    seeds = sorted({r["seed"] for r in base})
    lines = ["| arm | " + " | ".join(f"test Δ s{s}" for s in seeds) + " | val Δ, mean [95 % CI] | test Δ, mean [95 % CI] |",
             "|---" * (len(seeds) + 3) + "|"]
    for arm, recs in cells.items():
        if arm == "fp32":
            continue
        by = {r["seed"]: r for r in recs}
        b = {r["seed"]: r for r in base}
        each = [f"{100 * (by[s]['test'] - b[s]['test']):+.2f}" if s in by else "—" for s in seeds]
        lines.append(f"| {arm} | " + " | ".join(each) + f" | {pts(interval(paired(recs, base, 'val')))} "
                     f"| {pts(interval(paired(recs, base, 'test')))} |")
    return lines


def judge(recs: list[dict[str, Any]], base: list[dict[str, Any]], full: int | None, key: str) -> str:
    """reproduced / not reproduced / inconclusive for one arm, on ``key`` (val or test)."""
    n, _, lo, hi = interval(paired(recs, base, key))
    lo, hi = round(lo, 9), round(hi, 9)  # a difference of exactly 1 point is within it
    frac = sum(r["bytes"] for r in recs) / len(recs) / full if full else math.nan
    if n < 2 or math.isnan(frac):
        return "inconclusive"
    if frac > BYTES_GOAL or hi < -POINTS_GOAL:
        return "not reproduced"
    return "reproduced" if lo >= -POINTS_GOAL else "inconclusive"


def verdict(cells: dict[str, list[dict[str, Any]]], full: int | None) -> list[str]:
    """The verdict card: the arm validation selects (the fewest bytes among the compressed arms
    whose paired validation interval stays within 1 point; else the best validation mean)."""
    base = cells.get("fp32", [])
    lossy = {a: r for a, r in cells.items() if a != "fp32" and len(paired(r, base, "val")) >= 2}
    if not lossy or full is None:
        return ["Verdict: not enough cells yet (fp32 and a compressed arm over at least 2 seeds)."]
    ok = [a for a in lossy if judge(lossy[a], base, full, "val") == "reproduced"]
    pick = min(ok, key=lambda a: sum(r["bytes"] for r in lossy[a])) if ok else \
        max(lossy, key=lambda a: interval(paired(lossy[a], base, "val"))[1])
    recs, seeds = lossy[pick], len(lossy[pick])
    frac = sum(r["bytes"] for r in recs) / len(recs) / full
    lines = [f"- **Claim** [D] (issue 19's goal, not a number from the paper): {CLAIM}",
             f"- **Arm chosen on validation**: `{pick}` ({'fewest bytes among the arms whose paired validation interval stays within 1 point' if ok else 'no arm whose paired validation interval stays within 1 point; the best validation mean'})",
             f"- **Numbers** ({seeds} seeds, paired with fp32 by seed): total bytes {frac:.3f} x FL-Full's "
             f"({sum(r['bytes'] for r in recs) / len(recs) / 1e6:,.1f} MB vs {full / 1e6:,.1f} MB); validation Δ "
             f"{pts(interval(paired(recs, base, 'val')))} points, test Δ {pts(interval(paired(recs, base, 'test')))} points; "
             f"uncompressed SFPrompt is {sum(r['bytes'] for r in base) / len(base) / full:.3f} x FL-Full's bytes"]
    lines.append("- **Our setting**: [D] the goal is issue 19's, not a number from the SFPrompt paper; DINOv2-small "
                 "on MNIST at 112 px, 10 clients, 5 rounds at the comparison size; bytes are every message of "
                 "the run (split traffic, prompts and tail, control); one codec for activations and gradients; "
                 "the final model is evaluated over its own wire, as served (see the evaluation section below)")
    status = judge(recs, base, full, "test")
    lines.append(f"- **Verdict**: **{status}** (reproduced: bytes <= {BYTES_GOAL:.2f} x FL-Full and the test "
                 "interval's lower end >= -1 point; not reproduced: more bytes or the upper end < -1 point)")
    lines.append("- **Every compressed arm with >= 2 seeds, on test**: " + ", ".join(
        f"{a} {judge(r, base, full, 'test')}" for a, r in lossy.items()))
    lines.append("- **Command**: `.venv/bin/python experiments/wire_tradeoff.py --jobs 2 --arms fp32,int8,int4,topk` "
                 "(then `--report-only`)")
    return lines


def plot(cells: dict[str, list[dict[str, Any]]], full: int | None, path: Path) -> None:
    """Validation and test accuracy against total bytes (log x), one point per arm with 95 % bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "val", "validation (final round)"), (axes[1], "test", "test (once)")):
        for arm, recs in cells.items():
            n, m, lo, hi = interval([r[key] for r in recs])
            x = sum(r["bytes"] for r in recs) / len(recs) / 1e6
            err = [[m - lo], [hi - m]] if n > 1 else None
            ax.errorbar(x, m, yerr=err, fmt="o", capsize=3, label=arm)
            ax.annotate(f"{arm} (n={n})", (x, m), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if full:
            ax.axvline(BYTES_GOAL * full / 1e6, color="grey", ls="--", lw=1, label="0.10 x FL-Full bytes")
        if "fp32" in cells:
            ax.axhline(interval([r[key] for r in cells["fp32"]])[1] - POINTS_GOAL, color="red", ls=":", lw=1,
                       label="fp32 mean - 1 point")
        ax.set_xscale("log")
        ax.set_xlabel("total bytes over the run (MB, log)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("accuracy (mean, 95 % t-interval over seeds)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(cells: dict[str, list[dict[str, Any]]], path: Path) -> None:
    keys = ["arm", "seed", "val", "test", "bytes", "split", "act", "grad", "wall"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(r for recs in cells.values() for r in recs)


def task_section(results: Path, task: str, full: int | None, artifacts: bool = True) -> list[str]:
    """The tables (and, for vision, the plot and the verdict) of one task; ``artifacts=False``
    writes neither cells.csv nor the plot (check_reports.py rebuilds the text only)."""
    cells = load_cells(results, task)
    if not cells:
        return [f"No {task} cells have run.", ""]
    if artifacts:
        write_csv(cells, results / task / "cells.csv")
    lines = [*arm_table(cells, full), "", "Paired with fp32 by seed (same data, partition, initial prompts), "
             "in accuracy points:", "", *paired_table(cells), ""]
    if "int8" in cells and "fp32" in cells:
        r8 = ratio(cells["int8"], cells["fp32"], "act")
        lines += [f"Check: int8's activation bytes are {r8:.4f} x fp32's, {'inside' if 0.24 <= r8 <= 0.30 else 'OUTSIDE'} "
                  "the 0.24-0.30 that (4 + D) / 4D plus frame headers predicts.", ""]
    if task == "vision":
        if artifacts:
            plot(cells, full, results / "accuracy_vs_bytes.png")
        lines += ["![accuracy vs bytes](../results/wire/accuracy_vs_bytes.png)", "", "### Verdict card", "",
                  *verdict(cells, full), ""]
    first = next(iter(cells.values()))[0]
    lines += ["One cell's command (others change `split.wire_dtype`, `split.error_feedback`, `seed`):", "",
              f"    {first['command']}", ""]
    return lines


def missing_lines(results: Path) -> list[str]:
    """What the study did not run: per task, the cells of ARMS x SEEDS without artifacts."""
    lines = ["## Not run", ""]
    for task, arms in (("vision", ORDER), ("text", ["fp32", "int8", "int4", "topk"])):
        done = {(a, r["seed"]) for a, recs in load_cells(results, task).items() for r in recs}
        gaps = [f"{a} (seed{'s' if len(m) > 1 else ''} {', '.join(map(str, m))})" for a in arms
                if (m := [s for s in (0, 1, 2) if (a, s) not in done])]
        lines.append(f"- {task}: " + ("every cell ran." if not gaps else "no cell for " + "; ".join(gaps) + "."))
    return [*lines, *NOT_RUN, ""]


def build(results: Path, artifacts: bool = True) -> str:
    """The text of experiments/reports/wire.md from the artifacts under ``results``."""
    full = fl_full_bytes()
    lines = [*header_lines(full), "## Vision: DINOv2-small on MNIST at the comparison size", "",
             *task_section(results, "vision", full, artifacts), *eval_section(load_cells(results, "vision")),
             "## Text: split SmolLM2-135M on chatterbot", "", *task_section(results, "text", None, artifacts),
             *bench_section(results / "bench.json"), *fuzz_section(results / "fuzz.json"), *missing_lines(results),
             *tail_lines()]
    return "\n".join(lines) + "\n"


def write_report(results: Path, report: Path) -> Path:
    """Rebuild experiments/reports/wire.md (and cells.csv, the plot) from the artifacts."""
    text = build(results)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    print(f"wrote {report}")
    return report
