"""The report of experiments/llm_data.py: tables (mean and 95 % t-interval over seeds), paired
differences against each control, and a verdict card per paper claim, decided by the rules in
:data:`RULE` (experiments/reports/llm_data.md, ``<out>/summary.csv``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llm_data import RESULTS, STUDIES, Options
from study_cells import ROOT, interval, load_cells
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_data.md"
RULE = ("per control, the paired difference (same seed: same LoRA initialisation and data order) has a "
        "95 % t-interval over the seeds; a claim of \"at least as good\" is *reproduced in direction* when no "
        "interval lies on the wrong side of 0 and every mean difference is on the claimed side, *not "
        "reproduced* when some interval lies wholly on the wrong side, and *inconclusive* otherwise")
# metric -> (label, format, True when higher is better)
GRAPE_METRICS = {"accuracy": ("held-out accuracy", ".3f", True),
                 "style_mean_loss": ("held-out loss, mean of the 3 styles", ".3f", False),
                 "test_loss": ("held-out loss, all tokens", ".3f", False),
                 "initial_loss": ("initial loss (chosen set, start model)", ".3f", False),
                 "test_loss_reasoning": ("loss: reasoning", ".3f", False), "test_loss_terse": ("loss: terse", ".3f", False),
                 "test_loss_verbose": ("loss: verbose", ".3f", False), "answer_chars": ("answer length (chars)", ".0f", False),
                 "train_s": ("training s", ".0f", False)}
S3FT_METRICS = {"accuracy": ("held-out accuracy", ".3f", True), "test_loss": ("held-out gold loss", ".3f", False),
                "chatterbot_loss": ("chatterbot loss", ".3f", False), "trivia_f1": ("trivia token F1", ".3f", True),
                "kl_start_to_tuned_bbc": ("KL(start || tuned), BBC", ".4f", False), "train_s": ("training s", ".0f", False)}


def load(out: Path, study: str) -> dict[str, list[dict[str, Any]]]:
    def lift(rec: dict[str, Any]) -> None:
        rec["initial_loss"] = rec.get("selection", {}).get("initial_loss")
        styles = [rec[k] for k in ("test_loss_reasoning", "test_loss_terse", "test_loss_verbose") if k in rec]
        rec["style_mean_loss"] = sum(styles) / len(styles) if len(styles) == 3 else None

    return load_cells(out / study, lift)


def paired(by: dict, a: str, b: str, key: str) -> tuple[int, float, float, float]:
    """Interval of a - b per seed."""
    other = {r["seed"]: r.get(key) for r in by.get(b, [])}
    return interval([r[key] - other[r["seed"]] for r in by.get(a, [])
                     if r.get(key) is not None and other.get(r["seed"]) is not None])


def judge(diffs: list[tuple[int, float, float, float]], higher: bool) -> str:
    """The verdict of :data:`RULE` for paired differences (method - control) of one metric."""
    if not diffs or any(n < 2 for n, *_ in diffs):
        return "inconclusive"
    if any((hi < 0) if higher else (lo > 0) for _, _, lo, hi in diffs):
        return "not reproduced"
    if all((mean >= 0) if higher else (mean <= 0) for _, mean, _, _ in diffs):
        return "reproduced in direction"
    return "inconclusive"


def combine(verdicts: list[str]) -> str:
    """Every part reproduced -> reproduced; any part not -> not; else inconclusive."""
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "reproduced in direction" if all(v == "reproduced in direction" for v in verdicts) else "inconclusive"


def _diff_text(by: dict, method: str, controls: list[str], key: str, f: str) -> str:
    return "; ".join(f"{method} - {c}: {fmt(paired(by, method, c, key), '+' + f)}" for c in controls)


def table(by: dict, conditions: list[str], metrics: dict) -> list[str]:
    rows = [f"| metric | {' | '.join(c for c in conditions if c in by)} |",
            "|---|" + "---|" * len([c for c in conditions if c in by])]
    for key, (label, f, _) in metrics.items():
        cells = [fmt(interval([r.get(key) for r in by[c]]), f) for c in conditions if c in by]
        rows.append(f"| {label} | {' | '.join(cells)} |")
    return rows


def card(claim: str, differs: str, numbers: str, verdict: str, command: str) -> list[str]:
    return [f"**Claim.** {claim}", "", f"**How our setting differs.** {differs}", "",
            f"**Numbers** (paired, 95 % t-interval over seeds). {numbers}", "", f"**Verdict: {verdict}.**", "",
            f"Command: `{command}`", ""]


CONTROLS = {"grape": ["random", "strongest", "longest"], "s3ft": ["sft"]}
COMMAND = ".venv/bin/python experiments/llm_data.py --study {study} --jobs 2"


def grape_cards(by: dict) -> list[str]:
    ctl = [c for c in CONTROLS["grape"] if c in by]
    out = []
    for key, claim in (("accuracy", "GRAPE's chosen responses give held-out accuracy at least that of each control "
                        "(random candidate, always the strongest teacher, the longest) [paper: up to +13.8 % absolute "
                        "over distilling the strongest model]"),
                       ("style_mean_loss", "GRAPE gives held-out loss at most that of each control (the mean over "
                        "the three answer styles of the held-out response loss)")):
        label, f, higher = GRAPE_METRICS[key]
        verdict = judge([paired(by, "grape", c, key) for c in ctl], higher)
        out += card(claim, DIFFERS["grape"], _diff_text(by, "grape", ctl, key, f), verdict, COMMAND.format(study="grape"))
    init = {c: {r["seed"]: r.get("initial_loss") for r in by.get(c, [])} for c in ["grape", *ctl]}
    lowest = all(init["grape"].get(s) is not None and all(v.get(s) is None or init["grape"][s] < v[s] for c, v in init.items()
                                                          if c != "grape") for s in init["grape"])
    numbers = "; ".join(f"{c}: {fmt(interval(list(init[c].values())), '.3f')}" for c in ["grape", *ctl])
    out += card("GRAPE's training set starts from the lowest training loss (by construction of the selection)",
                DIFFERS["grape"] + " Rule: GRAPE's initial loss is below every control's at every seed.",
                numbers, "reproduced in direction" if lowest and init["grape"] else "not reproduced",
                COMMAND.format(study="grape"))
    return out


def s3ft_cards(by: dict) -> list[str]:
    out = []
    label, f, higher = S3FT_METRICS["accuracy"]
    out += card("S3FT's in-domain accuracy is at least SFT's [paper: also better than SFT on the fine-tuning tasks]",
                DIFFERS["s3ft"], _diff_text(by, "s3ft", ["sft"], "accuracy", f),
                judge([paired(by, "s3ft", "sft", "accuracy")], higher), COMMAND.format(study="s3ft"))
    keys = ["chatterbot_loss", "trivia_f1", "kl_start_to_tuned_bbc"]
    parts = [judge([paired(by, "s3ft", "sft", k)], S3FT_METRICS[k][2]) for k in keys]
    numbers = "; ".join(f"{S3FT_METRICS[k][0]}: {_diff_text(by, 's3ft', ['sft'], k, S3FT_METRICS[k][1])} ({v})"
                        for k, v in zip(keys, parts, strict=True))
    out += card("S3FT forgets less than SFT [paper: generalisation drop 2.5 vs 4.4 points]", DIFFERS["s3ft"]
                + " Forgetting is three probes: response loss on held-out chatterbot pairs (lower is better), "
                "trivia token F1 (higher), KL(start || tuned) on BBC News text (lower); the card combines them.",
                numbers, combine(parts), COMMAND.format(study="s3ft"))
    return out


DIFFERS = {
    "grape": ("SmolLM2-135M-Instruct with LoRA (r 16, q and v), not 7-8B models; one epoch on 300 synthetic "
              "one-step word problems instead of UltraInteract / Tulu-3; candidates are three templated styles "
              "plus the model's own judged samples (1 per problem), not responses of several LLMs; 100 test "
              "problems, greedy decoding, numeric judge."),
    "s3ft": ("SmolLM2-135M-Instruct with LoRA (r 16, q and v), not Mistral-7B; one epoch on 300 synthetic word "
             "problems with templated reasoning-style gold answers instead of GSM8K / MBPP / NQ; a numeric judge; "
             "paraphrases by the starting model itself, judged the same way; forgetting probes are small "
             "(64 chatterbot pairs, 37 trivia questions, 24 BBC openings of 128 tokens) instead of MMLU, "
             "TruthfulQA and others."),
}


def _selection_rows(by: dict, study: str) -> list[str]:
    rows = ["| condition | seed | training examples | chosen |", "|---|---|---|---|"]
    for c in STUDIES[study]:
        for r in sorted(by.get(c, []), key=lambda r: r["seed"]):
            sel = r.get("selection", {})
            chosen = sel.get("chosen_sources") or {k: sel[k] for k in ("self", "paraphrase", "gold") if k in sel}
            rows.append(f"| {c} | {r['seed']} | {r['train_examples']} | "
                        f"{', '.join(f'{k} {v}' for k, v in sorted(chosen.items())) or '—'} |")
    return rows


def _prepared(out: Path, study: str) -> list[str]:
    """One paragraph on what was built once with the starting model (seed-independent)."""
    if study == "grape" and (out / "grape_pool.json").is_file():
        p = json.loads((out / "grape_pool.json").read_text())
        n = len({r["prompt"] for r in p["pool"]})
        return [f"Pool: {n} training problems, {len(p['pool'])} candidates: three templated styles each, plus "
                f"{p['own_kept']} of the model's {p['own_drawn']} own sampled answers (temperature 0.7) that the "
                "numeric judge accepted. Scores and own samples were computed once with the starting model.", ""]
    if study == "s3ft" and (out / "s3ft_targets.json").is_file():
        t = json.loads((out / "s3ft_targets.json").read_text())
        r = t["report"]
        return [f"S3FT targets, built once with the starting model in {t['seconds']:.0f} s: the model answered "
                f"{r['self_accuracy']:.1%} of the training problems correctly (its own answer kept: {r['self']}); "
                f"{r['paraphrase']} accepted paraphrases of the gold; {r['gold']} gold answers.", ""]
    return []


def write_summary(out: Path, studies: dict[str, dict]) -> None:
    keys = sorted({k for m in (GRAPE_METRICS, S3FT_METRICS) for k in m})
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "condition", "seed", "train_examples", *keys])
        for study, by in studies.items():
            for c in STUDIES[study]:
                for r in sorted(by.get(c, []), key=lambda r: r["seed"]):
                    w.writerow([study, c, r["seed"], r["train_examples"], *[r.get(k, "") for k in keys]])


OTHER_STUDIES = {"GOT-D": "llm_data_gotd.md", "GeMQuAD": "llm_data_gemquad.md",
                 "Non-instructional fine-tuning": "llm_data_noninstr.md"}


def other_studies(reports: Path) -> list[str]:
    """A table of the claims and verdicts of the data-recipe studies with their own report (read
    from the committed reports under ``reports``; a report not yet written is listed as such)."""
    lines = ["## GOT-D, GeMQuAD and non-instructional fine-tuning", "",
             "Each has its own runner and report; their verdict cards, as those reports state them:", ""]
    for study, name in OTHER_STUDIES.items():
        path = reports / name
        text = path.read_text().splitlines() if path.is_file() else []
        claims = [x.removeprefix("**Claim.** ") for x in text if x.startswith("**Claim.**")]
        verdicts = [x.removeprefix("**Verdict: ").rstrip("*.") for x in text if x.startswith("**Verdict:")]
        for claim, verdict in zip(claims, verdicts, strict=False):
            lines.append(f"- {study}: {claim} **{verdict}** ([{name}]({name}))")
        if not claims:
            lines.append(f"- {study}: not run yet ([{name}]({name}))")
    return [*lines, ""]


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    """The markdown report of every study with cells under ``out``."""
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    studies = {s: load(out, s) for s in STUDIES if (out / s).is_dir()}
    first = next((r for by in studies.values() for rs in by.values() for r in rs), None)
    opts = Options(**first["options"]) if first else Options()
    lines = ["# Data recipes on SmolLM2-135M: GRAPE and S3FT, and the other recipes' verdicts", "",
             "Generated by `experiments/llm_data_report.py` from the cell JSONs under "
             f"`{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}` (`summary.csv` there). "
             "[paper] marks a paper's number or setting, [D] fedft's own choice.", "",
             f"Setting [D]: LoRA r 16 / alpha 32 / dropout 0.05 on q, v; AdamW lr {opts.lr}, constant; batch "
             f"{opts.batch_size}; {opts.epochs} epoch; max length {opts.max_length}; greedy answers of at most "
             f"{opts.max_new_tokens} tokens; {opts.limit_train} training / {opts.limit_test} test problems; bf16 "
             "compute; 3 seeds (initialisation, data order, random choices); `base` = the untrained model. "
             "Nothing was tuned: there is no validation split, and each number is the test split, measured once.",
             "", f"Verdict rule [D]: {RULE}.", ""]
    for study, by in studies.items():
        metrics = GRAPE_METRICS if study == "grape" else S3FT_METRICS
        lines += [f"## {study.upper()}", "", *_prepared(out, study), *table(by, list(STUDIES[study]), metrics), "",
                  "What each cell trained on:", "",
                  *_selection_rows(by, study), "", "### Verdicts", "",
                  *(grape_cards(by) if study == "grape" else s3ft_cards(by))]
    lines += other_studies(report.parent)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    if summary_csv:
        write_summary(out, studies)
        print(f"wrote {report} and {out / 'summary.csv'}")
    return report
