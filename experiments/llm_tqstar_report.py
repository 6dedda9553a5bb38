"""The report of experiments/llm_tqstar.py: per α a table of every condition (mean and 95 %
t-interval over seeds), the costs, the reward classifiers and DPO baselines, and a verdict card per
claim of Transfer Q*, decided by :data:`RULE` (paired differences per seed, ``paired``).
Writes experiments/reports/llm_decoding_tqstar.md for the default output directory (else
``<out>/report.md``) and ``<out>/summary.csv``, from the artifacts alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llm_data_report import card, paired, table
from llm_tqstar import GUIDED, PLAIN, RESULTS, Options, alpha_list
from study_cells import ROOT, load_cells, save_report
from study_cells import fmt_interval as fmt

REPORT = ROOT / "experiments/reports/llm_decoding_tqstar.md"
COMMAND = ".venv/bin/python experiments/llm_tqstar.py --threads 1"
# metric -> (label, format, True when higher is better)
METRICS = {"eval_reward": ("evaluation reward P_B(target) (held-out classifier)", ".3f", True),
           "eval_target_share": ("share classified as the target by B", ".2f", True),
           "r": ("r = P_A(target) (the decoding reward)", ".3f", True),
           "r_bl": ("r_BL = P_A(baseline topic)", ".3f", False),
           "kl": ("KL(π_dec || π_sft) per token (nats)", ".3f", False),
           "kl_topk": ("of which top-k truncation alone: −log π_sft(top k)", ".3f", False),
           "policy_nll": ("policy NLL per token (fluency)", ".2f", False),
           "distinct2": ("distinct-2", ".3f", True), "tokens": ("tokens generated", ".1f", True)}
COSTS = {"forwards_per_token": ("LM forwards / token", ".1f", False),
         "rollout_forwards_per_token": ("of which rollouts", ".1f", False),
         "reward_texts_per_token": ("reward texts / token", ".1f", False),
         "tokens_per_s": ("tokens / s (1 thread, rewards included)", ".2f", True)}
RULE = ("each claim compares paired differences (same seed: same prompts, DPO pairs and training, sampling seed) "
        "with a 95 % t-interval over the seeds; a part is *reproduced in direction* when its interval lies wholly "
        "on the claimed side of 0, *not reproduced* when it lies wholly on the other side, and *inconclusive* when "
        "it crosses 0; a claim is reproduced in direction when every part is, not reproduced when any part is "
        "not, else inconclusive. No claim is marked *reproduced*: the paper's magnitudes (e.g. up to 1.45x the "
        "best baseline's reward) are on other models, rewards and data")
DIFFERS = ("The paper decodes 7B models (Mistral, Zephyr, Pythia-6.9B) on HH-RLHF, UltraFeedback and Nectar with "
           "trained reward models, k = 10, rollouts to EOS (code: 20 / 5 tokens), 128 new tokens, and judges with "
           "the reward and GPT-4. Here [D]: SmolLM2-135M-Instruct continuing {prompts} BBC openings per seed "
           "towards the '{target}' section; r and r_BL are the probabilities of '{target}' and '{bl}' from a "
           "MiniLM classifier fine-tuned on half of BBC, the judge a second one trained on the other half; "
           "baselines: the policy + LoRA after {epochs} DPO epochs on {pair_prompts} prompts x {samples} policy "
           "samples; k = {k}, H = {h}, {tokens} new tokens, α ∈ {{{alphas}}} (probability rewards in [0, 1]), "
           "greedy; 3 seeds (prompts, DPO pairs and training, sampling).")


def _clamp(rec: dict[str, Any]) -> None:
    for key in ("kl", "kl_topk"):  # rounding and -0.0: print 0.000, not -0.000
        if rec.get(key) is not None and abs(rec[key]) < 1e-6:
            rec[key] = 0.0


def load(out: Path) -> dict[str, list[dict[str, Any]]]:
    def lift(rec: dict[str, Any]) -> None:
        for key in ("kl", "kl_topk"):  # a sum of -0.0s and rounding: print 0.000, not -0.000
            if rec.get(key) is not None and -1e-6 < rec[key] < 0:
                rec[key] = 0.0

    return load_cells(out / "cells", lift)


def judge(diff: tuple[int, float, float, float], higher: bool = True) -> str:
    """The verdict of :data:`RULE` for one paired difference (a - b)."""
    n, _, lo, hi = diff
    if n < 2:
        return "inconclusive"
    if (lo > 0) if higher else (hi < 0):
        return "reproduced in direction"
    return "not reproduced" if ((hi < 0) if higher else (lo > 0)) else "inconclusive"


def combine(verdicts: list[str]) -> str:
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "reproduced in direction" if verdicts and all(v == "reproduced in direction" for v in verdicts) \
        else "inconclusive"


def _diff(by: dict, a: str, b: str, key: str, higher: bool | None = None) -> str:
    """``key: a − b`` with its interval and its part's verdict (``higher``: the claimed side, by
    default the metric's better side)."""
    d = paired(by, a, b, key)
    return f"{key}: {a} − {b} {fmt(d, '+' + METRICS[key][1])} ({judge(d, METRICS[key][2] if higher is None else higher)})"


def _kl(by: dict, conds: list[str]) -> str:
    return ", ".join(f"{c} {fmt(_iv(by, c, 'kl'), '.3f')}" for c in conds if c in by)


def _iv(by: dict, c: str, key: str) -> tuple[int, float, float, float]:
    from study_cells import interval

    return interval([r.get(key) for r in by.get(c, [])])


def _better(by: dict, a: str, controls: list[str], alphas: list[float], key: str = "eval_reward") -> tuple[str, str]:
    pairs = [(f"{a}_a{x:g}", f"{c}_a{x:g}" if c not in PLAIN else c) for x in alphas for c in controls]
    verdicts = [judge(paired(by, m, c, key), METRICS[key][2]) for m, c in pairs]
    numbers = "; ".join(_diff(by, m, c, key) for m, c in pairs)
    return numbers, combine(verdicts)


def verdict_cards(by: dict, differs: str, alphas: list[float]) -> list[str]:
    out: list[str] = []
    for claim, controls in (
            ("TQ* (direct transfer, baseline aligned to r) reaches a higher reward than ARGS at every α, at a "
             "similar KL [paper: TQ* beats ARGS and CD in average reward]", ["args"]),
            ("TQ* (direct transfer) reaches a higher reward than controlled decoding (value from the policy's own "
             "rollouts) at every α, at a similar KL [paper]", ["cd"])):
        numbers, verdict = _better(by, "tq_direct", controls, alphas)
        kl = _kl(by, [f"{m}_a{x:g}" for x in alphas for m in ("tq_direct", *controls)])
        out += card(claim, differs, f"{numbers}. KL per token: {kl}.", verdict, COMMAND)
    numbers, verdict = _better(by, "tq_indirect", ["tq_naive"], alphas)
    out += card("With a baseline aligned to r_BL ≠ r, indirect transfer (Q = w·r, w ∝ exp((r − r_BL)/β)) reaches at "
                "least the reward of direct transfer on the same baseline (Q = r) [paper: indirect transfer for a "
                "baseline aligned to another reward]", differs,
                f"{numbers}. KL: {_kl(by, [f'{m}_a{x:g}' for x in alphas for m in ('tq_indirect', 'tq_naive')])}.",
                verdict, COMMAND)
    premise = [judge(paired(by, "dpo_r_sample", "policy_sample", k)) for k in ("r", "eval_reward")]
    out += card("Premise [D]: DPO on pairs labelled by r makes an aligned baseline, i.e. ρ_r's samples score higher "
                "than the policy's (the paper's baselines are DPO models trained on full preference sets)", differs,
                f"{_diff(by, 'dpo_r_sample', 'policy_sample', 'r')}; "
                f"{_diff(by, 'dpo_r_sample', 'policy_sample', 'eval_reward')}", combine(premise), COMMAND)
    numbers, verdict = _better(by, "tq_direct", ["dpo_r_sample"], alphas)
    out += card("TQ* reaches a higher reward than sampling from its DPO baseline [paper: TQ* beats the DPO model]",
                differs, numbers, verdict, COMMAND)
    if len(alphas) >= 2:
        lo, hi = f"tq_direct_a{min(alphas):g}", f"tq_direct_a{max(alphas):g}"
        parts = [judge(paired(by, hi, lo, "eval_reward")), judge(paired(by, hi, lo, "kl"))]
        out += card("A larger α gives TQ* more reward and more KL drift [paper: both grow with α]", differs,
                    f"{_diff(by, hi, lo, 'eval_reward')}; {_diff(by, hi, lo, 'kl', higher=True)}",
                    combine(parts), COMMAND)
    return out


def side_tables(out: Path) -> list[str]:
    """Classifier accuracies and the DPO baselines' training."""
    lines: list[str] = []
    path = out / "classifiers.json"
    if path.is_file():
        c = json.loads(path.read_text())
        lines += ["| classifier | trained on | held-out accuracy, other half | held-out accuracy, prompt pool |",
                  "|---|---|---|---|"]
        lines += [f"| {h} | half {h} ({c[h]['key']['snippets']} snippets) | {c[h]['acc_other_half']:.3f} | "
                  f"{c[h]['acc_prompt_pool']:.3f} |" for h in sorted(c)]
        lines.append("")
    recs = [json.loads(p.read_text()) for p in sorted((out / "dpo").glob("*_seed*.json"))] if (out / "dpo").is_dir() else []
    if recs:
        lines += ["| DPO baseline | seed | pairs | mean reward gap | first → last loss | last margin | last accuracy | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for p, r in zip(sorted((out / "dpo").glob("*_seed*.json")), recs, strict=True):
            ls, ms, acc = r.get("losses") or [float("nan")], r.get("margins") or [float("nan")], r.get("accuracies") or [0]
            lines.append(f"| ρ_{'BL' if r['kind'] == 'r_bl' else 'r'} (pairs by {r['kind']}) | {p.stem.rsplit('seed', 1)[1]} | {r['pairs']} | {r['mean_gap']:.3f} | "
                         f"{ls[0]:.3f} → {ls[-1]:.3f} | {ms[-1]:.2f} | {acc[-1]:.2f} | {r['train_s']:.0f} |")
        lines.append("")
    return lines


def samples(by: dict, conds: list[str], n: int = 2) -> list[str]:
    lines = []
    for c in conds:
        recs = by.get(c) or []
        if recs:
            r = recs[0]
            for i in range(min(n, len(r["texts"]))):
                lines.append(f"- `{c}` (P_B = {r['eval_rewards'][i]:.2f}): {r['texts'][i][:200]!r}")
    return lines


def write_summary(out: Path, by: dict) -> None:
    keys = [*METRICS, *COSTS]
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "seed", *keys])
        for c in sorted(by):
            for r in by[c]:
                w.writerow([c, r["seed"], *[r.get(k, "") for k in keys]])


def write_report(out: Path, report: Path | None = None, summary_csv: bool = True) -> Path:
    report = report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    by = load(out)
    first = next((r for rs in by.values() for r in rs), None)
    opts = Options(**first["options"]) if first else Options(out=str(out))
    alphas = alpha_list(opts)
    differs = DIFFERS.format(prompts=opts.prompts, target=opts.target, bl=opts.baseline_topic, epochs=opts.dpo_epochs,
                             pair_prompts=opts.pair_prompts, samples=opts.samples, k=opts.k, h=opts.horizon,
                             tokens=opts.max_new_tokens, alphas=", ".join(f"{a:g}" for a in alphas))
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    lines = ["# Transfer Q*, ARGS and controlled decoding on SmolLM2-135M", "",
             f"Generated by `experiments/llm_tqstar_report.py` from the artifacts under `{where}` (`summary.csv` "
             "there). [paper] marks a paper's claim or setting, [D] fedft's own choice. Every number is measured on "
             "the evaluation prompts; nothing was tuned on them.", "", f"Setting [D]. {differs}", "",
             "Metrics [D]: the evaluation reward is P_B(target | text) from classifier B, which decoding never "
             "sees (r and r_BL come from classifier A); KL is the mean over generated tokens of KL(π_dec(·|s_t) ‖ "
             "π_sft(·|s_t)) at the visited states, π_dec the softmax of the decoding scores (for greedy decoding "
             "the distribution whose argmax is taken; for sampling at temperature 1, the sampled one), with the "
             "part that restricting π_sft to its top k alone costs (−log of the top-k mass) beside it; the policy "
             "NLL is −log π_sft of the generated tokens (lower: text the policy finds more likely); distinct-2 is "
             "over word bigrams of all texts of a cell. Conditions: `tq_direct` rolls out ρ_r (DPO on pairs "
             "labelled by r) with Q = r; `tq_naive` rolls out ρ_BL (pairs labelled by r_BL) with Q = r; "
             "`tq_indirect` rolls out ρ_BL with Q = w·r; `cd` rolls out the policy; `args` scores the partial "
             "text.", "", f"Verdict rule [D]: {RULE}.", "", "## Rewards and baselines", "", *side_tables(out)]
    for a in alphas:
        conds = [*PLAIN, *(f"{m}_a{a:g}" for m in GUIDED)]
        lines += [f"## α = {a:g}", "", *table(by, [c for c in conds if c in by], METRICS), ""]
    conds = [*PLAIN, *(f"{m}_a{a:g}" for a in alphas for m in GUIDED)]
    lines += ["## Costs", "", "Per generated token and sequence; plain sampling is one forward a token. Tokens/s is wall clock "
              "on one thread of a 2-core machine shared with other studies: noisy, compare within a seed.", "",
              *table(by, [c for c in conds if c in by], COSTS), "", "## Verdicts", "",
              *verdict_cards(by, differs, alphas), "## Samples (seed 0, first two prompts)", "",
              *samples(by, [*PLAIN, *(f"{m}_a{max(alphas):g}" for m in GUIDED)] if alphas else list(PLAIN)), ""]
    return save_report(report, lines, out, (lambda o: write_summary(o, by)) if summary_csv else None)


if __name__ == "__main__":
    import sys

    raise SystemExit(0 if write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS) else 1)
