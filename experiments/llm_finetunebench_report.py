"""The report of experiments/llm_finetunebench.py: per condition (base, full, lora, fed_lora) the
accuracy of every question type (mean and 95 % t-interval over seeds) beside its majority-rate
baseline, the update outcomes, example answers, and a verdict card per claim. Writes
experiments/reports/llm_decoding_finetunebench.md for the default output directory (else
``<out>/report.md``) and ``<out>/summary.csv``, from the cell JSONs alone."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from llm_finetunebench import CONDITIONS, RESULTS, Options
from study_cells import ROOT, interval, load_cells
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_decoding_finetunebench.md"
COMMAND = ".venv/bin/python experiments/llm_finetunebench.py --threads 1"
TRAINED = ("full", "lora", "fed_lora")
NEAR = 0.15  # [D] "near the majority rate": accuracy - majority below this margin
# metric -> label; each metric's majority baseline is ``<metric>_majority`` in the cells
TYPES = {"new_memorization": "new knowledge: memorisation (training question)",
         "new_rephrased": "new knowledge: rephrased question",
         "new_secondary": "new knowledge: secondary yes/no (one inference)",
         "people_comparison": "new knowledge: comparison yes/no (two people)",
         "people_memorization": "people: memorisation", "people_rephrased": "people: rephrased",
         "people_secondary": "people: secondary yes/no", "news_memorization": "news: memorisation",
         "news_rephrased": "news: rephrased", "news_secondary": "news: secondary yes/no",
         "update_memorization": "updates: memorisation (new-answer rate)",
         "update_rephrased": "updates: rephrased, capitals only (new-answer rate)"}
EXTRA = {"new_secondary_generated": "secondary yes/no, parsed greedy completion (not forced)",
         "people_comparison_generated": "comparison yes/no, parsed greedy completion (not forced)",
         "new_secondary_unparsed": "secondary: completion says neither yes nor no", "people_comparison_unparsed":
         "comparison: completion says neither yes nor no", "update_memorization_old": "updates: memorisation, old-answer rate",
         "update_memorization_other": "updates: memorisation, other", "update_rephrased_old":
         "updates: rephrased, old-answer rate", "update_rephrased_other": "updates: rephrased, other",
         "train_loss": "final training loss", "train_s": "training s", "eval_s": "evaluation s"}
RULE = ("per seed the difference of two rates of the same cell (or of the same metric in two cells of one "
        "seed: same facts); its 95 % t-interval over the seeds decides: wholly on the claimed side of 0 → "
        "*reproduced in direction* (the paper's models and magnitudes differ, so never plain *reproduced*), "
        "wholly on the other side → *not reproduced*, crossing 0 → *inconclusive*. \"Near the majority rate\": "
        f"the interval of accuracy − majority rate lies below +{NEAR} [D] → reproduced in direction; wholly "
        f"above +{NEAR} → not reproduced; else inconclusive")


def load(out: Path) -> dict[str, list[dict[str, Any]]]:
    def lift(rec: dict[str, Any]) -> None:
        for key in ("new_rephrased", "new_secondary", "people_comparison"):  # accuracy above the majority rate
            if rec.get(key) is not None and rec.get(f"{key}_majority") is not None:
                rec[f"{key}_gain"] = rec[key] - rec[f"{key}_majority"]

    return load_cells(out / "cells", lift)


def _iv(recs: list[dict[str, Any]], key: str) -> tuple[int, float, float, float]:
    return interval([r.get(key) for r in recs])


def within(recs: list[dict[str, Any]], a: str, b: str) -> tuple[int, float, float, float]:
    """Interval over seeds of a - b in the same cell."""
    return interval([r[a] - r[b] for r in recs if r.get(a) is not None and r.get(b) is not None])


def across(by: dict, ca: str, cb: str, key: str) -> tuple[int, float, float, float]:
    """Interval over seeds of key(ca) - key(cb), paired by seed."""
    other = {r["seed"]: r.get(key) for r in by.get(cb, [])}
    return interval([r[key] - other[r["seed"]] for r in by.get(ca, [])
                     if r.get(key) is not None and other.get(r["seed"]) is not None])


def direction(iv: tuple[int, float, float, float], positive: bool = True) -> str:
    n, _, lo, hi = iv
    if n < 2 or math.isnan(lo):
        return "inconclusive"
    if (lo > 0) if positive else (hi < 0):
        return "reproduced in direction"
    if (hi < 0) if positive else (lo > 0):
        return "not reproduced"
    return "inconclusive"


def near(iv: tuple[int, float, float, float]) -> str:
    n, _, lo, hi = iv
    if n < 2 or math.isnan(lo):
        return "inconclusive"
    return "reproduced in direction" if hi < NEAR else "not reproduced" if lo > NEAR else "inconclusive"


def combine(verdicts: list[str]) -> str:
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "reproduced in direction" if verdicts and all(v == "reproduced in direction" for v in verdicts) \
        else "inconclusive"


def table(by: dict) -> list[str]:
    conds = [c for c in CONDITIONS if c in by]
    rows = [f"| question type | majority rate | {' | '.join(conds)} |", "|---|---|" + "---|" * len(conds)]
    for key, label in TYPES.items():
        base = [r.get(f"{key}_majority") for rs in by.values() for r in rs]
        rows.append(f"| {label} | {fmt(interval(base), '.2f')} | "
                    + " | ".join(fmt(_iv(by[c], key), ".2f") for c in conds) + " |")
    for key, label in EXTRA.items():
        f = ".0f" if key.endswith("_s") else ".2f" if "loss" not in key else ".3f"
        rows.append(f"| {label} | — | " + " | ".join(fmt(_iv(by[c], key), f) for c in conds) + " |")
    return rows


def card(claim: str, differs: str, numbers: str, verdict: str) -> list[str]:
    return [f"**Claim.** {claim}", "", f"**How our setting differs.** {differs}", "",
            f"**Numbers** (95 % t-interval over seeds). {numbers}", "", f"**Verdict: {verdict}.**", "",
            f"Command: `{COMMAND}`", ""]


def _parts(by: dict, pairs: list[tuple[str, str]], judge: Any) -> tuple[str, str]:
    """Numbers and combined verdict of within-cell differences a - b for every trained condition."""
    texts, verdicts = [], []
    for c in [c for c in TRAINED if c in by]:
        for a, b in pairs:
            iv = within(by[c], a, b)
            verdicts.append(judge(iv))
            texts.append(f"{c}: {a} − {b} {fmt(iv, '+.2f')} ({verdicts[-1]})")
    return "; ".join(texts) + ".", combine(verdicts)


def verdict_cards(by: dict, differs: str) -> list[str]:
    out: list[str] = []
    numbers, verdict = _parts(by, [("new_memorization", "new_rephrased")], direction)
    out += card("Memorisation ≫ generalisation: the training question is answered far more often than a "
                "rephrased question about the same fact [paper: people-rephrased 0.19–0.89 vs ≈ 0.91–1.00 "
                "original for the OpenAI models]", differs, numbers, verdict)
    gain, v_gain = _parts(by, [("new_rephrased_gain", "new_secondary_gain"),
                               ("new_rephrased_gain", "people_comparison_gain")], direction)
    numbers, verdict = _parts(by, [("new_secondary", "new_secondary_majority"),
                                   ("people_comparison", "people_comparison_majority")], near)
    versus_base = "; ".join(f"{c} − base, {k}: {fmt(across(by, c, 'base', k), '+.2f')}"
                            for c in TRAINED if c in by for k in ("new_secondary", "people_comparison"))
    out += card("Rephrased ≫ secondary ≈ comparison ≈ majority rate: what fine-tuning adds above the majority "
                "rate is far larger for rephrased questions than for secondary (one-inference) and comparison "
                "yes/no questions, which stay near the majority rate [paper: people-rephrased 0.19–0.89; "
                "secondary 0.45–0.61 and comparison 0.28–0.44, near the majority rate]", differs,
                f"Above-majority gains (accuracy − majority rate), rephrased − secondary / comparison: {gain} "
                f"Secondary / comparison (forced yes/no choice) − majority rate: {numbers} For reference, "
                f"trained − base: {versus_base}.", combine([v_gain, verdict]))
    parts, verdicts = [], []
    for c in [c for c in TRAINED if c in by]:
        for a, b in (("new_memorization", "update_memorization"), ("new_rephrased", "update_rephrased")):
            iv = within(by[c], a, b)
            verdicts.append(direction(iv))
            parts.append(f"{c}: {a} − {b} (new-answer rate) {fmt(iv, '+.2f')} ({verdicts[-1]})")
    out += card("Updating known facts is harder than injecting new ones [paper: 37 % generalisation on new, "
                "19 % on updated knowledge]", differs + " The updates here are one-line facts (capitals, trivia); "
                "their only generalisation question is a close rewording of the capital question (\"Which city "
                "is the capital of …?\"), while the paper's updated-knowledge generalisation uses clinical "
                "vignettes.", "; ".join(parts) + ".", combine(verdicts))
    out += federated_card(by, differs)
    return out


def federated_card(by: dict, differs: str) -> list[str]:
    if "fed_lora" not in by:
        return []
    parts = [f"fed_lora − base, {k}: {fmt(across(by, 'fed_lora', 'base', k), '+.2f')} "
             f"({direction(across(by, 'fed_lora', 'base', k))})"
             for k in ("new_memorization", "new_rephrased", "update_memorization")]
    verdict = combine([direction(across(by, "fed_lora", "base", "new_memorization")),
                       direction(across(by, "fed_lora", "base", "update_memorization"))])
    gaps = [f"fed_lora − lora, {k}: {fmt(across(by, 'fed_lora', 'lora', k), '+.2f')}"
            for k in ("new_memorization", "new_rephrased", "new_secondary", "update_memorization")]
    return card("[D] (fedft's federated variant, not a paper claim) FedAvg still injects facts that only one "
                "client holds: federated LoRA memorises them well above the base model; the gap to central "
                "LoRA with the same gradient steps per QA is measured, not claimed", differs,
                "; ".join(parts) + ". Gap to central: " + "; ".join(gaps) + ".", verdict)


def examples(by: dict, n: int = 6) -> list[str]:
    """Seed 0 answers of one person's questions in each condition."""
    conds = [c for c in CONDITIONS if c in by and by[c][0]["seed"] == 0]
    if not conds:
        return []
    rows0 = by[conds[0]][0]["rows"]
    qids = [r["qid"] for r in rows0 if r["qid"].startswith("p0-")][: 3 * n]
    out = [f"| question | gold | {' | '.join(conds)} |", "|---|---|" + "---|" * len(conds)]
    for qid in qids:
        prompt = next(r.get("prompt", qid) for r in rows0 if r["qid"] == qid).replace(" Answer yes or no.", "")
        cells = []
        for c in conds:
            r = next((x for x in by[c][0]["rows"] if x["qid"] == qid), None)
            cells.append("—" if r is None else f"{r['completion'][:40]!s} ({'✓' if r['verdict'] == 1 else '✗'})"
                         .replace("|", "/").replace("\n", " "))
        gold = next(r["gold"] for r in rows0 if r["qid"] == qid)
        out.append(f"| {prompt} | {gold} | {' | '.join(cells)} |")
    return out


SUMMARY_KEYS = [*TYPES, *EXTRA, "update_known", "train_examples", "train_tokens", "steps"]


def write_summary(out: Path, by: dict) -> None:
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "seed", *SUMMARY_KEYS, *(f"{k}_majority" for k in TYPES)])
        for c in [c for c in CONDITIONS if c in by]:
            for r in by[c]:
                w.writerow([c, r["seed"], *[r.get(k, "") for k in SUMMARY_KEYS],
                            *[r.get(f"{k}_majority", "") for k in TYPES]])


DIFFERS = ("The paper fine-tunes commercial models (gpt-4o-mini, gpt-3.5-turbo, gpt-4o, Gemini 1.5) through "
           "vendor APIs for up to 30 epochs on 25 LLM-written fictional people x 6 attributes, 50 news questions "
           "and 125 medical updates, judged by an LLM. Here: SmolLM2-135M-Instruct on one CPU core; {people} "
           "generated people x 6 attributes + {news} generated news facts + {updates} counterfactual updates of "
           "capitals / chatterbot trivia that the base model answered correctly ({train} training QAs); {epochs} "
           "epochs (full: AdamW lr {lr_full}; LoRA r 16 / alpha 32 on {targets}, lr {lr_lora}; batch "
           "{batch}); fed_lora = {clients} clients, {rounds} rounds x {local} local epochs, in-script FedAvg; "
           "rule-based judge (normalised exact / contained match, first number, yes/no parsing); greedy, "
           "{tokens} new tokens; 3 seeds (facts, updates drawn, initialisation, order); nothing tuned on the "
           "generalisation questions.")


def _header(out: Path, opts: Options, by: dict) -> list[str]:
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    first = next((r for rs in by.values() for r in rs), {})
    b = first.get("bench", {})
    fed = next((r for r in by.get("fed_lora", [])), {})
    return ["# FineTuneBench on SmolLM2-135M: knowledge injection by fine-tuning, central and federated", "",
            f"Generated by `experiments/llm_finetunebench_report.py` from the cell JSONs under `{where}/cells` "
            "(`summary.csv` there). [paper] marks the paper's numbers or settings, [D] fedft's own choices.", "",
            f"Setting [D]: the `finetunebench` evaluation plugin (`fedft/evals/finetunebench.py`, docs/evaluations.md) "
            f"generates per seed {opts.people} fictional people (weight lb, height cm, age, occupation, favourite "
            f"colour, city), {opts.news} fictional September-2024 news facts and {opts.updates} counterfactual "
            f"updates drawn from the {first.get('update_known', '?')} of {first.get('update_candidates', '?')} "
            "candidates (capitals, chatterbot trivia) the base model answered correctly. The model is fine-tuned "
            f"on the {first.get('train_examples', '?')} memorisation QAs only (system prompt "
            f"\"{b.get('system_prompt', '')}\"), then asked every question greedily (at most "
            f"{b.get('max_new_tokens', '?')} new tokens). Conditions: `base` (no training), `full` (full "
            f"fine-tuning), `lora` (central LoRA), `fed_lora` (LoRA, each fact's owner on exactly one of "
            f"{opts.clients} clients, client sizes {(fed.get('partition') or {}).get('sizes', '?')} at seed 0, "
            f"FedAvg of the LoRA tensors over {opts.rounds} rounds x {opts.local_epochs} local epochs, i.e. the "
            "same gradient steps per QA as the central runs; an in-script loop over fedft's `aggregate` and "
            "method payload, not fedft's federated engine: see the script's docstring).", "",
            "Sized for ~30-40 min of one core [D]: fewer people, news items and updates than the paper, "
            f"{opts.epochs} epochs (the paper: up to 30), short answers. The majority rate of a yes/no type is the "
            "share of its commoner answer (balanced by construction: 0.5); of an open type the share of its "
            "commonest gold answer.", "", cost(out, by), "", f"Verdict rule [D]: {RULE}. A card's verdict "
            "combines its parts (any part not reproduced → not reproduced; all reproduced in direction → "
            "reproduced in direction; else inconclusive); each part's own verdict is in brackets.", ""]


def cost(out: Path, by: dict) -> str:
    """The measured cost: training and evaluation seconds of every cell, and the base check."""
    cells = sum((r.get("train_s") or 0) + (r.get("eval_s") or 0) for rs in by.values() for r in rs)
    path = out / "base_check.json"
    check = json.loads(path.read_text()).get("seconds", 0) if path.is_file() else 0
    return (f"Measured cost: {cells / 60:.0f} min of training and evaluation over {sum(map(len, by.values()))} "
            f"cells plus {check:.0f} s for the base model's answers to the update candidates, each process on one "
            "thread of a shared 2-core machine (model loading not counted).")


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    """The markdown report of the cells under ``out`` (and ``summary.csv`` there, unless not ``summary_csv``)."""
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    by = load(out)
    first = next((r for rs in by.values() for r in rs), None)
    opts = Options(**first["options"]) if first else Options(out=str(out))
    differs = DIFFERS.format(people=opts.people, news=opts.news, updates=opts.updates,
                             train=first.get("train_examples", "?") if first else "?", epochs=opts.epochs,
                             lr_full=opts.lr_full, lr_lora=opts.lr_lora, targets=opts.lora_targets,
                             batch=opts.batch_size, clients=opts.clients, rounds=opts.rounds,
                             local=opts.local_epochs, tokens=(first or {}).get("bench", {}).get("max_new_tokens"))
    lines = _header(out, opts, by)
    lines += ["## Accuracy per question type", "", "Mean [95 % t-interval] over seeds; n seeds per condition: "
              + ", ".join(f"{c} {len(by[c])}" for c in CONDITIONS if c in by) + ".", "", *table(by), ""]
    unparsed = ", ".join(f"{c} {fmt(_iv(by[c], 'new_secondary_unparsed'), '.2f')}" for c in TRAINED if c in by)
    lines += ["Yes/no types are scored by the forced choice (`yes_no = \"forced\"`). The greedy completions of "
              f"the fine-tuned models mostly stop saying yes or no: the share of secondary questions whose "
              f"completion says neither is {unparsed} (base "
              f"{fmt(_iv(by.get('base', []), 'new_secondary_unparsed'), '.2f')}); the parsed-completion "
              "accuracies are the `parsed greedy completion` rows.", ""]
    lines += ["## Example answers (seed 0, the first person)", "", *examples(by), ""]
    lines += ["## Verdicts", "", *verdict_cards(by, differs)]
    lines += ["## Not done", "", "The paper's date-changed negative control (answer \"None\"), its medical and "
              "code updates, an LLM judge, and training on paraphrased questions were not run.", ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    if summary_csv:
        out.mkdir(parents=True, exist_ok=True)
        write_summary(out, by)
    print(f"wrote {report}" + (f" and {out / 'summary.csv'}" if summary_csv else ""))
    return report


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(RESULTS), help="the study's output directory")
    write_report(Path(p.parse_args().out))
