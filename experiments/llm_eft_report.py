"""The report of experiments/llm_eft.py: knowledge and format of the four plain models, EFT
up-scaling at three lams and down-scaling (mean and 95 % t-interval over seeds), the knowledge gap
between the sizes, the cost of EFT and speculative EFT, and a verdict card per claim, decided by
:data:`RULE` (an interval that crosses 0 is inconclusive; ``paired`` and ``combine`` from
llm_data_report). Writes
experiments/reports/llm_decoding_eft.md for the default output directory (else ``<out>/report.md``)
and ``<out>/summary.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llm_data_report import card, combine, paired, table
from llm_eft import CONDITIONS, LAMS, RESULTS, Options
from study_cells import ROOT, interval, save_report
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_decoding_eft.md"
COMMAND = ".venv/bin/python experiments/llm_eft.py --threads 1"
METRICS = {"knowledge": ("knowledge: capital in the answer, all held-out countries", ".3f", True),
           "gap_knowledge": ("knowledge on the gap (large base right, small base wrong)", ".3f", True),
           "format": ("format: the answer is \"Answer: <X>.\"", ".3f", True)}
TIMING = ("large_base", "small_ft", "eft_up", "eft_up_speculative")
TIMING_METRICS = {"tokens_per_s": ("tokens/s (batch 1, sampled)", ".1f", True),
                  "acceptance_rate": ("draft acceptance rate", ".2f", True),
                  "knowledge": ("knowledge (sampled)", ".2f", True), "format": ("format (sampled)", ".2f", True),
                  "tokens": ("tokens generated", ".0f", True)}
RULE = ("per claim, the paired difference (same seed: same fact split and fine-tuning) has a 95 % t-interval over "
        "the seeds; a part is *reproduced in direction* when its interval lies wholly on the claimed side of 0, *not "
        "reproduced* when it lies wholly on the other side, and *inconclusive* when it crosses 0; a claim is "
        "reproduced in direction when every part is, not reproduced when any part is not")


def judge(d: tuple[int, float, float, float], higher: bool) -> str:
    """The verdict of :data:`RULE` for one paired difference (n, mean, low, high)."""
    n, _, lo, hi = d
    if n < 2 or lo != lo:  # nan bounds: fewer than 2 seeds
        return "inconclusive"
    if (lo > 0) if higher else (hi < 0):
        return "reproduced in direction"
    if (hi < 0) if higher else (lo > 0):
        return "not reproduced"
    return "inconclusive"


DIFFERS = ("The paper up-scales Llama-1/2 and Falcon (7B fine-tuned + 65-180B base) and judges factuality and "
           "helpfulness with GPT-4 on open dialogue prompts. Here the two sizes are SmolLM2-135M-Instruct (the "
           "large base, already instruction-tuned) and a 4-block model cut from it and healed for ~{steps} steps "
           "(held-out perplexity {ppl_small:.0f} vs {ppl_large:.0f}; both share embeddings and tokenizer); the "
           "'fine-tuning' is a LoRA (r 16, q, v, {epochs} epochs) teaching one answer format on ~{pairs} trivia and "
           "capital pairs; knowledge = naming the capital of a held-out country (string judge), behaviour = the "
           "exact format; greedy decoding; ~{n_test} held-out questions, 3 seeds (fact split + fine-tuning seed).")


def load(out: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Per-condition records (seed, knowledge, gap_knowledge, format) and the raw cells."""
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("seed*.json"))]
    by: dict[str, list[dict[str, Any]]] = {}
    for cell in sorted(cells, key=lambda c: c["seed"]):
        res = cell["results"]
        gap = [i for i, (big, small) in enumerate(zip(res["large_base"]["correct"], res["small_base"]["correct"],
                                                          strict=True)) if big and not small]
        for name in CONDITIONS:
            r = res[name]
            by.setdefault(name, []).append({
                "seed": cell["seed"], "knowledge": r["knowledge"], "format": r["format"],
                "gap_knowledge": sum(r["correct"][i] for i in gap) / len(gap) if gap else None,
                "gap_n": len(gap), "n": len(r["correct"]), "seconds": r["seconds"]})
        for name, t in cell.get("timing", {}).items():
            by.setdefault(f"t:{name}", []).append({"seed": cell["seed"], **{k: t.get(k) for k in TIMING_METRICS}})
    return by, cells


def _claim(by: dict, parts: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(numbers, verdict) of "a better than b on key" for every (a, b, key)."""
    verdicts, texts = [], []
    for a, b, key in parts:
        metrics = METRICS if key in METRICS else TIMING_METRICS
        label, f, higher = metrics[key]
        d = paired(by, a, b, key)
        verdicts.append(judge(d, higher))
        texts.append(f"{label}: {a.removeprefix('t:')} − {b.removeprefix('t:')} {fmt(d, '+' + f)} → {verdicts[-1]}.")
    return " ".join(texts), combine(verdicts)


CLAIMS = (
    ("Up-scaling keeps more of the large model's knowledge than the small fine-tuned model while gaining its "
     "behaviour: EFT (large base + (small ft − small base), lam 1) answers more of the held-out capitals than "
     "small-ft, and follows the fine-tuned format more often than the large base [paper: up-scaling improves "
     "factuality over the small fine-tuned model and helpfulness over the large base]",
     [("up_l1", "small_ft", "gap_knowledge"), ("up_l1", "small_ft", "knowledge"), ("up_l1", "large_base", "format")]),
    ("lam trades behaviour for knowledge: lam 1.5 follows the format more often than lam 0.5, and lam 0.5 "
     "keeps more knowledge than lam 1.5 [paper: lam rescales the behaviour delta; the direction of the "
     "trade-off is our reading, verify]",
     [("up_l1.5", "up_l0.5", "format"), ("up_l0.5", "up_l1.5", "knowledge")]),
    ("Knowledge follows the pre-training scale: up-scaling (large pre-training, small fine-tuning) answers more "
     "capitals than down-scaling (small pre-training, large fine-tuning) [paper: scaling pre-training mostly "
     "improves factuality]", [("up_l1", "down", "knowledge")]),
    ("Speculative decoding makes up-scaling faster: drafting with the small fine-tuned model and verifying "
     "with the EFT distribution gives more tokens/s than plain EFT sampling [paper: ~2.5x for Llama-2-7B-chat "
     "up-scaled with the 70B base, verify]", [("t:eft_up_speculative", "t:eft_up", "tokens_per_s")]),
)


def knowledge_table(cells: list[dict[str, Any]]) -> list[str]:
    """Per seed: held-out facts each plain model knows, and the gap (large base only)."""
    rows = ["| seed | held-out | small base | small ft | large base | large ft | gap (large base ✓, small base ✗) |",
            "|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: c["seed"]):
        res = c["results"]
        k = {n: sum(res[n]["correct"]) for n in ("small_base", "small_ft", "large_base", "large_ft")}
        gap = sum(1 for a, b in zip(res["large_base"]["correct"], res["small_base"]["correct"], strict=True)
                  if a and not b)
        rows.append(f"| {c['seed']} | {len(res['small_base']['correct'])} | {k['small_base']} | {k['small_ft']} | "
                    f"{k['large_base']} | {k['large_ft']} | {gap} |")
    return rows


def samples(cells: list[dict[str, Any]], n: int = 4) -> list[str]:
    """The first held-out questions of seed 0 and every condition's answer."""
    if not cells:
        return []
    c = min(cells, key=lambda c: c["seed"])
    rows = ["| country | " + " | ".join(CONDITIONS) + " |", "|---|" + "---|" * len(CONDITIONS)]
    for i, country in enumerate(c["test_countries"][:n]):
        texts = [c["results"][k]["texts"][i].replace("|", "\\|").replace("\n", " ")[:60] for k in CONDITIONS]
        rows.append(f"| {country} | " + " | ".join(texts) + " |")
    return rows


def timing_table(by: dict) -> list[str]:
    conds = [f"t:{n}" for n in TIMING if f"t:{n}" in by]
    rows = ["| metric | " + " | ".join(c.removeprefix("t:") for c in conds) + " |", "|---|" + "---|" * len(conds)]
    for key, (label, f, _) in TIMING_METRICS.items():
        rows.append(f"| {label} | " + " | ".join(fmt(interval([r.get(key) for r in by[c]]), f) for c in conds) + " |")
    ratio = [s["tokens_per_s"] / p["tokens_per_s"] for s, p in zip(by.get("t:eft_up_speculative", []),
                                                                    by.get("t:eft_up", []), strict=False)
             if s.get("tokens_per_s") and p.get("tokens_per_s")]
    over = [e["tokens_per_s"] / b["tokens_per_s"] for e, b in zip(by.get("t:eft_up", []), by.get("t:large_base", []),
                                                                   strict=False)
            if e.get("tokens_per_s") and b.get("tokens_per_s")]
    return [*rows, "", f"Speed-up of speculative over plain EFT: {fmt(interval(ratio), '.2f')}x; plain EFT over "
            f"plain large-base decoding: {fmt(interval(over), '.2f')}x (per-seed ratios)."]


def notes(cells: list[dict[str, Any]], recipe: dict[str, Any] | None) -> list[str]:
    """What the numbers mean and what the run cost, from the cells."""
    if not cells:
        return []
    secs = [c.get("cell_s", 0.0) for c in cells]
    params = cells[0].get("params", {})
    ratio = params.get("large_base", 0) / max(params.get("small_base", 1), 1)
    heal = f" plus the heal's {recipe['train_s'] / 60:.0f} min" if recipe else ""
    return [
        "## Notes", "",
        "- The gap row counts, per seed, the held-out countries the large base names and the small base does "
        "not; the large base scores 1 there by construction, the small base 0.",
        "- The large base is already instruction-tuned (SmolLM2-135M-Instruct); its answers are full sentences "
        "(\"The capital of X is Y.\", or a description of the country), so its format score is 0; large-ft "
        "names more capitals than large-base, perhaps because a short answer leaves less room to drift (not "
        "measured).",
        f"- Speculative EFT samples the same distribution as EFT (exact; χ² tests in tests/test_eft.py): their "
        "sampled knowledge and format differ here only by sampling noise (16 prompts x 3 seeds). Its speed "
        f"depends on the size ratio: the large model has {ratio:.1f}x the small one's parameters (the paper: "
        "~10x), and the shared 49k-token LM head is a large part of the small model's cost; each round runs "
        "gamma + 1 small-model steps and one block pass of the large base and the small reference, so with "
        "the measured acceptance it does not pay on this CPU.",
        f"- Cost: {len(cells)} cells of {min(secs) / 60:.1f}-{max(secs) / 60:.1f} min on one thread "
        f"({sum(secs) / 60:.0f} min in all{heal}); sized down [D]: ~62 questions, 2 LoRA epochs, 16 timing "
        "prompts, answers of at most 16 tokens.", ""]


def write_summary(out: Path, by: dict) -> None:
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "seed", "knowledge", "gap_knowledge", "format", "n", "gap_n", "tokens_per_s",
                    "acceptance_rate"])
        for c in [*CONDITIONS, *(f"t:{n}" for n in TIMING)]:
            for r in by.get(c, []):
                w.writerow([c, r["seed"], *(r.get(k, "") for k in ("knowledge", "gap_knowledge", "format", "n", "gap_n",
                                                                   "tokens_per_s", "acceptance_rate"))])


def _header(out: Path, opts: Options, recipe: dict[str, Any] | None) -> list[str]:
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    heal = "the recipe of the small model was not found (`small_recipe.json`)"
    if recipe:
        p = recipe["heldout_ppl"]
        heal = (f"blocks {recipe['blocks_kept']} of {recipe['source_layers']} kept ({recipe['n_params'] / 1e6:.1f}M "
                f"parameters), healed {recipe['steps']} steps on BBC News + chatterbot (stopped by "
                f"{recipe['stopped']}); held-out perplexity {p['cut_before_healing']:.3g} cut, {p['healed']:.1f} "
                f"healed, {p['full_135m']:.1f} for the full 135M model")
    return ["# EFT up-scaling on SmolLM2: large base + (small fine-tuned − small base)", "",
            f"Generated by `experiments/llm_eft_report.py` from the cell JSONs under `{where}/cells` (`summary.csv` "
            "there). [paper] marks a paper's number or setting, [D] fedft's own choice.", "",
            f"Setting [D]: small = `{opts.small}` ({heal}); large = `{opts.large}` (SmolLM2-135M-Instruct). Both "
            f"fine-tuned the same way: LoRA r 16 / alpha 32 on q, v, AdamW lr {opts.lr}, {opts.epochs} epochs, "
            f"batch {opts.batch_size}, on \"What is the capital of X?\" for half of the countries plus chatterbot's "
            "trivia, every answer as \"Answer: <X>.\". Evaluated on the other half of the countries (greedy, at most "
            f"{opts.max_new_tokens} new tokens, the chat template). EFT [paper]: per token log p = log p_base + lam "
            "(log p_ft − log p_ref), normalised; up = large base with the small pair (lam 0.5, 1, 1.5), down = small "
            "base with the large pair (lam 1). The seed draws the country split and the fine-tuning.", "",
            f"Verdict rule [D]: {RULE}.", ""]


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    """The markdown report of the cells under ``out`` (and ``summary.csv`` there)."""
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    by, cells = load(out)
    opts = Options(**cells[0]["options"]) if cells else Options(out=str(out))
    recipe_path = out / "small_recipe.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else None
    first = cells[0] if cells else {}
    differs = DIFFERS.format(steps=recipe["steps"] if recipe else "?",
                             ppl_small=recipe["heldout_ppl"]["healed"] if recipe else float("nan"),
                             ppl_large=recipe["heldout_ppl"]["full_135m"] if recipe else float("nan"),
                             epochs=opts.epochs, pairs=first.get("training", {}).get("small", {}).get("pairs", "?"),
                             n_test=len(first.get("test_countries", [])) or "?")
    lines = _header(out, opts, recipe)
    lines += ["## Knowledge and format", "", *table(by, list(CONDITIONS), METRICS), "",
              f"`up_l<lam>` = EFT up-scaling at lam ∈ {{{', '.join(f'{x:g}' for x in LAMS)}}}; `down` = down-scaling.",
              "", "### Which held-out facts each plain model knows (greedy)", "", *knowledge_table(cells), "",
              "### Sample answers (seed 0)", "", *samples(cells), "",
              f"## Cost (first {opts.timing_n} held-out questions, one at a time, temperature 1, top-p {opts.top_p}; "
              f"speculative: gamma {opts.gamma}, draft = small ft)", "", *timing_table(by), "", *notes(cells, recipe),
              "## Verdicts", ""]
    for claim, parts in CLAIMS:
        numbers, verdict = _claim(by, parts)
        lines += card(claim, differs, numbers, verdict, COMMAND)
    return save_report(report, lines, out, (lambda o: write_summary(o, by)) if summary_csv else None)
