"""The report of experiments/llm_data_gotd.py: a table per budget (mean and 95 % t-interval over
seeds), the sources each selector chose, the selectors side by side on one pool (with EL2N), and a
verdict card per claim of GOT-D, decided by llm_data_report's rule (``judge``, ``combine``,
``paired``). Writes experiments/reports/llm_data_gotd.md for the default output directory (else
``<out>/report.md``) and ``<out>/summary.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llm_data_gotd import CONTROLS, RESULTS, SECTION, SELECTORS, Options, budget_list, describe, select
from llm_data_report import RULE, card, combine, judge, paired, table
from study_cells import ROOT, load_cells, save_report
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_data_gotd.md"
COMMAND = ".venv/bin/python experiments/llm_data_gotd.py --jobs 2"
# metric -> (label, format, True when higher is better)
METRICS = {"target_ppl": ("held-out tech perplexity, after pre-fine-tuning", ".3f", False),
           "headline_loss": ("held-out headline loss", ".3f", False),
           "rouge_l": ("held-out headline ROUGE-L", ".3f", True),
           "target_share": (f"selection: bbc/{SECTION} share", ".2f", True),
           "ot_cost": ("selection: OT cost to the target (W2², MiniLM)", ".4f", False),
           "pft_tokens": ("pre-fine-tuning tokens", ".0f", False),
           "pft_loss": ("pre-fine-tuning loss (1 epoch)", ".3f", False),
           "ft_loss": ("headline fine-tuning loss", ".3f", False),
           "train_s": ("training s", ".0f", False), "eval_s": ("evaluation s", ".0f", False)}
DIFFERS = ("The paper pre-fine-tunes GPT-2 / BERT-class models in full on thousands to hundreds of thousands "
           "of samples selected from a pool of millions, embeds with a DistilBERT fine-tuned on the target "
           "task, and evaluates on standard benchmarks (detoxification, domain-specific classification, "
           "GLUE). Here: SmolLM2-135M-Instruct with LoRA (r 16, q and v), a pool of ~1,000-character chunks "
           "(BBC News sections, chatterbot conversations, stdlib docstrings; {pool} candidates), budgets of "
           "{budgets} chunks, one epoch; MiniLM embeddings, not fine-tuned; the target task is BBC tech news "
           "({target} target articles, {heldout} held out), the downstream task headline generation from a "
           "{body}-character body; 3 seeds (LoRA initialisation, data order, random selection); nothing tuned.")


def load(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Cell records by condition, with the selection's numbers lifted to the top level."""
    def lift(rec: dict[str, Any]) -> None:
        sel = rec.get("selection") or {}
        rec["target_share"], rec["ot_cost"] = sel.get("target_share"), sel.get("ot_cost")

    return load_cells(out / "cells", lift)


def budgets_in(by: dict) -> list[int]:
    return sorted({r["budget"] for rs in by.values() for r in rs if r.get("selector") not in CONTROLS})


def conditions(budget: int) -> list[str]:
    return [*CONTROLS, *(f"{s}_b{budget}" for s in SELECTORS)]


def _diffs(by: dict, a: str, b: str, key: str, budgets: list[int]) -> list[tuple[int, float, float, float]]:
    return [paired(by, f"{a}_b{n}", f"{b}_b{n}", key) for n in budgets]


def _diff_text(by: dict, a: str, b: str, key: str, budgets: list[int]) -> str:
    f = "+" + METRICS[key][1]
    return "; ".join(f"B = {n}: {a} - {b} {fmt(d, f)}" for n, d in zip(budgets, _diffs(by, a, b, key, budgets),
                                                                           strict=True))


def _claim(by: dict, a: str, b: str, keys: list[str], budgets: list[int]) -> tuple[str, str]:
    """(numbers, verdict) of "a at least as good as b on every key at every budget"."""
    parts = [judge(_diffs(by, a, b, k, budgets), METRICS[k][2]) for k in keys]
    numbers = " ".join(f"{METRICS[k][0]} ({'higher' if METRICS[k][2] else 'lower'} is better): "
                       f"{_diff_text(by, a, b, k, budgets)} → {v}." for k, v in zip(keys, parts, strict=True))
    return numbers, combine(parts)


def verdict_cards(by: dict, differs: str) -> list[str]:
    budgets = budgets_in(by)
    out: list[str] = []
    for claim, control, keys in (
            ("GOT-D's pre-fine-tuning data lowers the target-domain perplexity more than random data of the "
             "same budget, at every budget [paper: GOT-D's selection moves the model towards the target "
             "distribution]", "random", ["target_ppl"]),
            ("After fine-tuning on the small labelled target set, GOT-D's pre-fine-tuning beats random "
             "pre-fine-tuning on the downstream task (ROUGE-L and headline loss), at every budget [paper: "
             "better downstream performance than random and other selection methods at the same budget]",
             "random", ["rouge_l", "headline_loss"]),
            ("GOT-D is at least as good as selecting the candidates most similar to the target (the mean "
             "target embedding) on target perplexity, ROUGE-L and headline loss, at every budget [paper: "
             "GOT-D beats distribution-matching selection such as DSIR]",
             "target_sim", ["target_ppl", "rouge_l", "headline_loss"])):
        numbers, verdict = _claim(by, "got_d", control, keys, budgets)
        out += card(claim, differs, numbers, verdict, COMMAND)
    return out


def sources_table(by: dict, budgets: list[int]) -> list[str]:
    """Mean chunks per source of each selection (over the seeds; GOT-D and target-sim are the
    same at every seed)."""
    conds = [f"{s}_b{b}" for b in budgets for s in SELECTORS if f"{s}_b{b}" in by]
    groups = sorted({g for c in conds for r in by[c] for g in (r.get("selection") or {}).get("by_group", {})})
    rows = [f"| condition | {' | '.join(groups)} |", "|---|" + "---|" * len(groups)]
    for c in conds:
        counts = [sum((r.get("selection") or {}).get("by_group", {}).get(g, 0) for r in by[c]) / len(by[c])
                  for g in groups]
        rows.append(f"| {c} | {' | '.join(f'{x:.1f}' for x in counts)} |")
    return rows


def read_prepared(out: Path) -> dict[str, Any] | None:
    """The prepared pool, embeddings and EL2N scores (never computed here), or None."""
    import numpy as np

    paths = [out / "gotd_pool.json", out / "embeddings.npz", out / "el2n.json"]
    if not all(p.is_file() for p in paths):
        return None
    with np.load(paths[1]) as z:
        emb = {k: z[k] for k in z.files}
    return {"pool": json.loads(paths[0].read_text()), "emb": emb,
            "el2n": json.loads(paths[2].read_text())["scores"]}


def one_pool_table(data: dict[str, Any], budget: int, opts: Options) -> list[str]:
    """The source mix (share of the selection) of random (seed 0), EL2N, target-sim and GOT-D at
    one budget, next to the pool's, with each selection's OT cost to the target."""
    from collections import Counter

    groups = data["pool"]["groups"]
    names = ["random", "el2n", "target_sim", "got_d"]
    desc = {n: describe(select(n, budget, 0, data, opts)[0], data) for n in names}
    pool = Counter(groups)
    rows = [f"| source | pool ({len(groups)}) | {' | '.join(names)} |", "|---|---|" + "---|" * len(names)]
    for g in sorted(pool):
        rows.append(f"| {g} | {pool[g] / len(groups):.2f} | "
                    + " | ".join(f"{desc[n]['by_group'].get(g, 0) / max(desc[n]['selected'], 1):.2f}" for n in names)
                    + " |")
    rows.append("| OT cost to the target (W2²) | — | " + " | ".join(f"{desc[n]['ot_cost']:.4f}" for n in names) + " |")
    return rows


def write_summary(out: Path, by: dict) -> None:
    keys = list(METRICS)
    groups = sorted({g for rs in by.values() for r in rs for g in (r.get("selection") or {}).get("by_group", {})})
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "selector", "budget", "seed", *keys, *(f"n_{g}" for g in groups)])
        for c in sorted(by):
            for r in by[c]:
                sel = (r.get("selection") or {}).get("by_group", {})
                w.writerow([c, r.get("selector"), r.get("budget"), r["seed"], *[r.get(k, "") for k in keys],
                            *[sel.get(g, 0) for g in groups]])


def _header(out: Path, opts: Options, pool_size: int | str) -> list[str]:
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    return ["# GOT-D on SmolLM2-135M: pre-fine-tuning data selected towards a target", "",
            f"Generated by `experiments/llm_data_gotd_report.py` from the cell JSONs under `{where}/cells` "
            "(`summary.csv` there). [paper] marks a paper's number or setting, [D] fedft's own choice.", "",
            f"Setting [D]: a pool of {pool_size} ~1,000-character chunks [paper] (BBC News, chatterbot, stdlib "
            f"docstrings; at most {opts.per_source or 'all'} per source); target = {opts.target_n} BBC {SECTION} "
            f"articles, held out = {opts.heldout_n} others; budgets {opts.budgets} chunks; MiniLM embeddings; "
            f"GOT-D eps {opts.reg} relative to the largest cost. Model: LoRA r 16 / alpha 32 / dropout 0.05 on q, "
            f"v; AdamW lr {opts.lr}, constant; batch {opts.batch_size}; max length {opts.max_length}. "
            f"Pre-fine-tuning: {opts.epochs} epoch of plain-text causal LM on the selected chunks. Downstream: "
            f"{opts.ft_epochs} epoch of SFT on the target articles' (body → headline) pairs, then held-out "
            f"headline loss and ROUGE-L of greedy headlines (at most {opts.max_new_tokens} tokens, first line). "
            "`none` = downstream fine-tuning only, `base` = no training. 3 seeds; nothing tuned, each number is "
            "measured once on the held-out articles.", "", f"Verdict rule [D]: {RULE}.", ""]


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    """The markdown report of the cells under ``out`` (and ``summary.csv`` there)."""
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    by = load(out)
    first = next((r for rs in by.values() for r in rs), None)
    opts = Options(**first["options"]) if first else Options(out=str(out))
    budgets = budgets_in(by) or budget_list(opts)
    differs = DIFFERS.format(pool=first.get("pool_size", "?") if first else "?", budgets=" and ".join(map(str, budgets)),
                             target=opts.target_n, heldout=opts.heldout_n, body=opts.body_chars)
    lines = _header(out, opts, first.get("pool_size", "?") if first else "?")
    for b in budgets:
        lines += [f"## Budget {b}", "", *table(by, [c for c in conditions(b) if c in by], METRICS), ""]
    lines += ["## What each selector chose", "", "Mean chunks per source over the seeds:", "",
              *sources_table(by, budgets), ""]
    data = read_prepared(out)
    if data is not None and budgets:
        lines += [f"### Selectors on one pool (budget {max(budgets)})", "",
                  "Share of each source in the selection; random with seed 0; EL2N = the starting model's "
                  f"hardest chunks (highest EL2N over their first {opts.el2n_tokens} tokens; not trained on).", "",
                  *one_pool_table(data, max(budgets), opts), ""]
    lines += ["## Verdicts", "", *verdict_cards(by, differs)]
    return save_report(report, lines, out, (lambda o: write_summary(o, by)) if summary_csv else None)
