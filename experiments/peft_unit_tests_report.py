"""The report of the PEFT unit-test study (experiments/peft_unit_tests.py): every metric's mean
and 95 % t-interval over seeds per method (``summary.csv``) and one verdict card per paper claim,
each decided by the rule written on it from the cell JSONs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peft_unit_tests import FORGET_N, LR, METHODS, MIN_RESPONSE, MUTANT_SEED, N_MUTANTS, PEFT, Options
from study_cells import fmt_interval as _fmt
from study_cells import interval

METRICS = [  # key, label, format
    ("pass_rate", "pass rate (canonical)", ".3f"), ("mutation_score", "mutation score", ".3f"),
    ("validity", "validity", ".3f"), ("parse_rate", "parses as generated", ".3f"), ("bleu", "BLEU", ".1f"),
    ("test_loss", "test response loss", ".3f"), ("stdlib_loss", "stdlib loss", ".4f"),
    ("stdlib_change", "stdlib loss change vs base", "+.4f"), ("stdlib_ppl", "stdlib perplexity", ".3f"),
    ("train_loss", "train loss", ".3f"), ("trainable_params", "trainable params", ",.0f"),
    ("total_params", "total params", ",.0f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("train_s", "train s", ".0f"), ("s_per_step", "s / step", ".2f"), ("eval_s", "eval s", ".0f"),
    ("gen_tok_s", "generation tok/s", ".1f"),
]
DIFFERENCES = ("135M model (SmolLM2-135M-Instruct) instead of 1B-15B code models; Python HumanEval instead of "
               "Java Methods2Test / HumanEval-X; {train} training problems, {epochs} epoch(s); CPU, bf16 compute; "
               "learning rates not tuned")


def load_cells(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Cell records by method (seed order), with ``stdlib_change`` against the base cell."""
    by: dict[str, list[dict[str, Any]]] = {}
    for m in METHODS:
        recs = sorted((json.loads(f.read_text()) for f in out.glob(f"{m}_seed*.json")), key=lambda r: r["seed"])
        if recs:
            by[m] = recs
    base = by.get("base", [{}])[0].get("stdlib_loss")
    for recs in by.values():
        for r in recs:
            r["stdlib_change"] = None if base is None else r["stdlib_loss"] - base
    return by


def _iv(by: dict[str, list[dict[str, Any]]], method: str, key: str) -> tuple[int, float, float, float]:
    return interval([r.get(key) for r in by.get(method, [])])


def _compare(a: tuple, b: tuple) -> str:
    """"below", "above" or "overlap" of interval a against interval b ("unknown" for n < 2)."""
    if math.isnan(a[2]) or math.isnan(b[2]):
        return "unknown"
    return "below" if a[3] < b[2] else "above" if a[2] > b[3] else "overlap"


def _gaps(by: dict, method: str, key: str) -> tuple[int, float, float, float]:
    """Interval of |method - full FT| per seed (seeds pair up: the same data order)."""
    full = {r["seed"]: r.get(key) for r in by.get("full_ft", [])}
    return interval([abs(r[key] - full[r["seed"]]) for r in by.get(method, [])
                     if r.get(key) is not None and full.get(r["seed"]) is not None])


def _card(claim: str, rule: str, numbers: str, verdict: str) -> dict[str, str]:
    return {"claim": claim, "rule": rule, "numbers": numbers, "verdict": verdict}


#: [D] "comparable": a PEFT method's paired gap to full FT (same seed) may be at most this much
#: worse, in pass rate and in mutation score (absolute, on a 0-1 scale)
MARGIN = 0.10


def _paired(by: dict, method: str, key: str) -> tuple[int, float, float, float]:
    """Interval of method - full FT per seed (seeds pair up: the same data order and draws)."""
    full = {r["seed"]: r.get(key) for r in by.get("full_ft", [])}
    return interval([r[key] - full[r["seed"]] for r in by.get(method, [])
                     if r.get(key) is not None and full.get(r["seed"]) is not None])


def _comparable(by: dict, m: str) -> dict[str, str]:
    keys = ("pass_rate", "mutation_score")
    gaps = [_paired(by, m, k) for k in keys]
    floor = max(_iv(by, m, "pass_rate")[1], _iv(by, "full_ft", "pass_rate")[1]) == 0
    if floor or any(g[0] < 2 or math.isnan(g[2]) for g in gaps):
        v = "inconclusive"
    elif any(g[3] < -MARGIN for g in gaps):
        v = "not reproduced"
    else:
        v = "reproduced" if all(g[2] >= -MARGIN for g in gaps) else "inconclusive"
    return _card(f"{m} performs comparably to full fine-tuning",
                 f"per seed, {m} minus full FT at the same seed; the 95 % interval of that gap, for pass rate and "
                 f"for mutation score, lies above -{MARGIN:g} ([D] margin): reproduced; either interval lies below "
                 f"-{MARGIN:g}: not reproduced; otherwise, with fewer than 2 paired seeds, or every pass rate 0: "
                 "inconclusive", "; ".join(f"{k} {m} {_fmt(_iv(by, m, k), '.3f')} vs full FT "
                                            f"{_fmt(_iv(by, 'full_ft', k), '.3f')}, paired gap "
                                            f"{_fmt(g, '+.3f')}" for k, g in zip(keys, gaps, strict=True)), v)


def _cheapest(by: dict) -> dict[str, str]:
    trained = ("full_ft", *PEFT)
    params = {m: _iv(by, m, "trainable_params")[1] for m in trained}
    mem = [_compare(_iv(by, "prompt_tuning", "peak_rss_mb"), _iv(by, m, "peak_rss_mb")) for m in trained[:-1]]
    fewest = all(params["prompt_tuning"] < p for m, p in params.items() if m != "prompt_tuning")
    v = ("inconclusive" if any(math.isnan(p) for p in params.values()) else "not reproduced"
         if not fewest or "above" in mem else "reproduced" if all(c == "below" for c in mem) else "inconclusive")
    return _card("prompt tuning is the cheapest method",
                 "prompt tuning has the fewest trainable parameters and its peak-RSS interval lies below every other "
                 "trained method's: reproduced; more parameters, or an interval above another's: not reproduced; "
                 "otherwise (overlap, fewer than 2 seeds) inconclusive", "; ".join(
                     f"{m} {_fmt(_iv(by, m, 'trainable_params'), ',.0f')} trainable parameters, peak RSS "
                     f"{_fmt(_iv(by, m, 'peak_rss_mb'), '.0f')} MB" for m in trained), v)


def _closest(by: dict) -> dict[str, str]:
    gaps = {m: _gaps(by, m, "pass_rate") for m in PEFT}
    cmp = [_compare(gaps["lora"], gaps[m]) for m in ("ia3", "prompt_tuning")]
    v = "reproduced" if all(c == "below" for c in cmp) else "not reproduced" if "above" in cmp else "inconclusive"
    return _card("LoRA comes closest to full fine-tuning",
                 "per seed, |pass rate - full FT's pass rate at that seed|; LoRA's interval of that gap lies below "
                 "both other PEFT methods': reproduced; above either: not reproduced; otherwise inconclusive",
                 "; ".join(f"{m} gap {_fmt(g, '.3f')}" for m, g in gaps.items()), v)


def _forgets_little(by: dict) -> dict[str, str]:
    ia3, full = _iv(by, "ia3", "stdlib_change"), _iv(by, "full_ft", "stdlib_change")
    v = {"below": "reproduced", "above": "not reproduced"}.get(_compare(ia3, full), "inconclusive")
    return _card("(IA)3 forgets little (its stdlib loss rises less than full fine-tuning's)",
                 "the interval of the stdlib-loss change against the base model lies below full FT's: reproduced; "
                 "above: not reproduced; overlap, or fewer than 2 seeds: inconclusive",
                 f"ia3 {_fmt(ia3, '+.4f')} vs full FT {_fmt(full, '+.4f')} nats per token", v)


def verdicts(by: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """One card per paper claim, each decided by its stated rule."""
    return [*(_comparable(by, m) for m in PEFT), _cheapest(by), _closest(by), _forgets_little(by)]


def write_report(out: Path, report: Path, summary_csv: bool = True) -> None:
    """``out``/summary.csv (every metric's interval per method) and the markdown report."""
    by = load_cells(out)
    rows = [(m, k, *_iv(by, m, k)) for m in METHODS if m in by for k, _, _ in METRICS]
    out.mkdir(parents=True, exist_ok=True)
    if summary_csv:
            (out / "summary.csv").write_text("method,metric,n,mean,ci_low,ci_high\n" + "".join(
            f"{m},{k},{n},{mean:.6g},{lo:.6g},{hi:.6g}\n" for m, k, n, mean, lo, hi in rows))
    recs = [r for rs in by.values() for r in rs]
    opts = {k: v for k, v in (recs[0]["options"] if recs else asdict(Options())).items() if k != "out"}
    differs = DIFFERENCES.format(train=recs[0]["train_examples"] if recs else "?", epochs=opts["epochs"])
    cmd = ".venv/bin/python experiments/peft_unit_tests.py --jobs 2" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in opts.items() if k != "threads" and v != getattr(Options(), k))
    lines = ["# PEFT for unit-test generation (Storhaug & Li, arXiv 2411.02462) on SmolLM2-135M", "",
             "Written by `experiments/peft_unit_tests.py` from the cell JSONs: means over seeds with 95 % "
             "t-intervals `[low, high]` (n - 1 degrees of freedom; none for one seed).", ""]
    if len({json.dumps({k: v for k, v in r["options"].items() if k != "out"}, sort_keys=True) for r in recs}) > 1:
        lines += ["**Warning: the cells were run with different options** (see each JSON's `options`).", ""]
    lines += _sizes(recs, opts) + _tables(by) + ["## Claims", ""]
    for c in verdicts(by):
        lines += [f"### {c['claim']} [paper]", "", f"- Our setting differs: {differs}.", f"- Rule: {c['rule']}.",
                  f"- Numbers: {c['numbers']}.", f"- **Verdict: {c['verdict']}.**", f"- Command: `{cmd}`", ""]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))


def _sizes(recs: list[dict[str, Any]], opts: dict[str, Any]) -> list[str]:
    wall = sum(r["train_s"] + r["eval_s"] for r in recs) / 60
    n_train, n_test = (recs[0]["train_examples"], recs[0]["test_problems"]) if recs else ("?", "?")
    return ["## Sizes chosen and why", "",
            f"Aim: the whole study (13 cells) in about 45 minutes on a 2-core CPU. So [D]: the fixed humaneval-tests "
            f"train split ({n_train} problems) for training and its test split ({n_test}) for evaluation; "
            f"{opts['epochs']} epoch(s) at batch {opts['batch_size']}; `data.max_length={opts['max_length']}` "
            f"(a longer reference test is cut at whole lines, keeping the prompt whole when it leaves "
            f"{MIN_RESPONSE} tokens); greedy decoding of {opts['max_new_tokens']} new tokens, {opts['gen_batch']} "
            f"prompts per batch; forgetting on {FORGET_N} held-out stdlib doc2func examples; {N_MUTANTS} mutants "
            f"per problem (seed {MUTANT_SEED}), those that pass HumanEval's own tests left out as equivalent-looking. "
            f"[paper]: LoRA r = 16 on q, v; (IA)3 on k, v, down; 20 virtual tokens. [D]: LoRA alpha 32, dropout "
            f"0.05; AdamW at constant learning rates {', '.join(f'{m} {lr:g}' for m, lr in LR.items())}, not tuned "
            f"here. These {len(recs)} cells took {wall:.1f} minutes of training and evaluation, summed over cells; "
            f"they ran two at a time (`--jobs 2`, one torch thread each), so the wall time was about half that and "
            f"each cell's seconds are those of a shared machine. Peak RSS is each cell's whole process (model, "
            f"optimizer, activations, and evaluation), not training alone.", ""]


def _tables(by: dict) -> list[str]:
    out = []
    for title, keys in (("Quality", METRICS[:10]), ("Cost", METRICS[10:])):
        out += [f"## {title}", "", "| method | seeds | " + " | ".join(label for _, label, _ in keys) + " |",
                "|---|---|" + "---|" * len(keys)]
        out += [f"| {m} | {len(by[m])} | " + " | ".join(_fmt(_iv(by, m, k), f) for k, _, f in keys) + " |"
                for m in METHODS if m in by]
        out.append("")
    return out


