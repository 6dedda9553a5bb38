"""The report of experiments/llm_data_gemquad.py: target EM / F1 of gold-only, unfiltered and
filtered students (mean and 95 % t-interval over seeds), the generation's yield, the filter's
accepted count and precision per round, and a verdict card per claim of GeMQuAD decided by
llm_data_report's rule. Writes experiments/reports/llm_data_gemquad.md for the default output
directory (else ``<out>/report.md``) and ``<out>/summary.csv``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from llm_data_gemquad import RESULTS, Options
from llm_data_report import RULE, card, combine, judge, paired, table
from study_cells import ROOT, interval
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_data_gemquad.md"
COMMAND = ".venv/bin/python experiments/llm_data_gemquad.py --jobs 2"
METRICS = {"em": ("target exact match (%)", ".1f", True), "f1": ("target token F1 (%)", ".1f", True),
           "silver": ("silver items trained on", ".0f", False), "gold_fit": ("gold seed EM (fit, %)", ".1f", True),
           "train_s": ("student training + evaluation s", ".0f", False)}
DIFFERS = ("The paper generates with AlexaTM 20B (1-shot) from MLQA/XQuAD contexts, filters with an XLM-R "
           "base student and evaluates on MLQA and XQuAD in several languages. Here: SmolLM2-135M-Instruct, "
           "which copies a one-shot example instead of following it, is LoRA-tuned on the gold seed and then "
           "generates greedily, without an example, from {passages} BBC business and politics paragraphs; the "
           "student is MiniLM-L6 "
           "(not pre-trained for QA); the gold seed is {gold} quote-attribution items from BBC tech, and the "
           "target test set {eval} quote-attribution items from other business and politics articles, so "
           "the test asks one question type (who said it) while the silver data asks whatever the generator "
           "wrote; English only; one generation (seed 0), 3 student seeds; nothing tuned.")


def load(out: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Per-seed student records by condition: ``gold-only`` (the filtered cells' round 0),
    ``filtered-k<k>`` (their round k) and ``unfiltered``; and the filtered cells' rounds."""
    by: dict[str, list[dict[str, Any]]] = {}
    rounds: list[dict[str, Any]] = []
    for path in sorted((out / "cells").glob("*_seed*.json")):
        rec = json.loads(path.read_text())
        for r in rec["rounds"]:
            k = r.get("round", 0)
            name = "unfiltered" if rec["condition"] == "unfiltered" else ("gold-only" if k == 0 else f"filtered-k{k}")
            by.setdefault(name, []).append({**r, "seed": rec["seed"]})
            if rec["condition"] == "filtered":
                rounds.append({**r, "seed": rec["seed"]})
    for recs in by.values():
        recs.sort(key=lambda r: r["seed"])
    return by, rounds


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def label_of(silver: dict[str, Any], labels: dict[str, Any] | None) -> list[bool | None]:
    """Each silver item's label (None when unlabelled), in silver.json order."""
    table_ = (labels or {}).get("labels", {})
    return [table_.get(it["source"]) for it in silver["items"]]


def precision_of(idx: list[int], flags: list[bool | None]) -> tuple[int, int]:
    """(correct, labelled) among the items ``idx``."""
    known = [flags[i] for i in idx if flags[i] is not None]
    return sum(map(bool, known)), len(known)


def rounds_table(rounds: list[dict[str, Any]], flags: list[bool | None] | None) -> list[str]:
    rows = ["| round | accepted (per seed) | accepted, mean [95 % CI] | precision of accepted (labelled items) |",
            "|---|---|---|---|"]
    for k in sorted({r["round"] for r in rounds if r["round"] > 0}):
        rs = [r for r in rounds if r["round"] == k]
        prec = "no labels"
        if flags is not None:
            parts = [precision_of(r["kept"], flags) for r in rs]
            prec = "; ".join(f"seed {r['seed']}: {c}/{n} = {c / n:.2f}" if n else f"seed {r['seed']}: —"
                             for r, (c, n) in zip(rs, parts, strict=True))
        rows.append(f"| {k} | {', '.join(str(r['accepted']) for r in rs)} | "
                    f"{fmt(interval([r['accepted'] for r in rs]), '.1f')} | {prec} |")
    return rows


def yield_lines(out: Path) -> list[str]:
    """One row per silver file: the paper's one-shot prompt, and the default (tuned generator)."""
    rows = ["| generator | generated | parsed | copies of the example | answer verbatim in passage | unique (silver "
            "pool) | correct (labelled) | generation s |", "|---|---|---|---|---|---|---|---|"]
    for name, label in (("silver_oneshot", "one-shot prompt [paper], not tuned"), ("silver", "tuned on the gold seed [D]")):
        silver = read_json(out / f"{name}.json")
        if silver is None:
            continue
        s, labels = silver["stats"], read_json(out / f"{name}_labels.json")
        c, n = precision_of(list(range(len(silver["items"]))), label_of(silver, labels)) if labels else (0, 0)
        rows.append(f"| {label} | {s['generated']} | {s['parsed']} | {s['shot_copies']} | {s['verbatim']} | "
                    f"{s['unique']} | {f'{c}/{n}' if n else '—'} | {silver['seconds']:.0f} |")
    return rows if len(rows) > 2 else ["(no silver yet)"]


def precision_card(rounds: list[dict[str, Any]], flags: list[bool | None] | None, differs: str) -> list[str]:
    claim = "The student filter's accepted items are far more often correct than the raw generations."
    if flags is None or not rounds:
        return card(claim, differs, "no labels of the silver items", "inconclusive", COMMAND)
    raw_c, raw_n = precision_of(list(range(len(flags))), flags)
    last = max(r["round"] for r in rounds)
    per_seed = [precision_of(r["kept"], flags) for r in rounds if r["round"] == last]
    accepted = [c / n for c, n in per_seed if n]
    lows = [wilson(c, n)[0] for c, n in per_seed if n]
    lo, hi = wilson(raw_c, raw_n)
    raw = raw_c / raw_n if raw_n else math.nan
    verdict = "inconclusive"
    if len(accepted) >= 2 and raw_n:
        mean = sum(accepted) / len(accepted)
        verdict = ("reproduced in direction" if all(x > hi for x in lows) else
                   "not reproduced" if mean <= raw else "inconclusive")
    numbers = (f"raw pool precision {raw_c}/{raw_n} = {raw:.2f} (Wilson 95 % [{lo:.2f}, {hi:.2f}]); round-{last} "
               "accepted precision per seed: " + "; ".join(f"{c}/{n} (Wilson low {wilson(c, n)[0]:.2f})"
                                                           for c, n in per_seed) +
               ". Rule: reproduced when every seed's accepted precision has its Wilson lower bound above the raw "
               "precision's Wilson upper bound; not reproduced when the mean accepted precision is at most the raw "
               "precision.")
    return card(claim, differs, numbers, verdict, COMMAND)


def verdict_cards(by: dict, rounds: list[dict[str, Any]], flags: list[bool | None] | None, differs: str) -> list[str]:
    last = f"filtered-k{max((r['round'] for r in rounds), default=2)}"
    diffs = {(a, b, m): paired(by, a, b, m) for a, b in ((last, "unfiltered"), ("unfiltered", "gold-only"))
             for m in ("em", "f1")}
    parts = [judge([d], True) for d in diffs.values()]
    nums = "; ".join(f"{a} - {b} {m.upper()}: {fmt(d, '+.1f')}" for (a, b, m), d in diffs.items())
    lines = ["### Filtered > unfiltered > gold-only", "",
             *card("On the target domain, the student trained on filtered silver + gold is at least as good as the "
                   "one trained on all silver + gold, which is at least as good as gold only (EM and F1) [paper: "
                   "filtered > unfiltered > gold-only].", differs, nums, combine(parts), COMMAND),
             "### Filter precision", "", *precision_card(rounds, flags, differs)]
    acc = {1: [], 2: []}
    for r in rounds:
        if r["round"] in acc:
            acc[r["round"]].append({"seed": r["seed"], "accepted": r["accepted"]})
    d = paired({"k2": acc[2], "k1": acc[1]}, "k2", "k1", "accepted")
    lines += ["### Round 2 accepts more", "",
              *card("The round-2 student (trained on round-1 silver + gold) accepts more silver items than the "
                    "gold-only student of round 1.", differs, f"accepted, round 2 - round 1: {fmt(d, '+.1f')}",
                    judge([d], True), COMMAND)]
    return lines


def write_summary(out: Path, by: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "seed", "silver", "gold", "em", "f1", "gold_fit", "train_s"])
        for name, recs in sorted(by.items()):
            for r in recs:
                w.writerow([name, r["seed"], r["silver"], r["gold"], f"{r['em']:.2f}", f"{r['f1']:.2f}",
                            f"{r['gold_fit']:.2f}", f"{r['train_s']:.1f}"])


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    """The markdown report of the cells under ``out`` (and ``summary.csv`` there)."""
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    by, rounds = load(out)
    data, silver, labels = (read_json(out / n) for n in ("data.json", "silver.json", "silver_labels.json"))
    first = next((r for rs in by.values() for r in rs), None)
    opts = Options(**json.loads(next((out / "cells").glob("*.json")).read_text())["options"]) if first else Options()
    differs = DIFFERS.format(passages=len(data["passages"]) if data else opts.passages_n,
                             gold=len(data["gold"]) if data else opts.gold_n,
                             eval=len(data["eval"]) if data else opts.eval_n)
    flags = label_of(silver, labels) if silver and labels else None
    order = ["gold-only", "unfiltered", *sorted(c for c in by if c.startswith("filtered"))]
    lines = ["# GeMQuAD on BBC News: synthetic extractive QA filtered by a student", "",
             f"Generated by `experiments/llm_data_gemquad_report.py` from `{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}`. "
             f"Command: `{COMMAND}`. Options: {opts}.", "",
             "## Generation (SmolLM2-135M-Instruct, greedy, the reply started with \"Question:\")", "",
             *yield_lines(out), "",
             "## Students on the target test set", "", *table(by, [c for c in order if c in by], METRICS), "",
             "## Filter rounds", "", *rounds_table(rounds, flags), ""]
    if labels:
        lines += [f"Labels: {labels.get('how', '')}", ""]
    lines += ["## Verdicts", "", RULE, "", *verdict_cards(by, rounds, flags, differs)]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    if summary_csv:
        write_summary(out, by)
        print(f"wrote {report} and {out / 'summary.csv'}")
    return report
