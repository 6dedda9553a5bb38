"""The report of experiments/llm_data_noninstr.py: the conditions side by side (mean and 95 %
t-interval over seeds), the follow rate per instruction kind, what the data preparation built (pairs,
detector flags, teacher cost, equal tokens), a few answers, and verdict cards decided by
llm_data_report's rule (``judge``, ``combine``). Writes experiments/reports/llm_data_noninstr.md for
the default output directory (else ``<out>/report.md``) and ``<out>/summary.csv``.

Comparisons with ``base`` [D]: there is one base record (seed 0). The untrained model's LoRA adapter
starts at B = 0 (a no-op) and every measurement is greedy or exact, so the base numbers do not depend on
the seed; each seed's cell is compared with that one value, i.e. the interval is the one-sample
t-interval over the seeds of (cell - base). Comparisons between the trained conditions pair by seed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llm_data_noninstr import CONDITIONS, RESULTS, STOP, Options
from llm_data_report import RULE, card, combine, judge, paired, table
from study_cells import ROOT, interval, load_cells, save_report
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_data_noninstr.md"
COMMAND = ".venv/bin/python experiments/llm_data_noninstr.py --jobs 2"
NI, IF = "non_instructional", "instruction"
# metric -> (label, format, True when higher is better)
METRICS = {"follow_rate": ("instruction-suite follow rate (plain template)", ".3f", True),
           "heldout_loss": ("held-out chatterbot response loss (plain template)", ".3f", False),
           "answer_chars": ("mean answer length (characters)", ".0f", False),
           "train_examples": ("training pairs", ".0f", True), "train_tokens": ("training tokens", ".0f", True),
           "train_response_tokens": ("training response tokens", ".0f", True),
           "train_loss": ("training loss (1 epoch)", ".3f", False), "train_s": ("training s", ".0f", False),
           "eval_s": ("evaluation s", ".0f", False), "peak_rss_mb": ("peak RSS (MB)", ".0f", False)}
CLAIMS = {"follow_rate": "follow rate", "heldout_loss": "held-out chatterbot loss"}
DIFFERS = ("The paper fine-tunes base (never instruction-tuned) 7-8B models on hundreds of thousands of "
           "OpenWebText halves continued by GPT-3.5 / GPT-4 and grades them with MT-Bench, Arena Hard (GPT-4 "
           "judges) and the Open LLM Leaderboard. Here: SmolLM2-135M-Instruct, which is already instruction-"
           "tuned (no base causal LM is installable), under a plain Input:/Output: template it never saw; LoRA "
           "r 16 on q, v, one epoch; {pairs} pairs from BBC News halves continued by the same model (a "
           "self-teacher, greedy, at most {tt} tokens); the control trains on as many tokens of English "
           "chatterbot pairs; graded by {n} rule-checked instructions (form, not content) and the response "
           "loss on {held} held-out chatterbot pairs (in-distribution for the instruction control, not for "
           "non-instructional FT); {seeds} seeds; nothing tuned.")
WEAK = ("How weak the evidence is: a 135M model that is already instruction-tuned (only the template is new, "
        "so a gain shows recovery under a new format, not a capability created from a base model); the teacher "
        "is the model itself, not a stronger LM; ~{pairs} training pairs; {n} rule-checked instructions, so one "
        "answer moves the follow rate by {step:.3f}; the held-out loss is on chatterbot, the instruction "
        "control's own distribution; {seeds} seed(s) per trained condition (an interval needs 2; t = 4.30 for 3).")


def load(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Cell records by condition, sorted by seed."""
    return load_cells(out / "cells")


def vs_base(by: dict, cond: str, key: str) -> tuple[int, float, float, float]:
    """One-sample interval over the seeds of (cell - the one base value)."""
    base = [r.get(key) for r in by.get("base", []) if r.get(key) is not None]
    return interval([r[key] - base[0] for r in by.get(cond, []) if r.get(key) is not None] if base else [])


def half_gap(by: dict, key: str) -> tuple[int, float, float, float]:
    """Per seed, (non_instructional - base) - (instruction - base) / 2: >= 0 (<= 0 for a loss) when
    non-instructional FT recovers at least half of instruction FT's change from the base model."""
    base = [r.get(key) for r in by.get("base", []) if r.get(key) is not None]
    instr = {r["seed"]: r.get(key) for r in by.get(IF, [])}
    return interval([(r[key] - base[0]) - (instr[r["seed"]] - base[0]) / 2 for r in by.get(NI, [])
                     if base and r.get(key) is not None and instr.get(r["seed"]) is not None])


def _both(by: dict, diff: Any, text: str) -> tuple[str, str]:
    """(numbers, verdict) of a claim on both metrics: follow rate higher, held-out loss lower."""
    parts, numbers = [], []
    for key, name in CLAIMS.items():
        higher = METRICS[key][2]
        parts.append(judge([diff(key)], higher))
        numbers.append(f"{name} ({'higher' if higher else 'lower'} is better): {text} "
                       f"{fmt(diff(key), '+.3f')} → {parts[-1]}.")
    return " ".join(numbers), combine(parts)


def verdict_cards(by: dict, differs: str) -> list[str]:
    out: list[str] = []
    numbers, verdict = _both(by, lambda k: vs_base(by, NI, k), "non_instructional - base")
    out += card("Non-instructional fine-tuning improves instruction following over no fine-tuning: the follow "
                "rate rises and the held-out chatterbot loss falls [paper: SFT on continuations of plain text, "
                "with no instruction in the data, gives instruction-following ability]", differs, numbers,
                verdict, COMMAND)
    numbers, verdict = _both(by, lambda k: half_gap(by, k), "(non_instructional - base) - (instruction - base) / 2")
    direct = "; ".join(f"{name}: non_instructional - instruction {fmt(paired(by, NI, IF, k), '+.3f')}"
                       for k, name in CLAIMS.items())
    out += card("Non-instructional fine-tuning approaches instruction fine-tuning on as many tokens [paper: "
                "comparable to instruction-tuned counterparts]; read here [D] as: it recovers at least half of "
                "instruction FT's change from the base model, on both metrics, paired by seed", differs,
                f"{numbers} Directly (paired): {direct}.", verdict, COMMAND)
    numbers, verdict = _both(by, lambda k: vs_base(by, IF, k), "instruction - base")
    out += card("Control [D]: instruction fine-tuning (equal training tokens) improves over no fine-tuning. If it "
                "does not, the second card's yardstick means little.", differs, numbers, verdict, COMMAND)
    return out


def kinds_table(by: dict) -> list[str]:
    """Mean follow rate per instruction kind (over the seeds), with the base model's own template."""
    cols = [("base, own template", "base", "own_template_per_kind")] + [(c, c, "per_kind") for c in CONDITIONS]
    cols = [c for c in cols if any(c[2] in r for r in by.get(c[1], []))]
    kinds = sorted({k for rs in by.values() for r in rs for k in r.get("per_kind", {})})
    rows = [f"| kind | {' | '.join(c[0] for c in cols)} |", "|---|" + "---|" * len(cols)]
    for k in kinds:
        vals = [interval([r[f].get(k) for r in by[c] if f in r])[1] for _, c, f in cols]
        rows.append(f"| {k} | {' | '.join(f'{v:.2f}' for v in vals)} |")
    return rows


def _short(text: str, n: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def answers_table(by: dict, n: int = 6) -> list[str]:
    """The first answer of ``n`` kinds: the base model under both templates, each trained condition (seed 0)."""
    cols = [(c, f, f"{c}{' (own template)' if f.startswith('own') else ''}") for c, f in
            [("base", "own_template_answers"), *((c, "answers") for c in CONDITIONS)] if by.get(c) and f in by[c][0]]
    if not cols:
        return []
    seen: dict[str, int] = {}
    for i, a in enumerate(by[cols[0][0]][0][cols[0][1]]):
        seen.setdefault(a["kind"], i)
    rows = [f"| instruction | {' | '.join(label for *_, label in cols)} |", "|---|" + "---|" * len(cols)]
    for i in list(seen.values())[:n]:
        cells = [by[c][0][f][i] for c, f, _ in cols]
        rows.append(f"| {_short(cells[0]['prompt'], 60)} | "
                    + " | ".join(f"{'✓' if a['ok'] else '✗'} {_short(a['answer'])}" for a in cells) + " |")
    return rows


def data_lines(out: Path) -> list[str]:
    """What the preparation built (never computed here)."""
    path = out / "data.json"
    if not path.is_file():
        return ["(no data.json)"]
    d = json.loads(path.read_text())
    r, key = d["report"], d["key"]
    rules = ", ".join(f"{k} {v}" for k, v in r["flagged_rules"].items()) or "none"
    lines = [f"- Documents [D]: {r['documents']} BBC News articles, cut to {key['doc_chars']} characters; "
             f"{r['skipped_short']} under {key['min_words']} words skipped; {r['empty_continuations']} empty "
             f"continuations; {r['pairs']} pairs.",
             f"- Instruction-like detector (rules, standing in for the paper's GPT-4 classifier, which flagged "
             f"~0.7 % [paper]): {r['flagged_instructional']} flagged ({r['flagged_fraction']:.1%}; {rules}); "
             f"dropped {r['dropped']}, leaving {r['examples']} training pairs.",
             f"- Teacher: {r['teacher']}, at most {key['teacher_tokens']} tokens: {r['teacher_tokens']} tokens in "
             f"{r['teacher_s']:.0f} s ({r['teacher_tokens_per_s']:.1f} tokens/s).",
             f"- Equal training tokens [D]: non-instructional {d['tokens']['non_instructional']} tokens; instruction "
             f"{d['tokens']['instruction']} tokens in {len(d['instruction'])} of {d['instruction_pool']} English "
             f"chatterbot training pairs (prompt and response tokens: the response tokens, which carry the loss, "
             f"differ; see the table); held out: {len(d['heldout'])} of {d['heldout_pool']} English test pairs."]
    if d["non_instructional"]:
        ex = d["non_instructional"][0]
        lines += ["", "One training pair (the end of the half, then the start of the teacher's continuation):", "",
                  f"> …{_short(ex['prompt'][-200:], 200)} ⟶ {_short(ex['response'], 200)}"]
    return lines


def write_summary(out: Path, by: dict) -> None:
    keys = list(METRICS)
    kinds = sorted({k for rs in by.values() for r in rs for k in r.get("per_kind", {})})
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "seed", *keys, "own_template_follow_rate", "own_template_heldout_loss",
                    *(f"rate_{k}" for k in kinds)])
        for c in [c for c in CONDITIONS if c in by]:
            for r in by[c]:
                w.writerow([c, r["seed"], *[r.get(k, "") for k in keys], r.get("own_template_follow_rate", ""),
                            r.get("own_template_heldout_loss", ""), *[r.get("per_kind", {}).get(k, "") for k in kinds]])


def _header(out: Path, opts: Options, by: dict, pairs: int | str, seeds: int) -> list[str]:
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    base = (by.get("base") or [{}])[0]
    ref = (f"The base model under its own ChatML template (its default system prompt): follow rate "
           f"{base['own_template_follow_rate']:.3f}, held-out chatterbot loss {base['own_template_heldout_loss']:.3f}; "
           f"under the plain template: {base['follow_rate']:.3f} and {base['heldout_loss']:.3f}."
           if "own_template_follow_rate" in base else "(no base cell yet)")
    return ["# Non-instructional fine-tuning on SmolLM2-135M", "",
            f"Generated by `experiments/llm_data_noninstr_report.py` from `{where}` (`data.json`, `cells/`, "
            "`summary.csv`). [paper] marks the paper's (Xie, Syu, Lee, arXiv 2409.00096) claims or settings, [D] "
            "fedft's own choices.", "",
            f"Setting [D]: SmolLM2-135M-Instruct (the only causal LM offline; already instruction-tuned) under a "
            f"plain template it never saw (`Input:\\n{{prompt}}\\n\\nOutput:\\n`, then the response and EOS). "
            f"Conditions: `base` (no training), `non_instructional` (SFT on BBC half → the model's own greedy "
            f"continuation), `instruction` (SFT on English chatterbot pairs, equal training tokens). LoRA r 16 / "
            f"alpha 32 / dropout 0.05 on q, v; AdamW lr {opts.lr}, constant; batch {opts.batch_size}; "
            f"{opts.epochs} epoch; max length {opts.max_length}. Evaluation: {opts.suite_n} rule-checked "
            f"instructions (`fedft.instructions`, seed 0), greedy, at most {opts.max_new_tokens} tokens, stopping "
            f"at EOS or {STOP[0]!r}; response loss on {opts.heldout} held-out chatterbot pairs. {seeds} seed(s) (LoRA "
            "initialisation, data order); nothing tuned, each number measured once.", "", ref, "",
            WEAK.format(pairs=pairs, n=opts.suite_n, step=1 / max(opts.suite_n, 1), seeds=seeds), "",
            f"Verdict rule [D]: {RULE}; against `base`, the one-sample interval of (cell - base) (module "
            "docstring).", ""]


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    """The markdown report of the cells under ``out`` (and ``summary.csv`` there unless not
    ``summary_csv``: check_reports.py's ``_rebuilt`` calls it so)."""
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    by = load(out)
    first = next((r for rs in by.values() for r in rs), None)
    opts = Options(**first["options"]) if first else Options(out=str(out))
    pairs = by[NI][0]["train_examples"] if by.get(NI) else "?"
    seeds = len({r["seed"] for c in (NI, IF) for r in by.get(c, [])})
    differs = DIFFERS.format(pairs=pairs, tt=opts.teacher_tokens, n=opts.suite_n, held=opts.heldout, seeds=seeds)
    lines = [*_header(out, opts, by, pairs, seeds), "## Conditions", "", *table(by, [c for c in CONDITIONS if c in by], METRICS), "",
             "## Follow rate per instruction kind", "", "Mean over the seeds:", "", *kinds_table(by), "",
             "## Data", "", *data_lines(out), "", "## Answers (seed 0; ✓ = the rule check passes)", "",
             *answers_table(by), "", "## Verdicts", "", *verdict_cards(by, differs)]
    return save_report(report, lines, out, (lambda o: write_summary(o, by)) if summary_csv else None)
