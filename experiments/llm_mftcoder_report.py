"""The report of experiments/llm_mftcoder.py: per-mode tables (mean and 95 % t-interval over seeds),
CoBa's weights over training, the padding / packing benchmark, and a verdict card per claim.
Writes experiments/reports/llm_decoding_mftcoder.md for the default output directory (else
``<out>/report.md``) and ``<out>/summary.csv``, from the cell JSONs alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llm_mftcoder import MODES, RESULTS, TASKS, Options, counts
from study_cells import ROOT, interval, load_cells, save_report
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_decoding_mftcoder.md"
COMMAND = ".venv/bin/python experiments/llm_mftcoder.py --threads 1"
# metric -> (label, format)
METRICS = {**{f"test_loss_{t}": (f"held-out loss: {t}", ".3f") for t in TASKS},
           "worst_task_loss": ("worst task's held-out loss", ".3f"),
           "mean_task_loss": ("mean over tasks of the held-out loss", ".3f"),
           "worst_relative": ("worst task's loss / untrained loss", ".3f"),
           "train_tokens": ("training tokens (real, no padding)", ".0f"), "steps": ("training steps", ".0f"),
           "train_s": ("training s (without CoBa's validation passes)", ".0f"), "observe_s": ("CoBa validation s", ".0f")}
BENCH = {"pad_fraction_padded": ("padding fraction, padded batches", ".3f"),
         "pad_fraction_packed": ("padding fraction, packed rows", ".3f"),
         "tokens_per_s_padded": ("training tokens/s, padded", ".0f"),
         "tokens_per_s_packed": ("training tokens/s, packed", ".0f"),
         "speedup_packed": ("tokens/s packed / padded", ".2f"),
         "loss_gap_first_batch": ("|task loss padded - packed|, one batch (bf16)", ".1e")}
RULE = ("per comparison, the paired difference over seeds (same seed: same LoRA initialisation and the same "
        "batches in the same order) has a 95 % t-interval; *reproduced* when it lies wholly on the claimed side "
        "of 0, *not reproduced* when wholly on the other side, *inconclusive* when it crosses 0")
DIFFERS = ("MFTCoder fine-tunes 7B-34B code models (QLoRA, r 96) on 5+ code tasks of 10^4-10^5 examples each for "
           "thousands of steps and reports pass@1; its paper does not give a per-task table of case1 against "
           "case3 on a worst-task metric. Here: SmolLM2-135M-Instruct with LoRA (r 16, q and v); three real code "
           "tasks of {counts} training examples ({ratio:.0f}x imbalance), every example at most {max_length} tokens; "
           "one epoch = {steps} steps of {bs} examples, packed; the metric is the held-out response loss "
           "({test} items per task), not pass@1; CoBa's warm-up / window / interval are {warm} / {hist} / {every} "
           "steps instead of 100 / 200 / 1 [code]; {seeds} seeds; nothing tuned.")


def load(out: Path) -> dict[str, list[dict[str, Any]]]:
    return load_cells(out / "cells")


def paired(by: dict, a: str, b: str, key: str) -> tuple[int, float, float, float]:
    other = {r["seed"]: r.get(key) for r in by.get(b, [])}
    return interval([r[key] - other[r["seed"]] for r in by.get(a, [])
                     if r.get(key) is not None and other.get(r["seed"]) is not None])


def verdict(diff: tuple[int, float, float, float], lower_is_better: bool) -> str:
    """:data:`RULE` for a difference (method - control)."""
    n, _, lo, hi = diff
    if n < 2:
        return "inconclusive"
    good, bad = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
    return "reproduced" if good else "not reproduced" if bad else "inconclusive"


def table(by: dict, conditions: list[str], metrics: dict) -> list[str]:
    conds = [c for c in conditions if c in by]
    rows = [f"| metric | {' | '.join(conds)} |", "|---|" + "---|" * len(conds)]
    for key, (label, f) in metrics.items():
        rows.append(f"| {label} | {' | '.join(fmt(interval([r.get(key) for r in by[c]]), f) for c in conds)} |")
    return rows


def card(claim: str, differs: str, numbers: str, result: str, command: str) -> list[str]:
    return [f"**Claim.** {claim}", "", f"**How our setting differs.** {differs}", "",
            f"**Numbers** (paired, 95 % t-interval over seeds). {numbers}", "", f"**Verdict: {result}.**", "",
            f"Command: `{command}`", ""]


def worst_task_cards(by: dict, differs: str) -> list[str]:
    out: list[str] = []
    for mode in [m for m in MODES if m != "token" and m in by]:
        d = paired(by, mode, "token", "worst_task_loss")
        extra = "; ".join(f"{label.split(': ')[-1] if ': ' in label else label} {fmt(paired(by, mode, 'token', k), '+.3f')}"
                          for k, (label, _) in METRICS.items() if k.startswith("test_loss_") or k == "mean_task_loss")
        worst = sorted({r["worst_task"] for r in by[mode] + by.get("token", [])})
        token = {r["seed"]: r["worst_task_loss"] for r in by.get("token", [])}
        lower = sum(r["worst_task_loss"] < token[r["seed"]] for r in by[mode] if r["seed"] in token)
        numbers = (f"worst task's held-out loss, {mode} - token: {fmt(d, '+.3f')}, lower in {lower} of {d[0]} seeds "
                   f"(the worst task: {', '.join(worst)}). Per task and mean, {mode} - token: {extra}.")
        claim = (f"The {mode} loss{' (CoBa)' if mode == 'coba' else ''} gives a lower worst-task held-out loss than "
                 "the token mean (MFTCoder case1) at equal training tokens [paper: per-task balancing and "
                 "convergence balancing counter data imbalance across tasks]")
        out += card(claim, differs, numbers, verdict(d, True), COMMAND)
    return out


def packing_card(by: dict) -> list[str]:
    bench = by.get("bench", [])
    pad = interval([r["pad_fraction_packed"] - r["pad_fraction_padded"] for r in bench])
    speed = interval([r["speedup_packed"] for r in bench])
    ratio = (speed[0], speed[1] - 1, speed[2] - 1, speed[3] - 1)
    numbers = (f"padding fraction packed - padded {fmt(pad, '+.3f')} (padded {fmt(interval([r['pad_fraction_padded'] for r in bench]), '.3f')}, "
               f"packed {fmt(interval([r['pad_fraction_packed'] for r in bench]), '.3f')}); training tokens/s "
               f"packed / padded {fmt(speed, '.2f')}.")
    results = [verdict(pad, True), verdict(ratio, False)]
    result = results[0] if len(set(results)) == 1 else f"padding: {results[0]}; speed: {results[1]}"
    differs = ("MFTCoder packs up to 4,096-token buffers of whole samples on GPUs (and also offers dynamic padding); "
               "here rows of the study's max length, first-fit per step of 8 examples, with a block-diagonal mask "
               "and restarted positions (fedft.data.sft.pack), one CPU thread in bf16; tokens/s from "
               f"{bench[0]['bench_steps'] if bench else '?'} timed training steps per layout and seed after one "
               "untimed step of each.")
    return card("Packing removes the padding of padded batches and so trains more tokens per second [code: "
                "MFTCoder's pack mode]", differs, numbers, result, COMMAND)


def coba_table(by: dict) -> list[str]:
    """Mean CoBa weight of each task at each observation step (over seeds), with DF."""
    recs = by.get("coba", [])
    if not recs:
        return ["(no coba cells)"]
    names = sorted(TASKS)
    rows = [f"| step | {' | '.join(names)} | DF |", "|---|" + "---|" * (len(names) + 1)]
    steps = sorted({o["step"] for r in recs for o in r["observed"]})
    for s in steps:
        obs = [o for r in recs for o in r["observed"] if o["step"] == s]
        w = [sum(o["weights"][str(i)] for o in obs) / len(obs) for i in range(len(names))]
        dfs = [o["df"] for o in obs if "df" in o]
        rows.append(f"| {s} | {' | '.join(f'{x:.3f}' for x in w)} | {sum(dfs) / len(dfs) if dfs else float('nan'):.2f} |")
    return rows


def write_summary(out: Path, by: dict) -> None:
    keys = [*METRICS, "worst_task", *BENCH]
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "seed", *keys])
        for c in sorted(by):
            for r in by[c]:
                w.writerow([c, r["seed"], *[r.get(k, "") for k in keys]])


def _header(out: Path, opts: Options, data_python: str, initial: dict[str, float]) -> list[str]:
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    n = counts(opts)
    return ["# MFTCoder's multi-task losses and CoBa on SmolLM2-135M", "",
            f"Generated by `experiments/llm_mftcoder_report.py` from the cell JSONs under `{where}/cells` "
            "(`summary.csv` there). [paper] marks a paper's claim or setting, [code] MFTCoder's code, [D] fedft's "
            "own choice.", "",
            f"Setting [D]: three real code tasks, training examples {', '.join(f'{t} {n[t]}' for t in TASKS)}: docstring "
            f"→ function and function → docstring mined from the Python {data_python} standard library (one direction "
            "per function; no body or docstring used twice), HumanEval function → its unit tests. Only examples "
            f"whose whole chat rendering fits {opts.max_length} tokens; {opts.test_per_task} held-out and "
            f"{opts.val_per_task} validation (CoBa only) items per task. LoRA r 16 / alpha 32 / dropout 0.05 on q, v; "
            f"AdamW lr {opts.lr}, constant; {opts.batch_size} examples a step, packed; one epoch; bf16. Modes of the "
            "`mftcoder` loss plugin: token (case1, the plain token mean), sample (case2), task (case3, MFTCoder's "
            f"default), focal (alpha 1, gamma 2), coba (warm-up {opts.coba_warmup}, window {opts.coba_history}, "
            f"observes every {opts.coba_every} steps, tau 5). Focal minimises -(1 - P)^2 log P of each sample's "
            "*mean token probability* P, not the token log-likelihood the held-out loss measures. Untrained held-out "
            f"loss: {', '.join(f'{t} {v:.3f}' for t, v in initial.items())}.", "", f"Verdict rule [D]: {RULE}.", ""]


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    by = load(out)
    first = next((r for c in MODES for r in by.get(c, [])), None)
    opts = Options(**first["options"]) if first else Options(out=str(out))
    data = json.loads((out / "data.json").read_text()) if (out / "data.json").is_file() else {}
    initial = json.loads((out / "initial.json").read_text())["test_losses"] if (out / "initial.json").is_file() else {}
    n = counts(opts)
    differs = DIFFERS.format(counts=" / ".join(str(n[t]) for t in TASKS), ratio=max(n.values()) / min(n.values()),
                             max_length=opts.max_length, steps=first["steps"] if first else "?", bs=opts.batch_size,
                             test=opts.test_per_task, warm=opts.coba_warmup, hist=opts.coba_history, every=opts.coba_every,
                             seeds=len({r["seed"] for c in MODES for r in by.get(c, [])}))
    equal = {c: sorted({(r["seed"], r["train_tokens"]) for r in by[c]}) for c in MODES if c in by}
    same = len({tuple(v) for v in equal.values()}) <= 1
    lines = _header(out, opts, data.get("python", "?"), initial)
    seconds = sum(r.get(k, 0.0) for rs in by.values() for r in rs for k in ("train_s", "eval_s", "observe_s"))
    lines += ["## Held-out loss per mode", "", *table(by, list(MODES), METRICS), "",
              f"Equal training tokens in every mode of a seed: {'yes' if same else 'NO: ' + str(equal)}. Measured "
              f"training, evaluation and CoBa time of all cells: {seconds / 60:.0f} min (plus model loading and the "
              "bench cells' timed steps).", "",
              "## CoBa's task weights", "", "Mean over seeds of each task's weight after each observation "
              "(uniform before the warm-up ends), and the divergence factor:", "", *coba_table(by), "",
              "## Padding and packing", "", *table(by, ["bench"], BENCH), "",
              "## Verdicts", "", *worst_task_cards(by, differs), *packing_card(by)]
    return save_report(report, lines, out, (lambda o: write_summary(o, by)) if summary_csv else None)


if __name__ == "__main__":
    import sys

    write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
