"""experiments/reports/resources_compare.md from the artifacts of experiments/resources_compare.py alone.

Per device/network mix: time and bytes to the target validation accuracy as the mean and 95 %
t-interval over seeds, where the simulated time went (the critical path's compute / transfer / RTT
/ server / queue), whether each entry's client part fits the mix's devices, SFPrompt's paired
differences to each baseline, and a verdict card for "SFPrompt reaches the target faster than
FL-Full on resource-limited devices". Also experiments/reports/figures/resources_compare.png.

    .venv/bin/python experiments/resources_compare_report.py [--results DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_cells import ROOT, fmt_interval, interval  # noqa: E402

RESULTS = ROOT / "experiments/results/resources/compare"
REPORT = ROOT / "experiments/reports/resources_compare.md"
FIGURE = ROOT / "experiments/reports/figures/resources_compare.png"
# name -> (entries whose best validation accuracies set it, or "all"; what the rule is) [D]
TARGET_RULES: dict[str, tuple[Any, str]] = {
    "low": ("all", "0.95 x the lowest best validation accuracy of any entry at any seed (fedft compare's default "
                   "rule, taken over all seeds so that one target serves the paired comparison; every run reaches it)"),
    "mid": (["sfprompt"], "0.95 x SFPrompt's lowest best validation accuracy over the seeds (the highest target of this "
                          "form that SFPrompt reaches in every seed)"),
    "high": (["fl_full"], "0.95 x FL-Full's lowest best validation accuracy over the seeds (what FL-Full reaches "
                          "in every seed; an entry that never reaches it within the run has no time there)"),
}
PARTS = ("compute", "transfer", "rtt", "server", "queue")
NAMES = {"sfprompt": "SFPrompt", "fl_full": "FL-Full", "sfl_v1": "SFL-V1", "sfl_v2": "SFL-V2", "sl": "SL"}
RESOURCE_LIMITED = ("phones", "rpi4")  # mix labels starting with these are the claim's devices [D]


# ---- loading -------------------------------------------------------------------------------------


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(x: Any) -> float | None:
    return None if x in (None, "", "None") else float(x)


def seeds_of(results: Path) -> list[int]:
    return sorted(int(p.name) for p in results.iterdir() if p.is_dir() and p.name.isdigit())


def tta(results: Path, target: str) -> dict[tuple[str, str], dict[int, dict[str, str]]]:
    """(mix, entry) -> seed -> that seed's time_to_accuracy row for ``target``."""
    out: dict[tuple[str, str], dict[int, dict[str, str]]] = defaultdict(dict)
    for seed in seeds_of(results):
        for r in _read(results / str(seed) / f"time_to_accuracy_{target}.csv"):
            out[(r["mix"], r["entry"])][seed] = r
    return out


def curves(results: Path, server_parallel: int = 0) -> dict[tuple[str, str, int], list[dict[str, str]]]:
    """(mix, entry, seed) -> the rounds re-simulated with this resources.server_parallel."""
    out: dict[tuple[str, str, int], list[dict[str, str]]] = defaultdict(list)
    for seed in seeds_of(results):
        for r in _read(results / str(seed) / "curves.csv"):
            if int(r["server_parallel"]) == server_parallel:
                out[(r["mix"], r["entry"], seed)].append(r)
    return out


def time_to(rows: list[dict[str, str]], target: float) -> float | None:
    """The simulated time at which the validation accuracy first reaches ``target``."""
    return next((float(r["sim_cumulative"]) for r in rows if r["val_accuracy"] and float(r["val_accuracy"]) >= target),
                None)


# ---- statistics ----------------------------------------------------------------------------------------


def summarise(results: Path) -> list[dict[str, Any]]:
    """summary.csv: per target, mix and entry, time and bytes to target over seeds (mean, 95 %
    t-interval; seeds that never reach it are counted, not averaged) and the paired difference
    entry - SFPrompt over the seeds where both reached it."""
    rows = []
    for name in TARGET_RULES:
        by = tta(results, name)
        for (mix, entry), per in by.items():
            ref = by.get((mix, "sfprompt"), {})
            row: dict[str, Any] = {"target_name": name, "target": float(next(iter(per.values()))["target"]),
                                   "mix": mix, "entry": entry, "seeds": len(per),
                                   "reached": sum(_num(r["time_to_target_s"]) is not None for r in per.values())}
            for col, key in (("time_to_target_s", "time"), ("bytes_to_target", "bytes"), ("rounds_to_target", "rounds")):
                n, m, lo, hi = interval([_num(r[col]) for r in per.values()])
                row.update({f"{key}_mean": m, f"{key}_lo": lo, f"{key}_hi": hi})
                if key != "rounds":
                    d = [_diff(r[col], ref.get(s, {}).get(col)) for s, r in per.items()]
                    n, m, lo, hi = interval(d) if entry != "sfprompt" else (0, math.nan, math.nan, math.nan)
                    row.update({f"{key}_minus_sfprompt_mean": m, f"{key}_minus_sfprompt_lo": lo,
                                f"{key}_minus_sfprompt_hi": hi, f"{key}_pairs": n})
            rows.append(row)
    return rows


def _diff(a: Any, b: Any) -> float | None:
    x, y = _num(a), _num(b)
    return None if x is None or y is None else x - y


def breakdown(cur: dict[tuple[str, str, int], list[dict[str, str]]], mix: str, entry: str,
              upto: dict[int, int | None]) -> dict[str, float] | None:
    """Mean over seeds of the critical path's seconds by part, up to each seed's target round."""
    sums: dict[str, list[float]] = {p: [] for p in (*PARTS, "exchanges")}
    for seed, r in upto.items():
        if r is None:
            continue
        rows = [x for x in cur[(mix, entry, seed)] if int(x["round"]) <= r]
        for p in PARTS:
            sums[p].append(sum(float(x[f"crit_{p}_s"]) for x in rows))
        sums["exchanges"].append(sum(float(x["crit_exchanges"]) for x in rows))
    if not sums["compute"]:
        return None
    return {p: sum(v) / len(v) for p, v in sums.items()}


# ---- formatting ------------------------------------------------------------------------------------------


def fmt_time(iv: tuple[int, float, float, float]) -> str:
    """A time interval in one unit chosen from its mean (s, min or h)."""
    n, m = iv[0], iv[1]
    if n == 0:
        return "—"
    unit, div = ("s", 1.0) if m < 120 else ("min", 60.0) if m < 7200 else ("h", 3600.0)
    scaled = (n, m / div, iv[2] / div, iv[3] / div)
    f = ".3g" if scaled[1] >= 1 else ".2g"
    return f"{fmt_interval(scaled, f)} {unit}"


def fmt_mb(iv: tuple[int, float, float, float]) -> str:
    n, m, lo, hi = iv
    return "—" if n == 0 else fmt_interval((n, m / 1e6, lo / 1e6, hi / 1e6), ",.0f" if abs(m) >= 1e8 else ".3g") + " MB"


def _iv(row: dict[str, Any], key: str, scale: float = 1.0) -> tuple[int, float, float, float]:
    n = row["reached"] if not key.endswith("minus_sfprompt") else row[f"{key.split('_')[0]}_pairs"]
    return n, row[f"{key}_mean"], row[f"{key}_lo"], row[f"{key}_hi"]


# ---- report sections ---------------------------------------------------------------------------------------


def setting_section(study: dict[str, Any], results: Path) -> str:
    seeds = study["seeds"]
    lines = ["## Setting", "",
             "| | this study | the main job (fedft/configs/sfprompt_mnist.toml) |", "|---|---|---|"]
    for k, v in study["size_vs_main"].items():
        lines.append(f"| {k} | {v[0]} | {v[1]} |")
    lines += ["", WHY, "", f"Seeds {', '.join(map(str, seeds))}; every entry of a seed shares its data, partitions, initial "
              f"weights and rounds. Plans recorded under `{' '.join(study['train_mix'])}`. Entries:", ""]
    for lab, (strategy, over) in study["entries"].items():
        lines.append(f"- **{NAMES.get(lab, lab)}** (`{strategy}`): " + (", ".join(f"`{o}`" for o in over) or
                                                                       "the main job's settings"))
    wall = [json.loads((results / str(s) / e / "summary.json").read_text())["wall_seconds"]
            for s in seeds for e in study["entries"]]
    lines += ["", f"Training took {sum(wall) / 60:.0f} minutes of one core in all ({len(wall)} runs, their "
              "`wall_seconds`, on a machine shared with other jobs); the re-timing takes seconds."]
    return "\n".join(lines) + "\n"


def accuracy_section(results: Path, entries: list[str]) -> str:
    """Best and final validation accuracy, bytes and FLOPs per round of each entry, over seeds."""
    lines = ["| entry | best val acc | final val acc | bytes / round (all clients) | client TFLOP / round "
             "| server TFLOP / round | exchanges / client / round |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        best, final, byt, cf, sf, ex = [], [], [], [], [], []
        for seed in seeds_of(results):
            d = results / str(seed) / e
            m = [r for r in _read(d / "metrics.csv")]
            accs = [float(r["val_accuracy"]) for r in m if r["val_accuracy"]]
            best.append(max(accs))
            final.append(accs[-1])
            s = json.loads((d / "summary.json").read_text())
            rounds = len(m)
            byt.append(s["bytes_total"] / rounds)
            cf.append(s["client_flops"] / rounds / 1e12)
            sf.append(s["server_flops"] / rounds / 1e12)
            plans = [json.loads(x) for x in (d / "sim_plans.jsonl").read_text().splitlines()]
            n = [len(p["exchanges"]) for doc in plans for g in doc["groups"] for p in g]
            ex.append(sum(n) / len(n))
        lines.append(f"| {NAMES.get(e, e)} | {fmt_interval(interval(best), '.3f')} | {fmt_interval(interval(final), '.3f')} "
                     f"| {fmt_mb(interval(byt))} | {fmt_interval(interval(cf), '.3g')} | {fmt_interval(interval(sf), '.3g')} "
                     f"| {fmt_interval(interval(ex), '.1f')} |")
    return "\n".join(lines) + "\n"


def mixes_section(mixes: dict[str, list[str]]) -> str:
    from fedft.resources.profiles import load_catalog

    cat = load_catalog("")
    lines = ["| mix | devices (training rate, memory) | network (up / down Mbit/s, RTT) |", "|---|---|---|"]
    for mix, (devs, net) in mixes.items():
        parts = []
        for item in devs.split(","):
            name, _, share = item.partition("=")
            d = cat.profile("device", name)
            parts.append(f"{'' if not share else f'{float(share):.0%} '}`{name}` ({d.flops / 1e9:.3g} GFLOP/s, "
                         f"{d.memory_bytes / 2**30:.3g} GiB)")
        n = cat.profile("network", net)
        up, down = (_g(n.mean_bps(k) / 1e6) for k in ("up", "down"))
        lines.append(f"| {mix} | {', '.join(parts)} | `{net}` ({up} / {down}, "
                     f"{n.rtt_s * 1e3:.3g} ms{', traced' if n.trace else ''}) |")
    return "\n".join(lines) + "\n"


def _g(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def fits(fit: list[dict[str, Any]], entry: str, devices: str) -> str:
    rec = next((r for r in fit if r["entry"] == entry), None)
    if rec is None:
        return "?"
    names = [i.split("=")[0] for i in devices.split(",")]
    bad = [n for n in names if not rec["fits"].get(n, True)]
    need = f"{rec['total'] / 2**20:,.0f} MiB"
    return f"{need}: yes" if not bad else f"{need}: **no** ({', '.join(bad)})"


def mix_table(summary: list[dict[str, Any]], cur: Any, results: Path, mix: str, devices: str,
              entries: list[str], fit: list[dict[str, Any]]) -> str:
    """The low target's table for one mix."""
    rows = {r["entry"]: r for r in summary if r["mix"] == mix and r["target_name"] == "low"}
    per = tta(results, "low")
    lines = ["| entry | reached | time to target | bytes to target | rounds | critical path: compute / transfer / RTT "
             "/ server / queue | client part fits |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        r = rows[e]
        upto = {s: (int(x["rounds_to_target"]) if x["rounds_to_target"] else None) for s, x in per[(mix, e)].items()}
        b = breakdown(cur, mix, e, upto)
        split = "—" if b is None else " / ".join(f"{100 * b[p] / max(sum(b[q] for q in PARTS), 1e-12):.0f}%" for p in PARTS)
        lines.append(f"| {NAMES.get(e, e)} | {r['reached']}/{r['seeds']} | {fmt_time(_iv(r, 'time'))} "
                     f"| {fmt_mb(_iv(r, 'bytes'))} | {fmt_interval(_iv(r, 'rounds'), '.1f')} | {split} "
                     f"| {fits(fit, e, devices)} |")
    return "\n".join(lines) + "\n"


def paired_table(summary: list[dict[str, Any]], target: str, mixes: list[str], entries: list[str]) -> str:
    """baseline - SFPrompt, paired by seed: time and bytes, per mix."""
    lines = ["| mix | " + " | ".join(f"{NAMES.get(e, e)} − SFPrompt: time" for e in entries if e != "sfprompt")
             + " | FL-Full − SFPrompt: bytes |", "|---" * len(entries) + "|---|"]
    for mix in mixes:
        rows = {r["entry"]: r for r in summary if r["mix"] == mix and r["target_name"] == target}
        cells = [fmt_time(_iv(rows[e], "time_minus_sfprompt")) for e in entries if e != "sfprompt"]
        lines.append(f"| {mix} | " + " | ".join(cells) + f" | {fmt_mb(_iv(rows['fl_full'], 'bytes_minus_sfprompt'))} |")
    return "\n".join(lines) + "\n"


def target_table(summary: list[dict[str, Any]], target: str, mixes: list[str], entries: list[str]) -> str:
    lines = ["| mix | " + " | ".join(NAMES.get(e, e) for e in entries) + " |", "|---" * (len(entries) + 1) + "|"]
    for mix in mixes:
        rows = {r["entry"]: r for r in summary if r["mix"] == mix and r["target_name"] == target}
        lines.append(f"| {mix} | " + " | ".join(f"{fmt_time(_iv(rows[e], 'time'))} ({rows[e]['reached']}/{rows[e]['seeds']})"
                                                 for e in entries) + " |")
    return "\n".join(lines) + "\n"


def verdict(summary: list[dict[str, Any]], mix: str, target: str) -> tuple[str, str]:
    """(verdict, numbers) for "SFPrompt reaches ``target`` faster than FL-Full" on one mix."""
    r = next(x for x in summary if x["mix"] == mix and x["entry"] == "fl_full" and x["target_name"] == target)
    s = next(x for x in summary if x["mix"] == mix and x["entry"] == "sfprompt" and x["target_name"] == target)
    n, m, lo, hi = _iv(r, "time_minus_sfprompt")
    if s["reached"] < s["seeds"]:
        word = "not reproduced"
    elif n >= 2 and lo > 0:
        word = "reproduced"
    elif n >= 2 and hi < 0:
        word = "not reproduced"
    else:
        word = "inconclusive"
    ratio = f"; FL-Full / SFPrompt {r['time_mean'] / s['time_mean']:.2f}x" if s["reached"] and r["reached"] else ""
    return word, (f"{target} target {s['target']:.3f}: FL-Full − SFPrompt = {fmt_time((n, m, lo, hi))} (paired over "
                  f"{n} seeds{ratio}; SFPrompt reached it in {s['reached']}/{s['seeds']} seeds, FL-Full in "
                  f"{r['reached']}/{r['seeds']}) → **{word}**")


def card(summary: list[dict[str, Any]], mix: str, targets: list[str], fit: list[dict[str, Any]], devices: str) -> str:
    kind = "resource-limited" if mix.startswith(RESOURCE_LIMITED) else "a control: not resource-limited"
    parts = [verdict(summary, mix, t) for t in targets]
    refused = "**no**" in fits(fit, "fl_full", devices)
    return (f"**{mix}** ({kind}):\n" + "\n".join(f"  - {p[1]}" for p in parts)
            + (f"\n  - FL-Full's client part does not fit every device of this mix ({fits(fit, 'fl_full', devices)}): "
               "fedft's memory check would refuse that run, so its time here is what it would take if it fitted."
               if refused else ""))


def _ranked(summary: list[dict[str, Any]], mix: str, target: str) -> list[dict[str, Any]]:
    return sorted((r for r in summary if r["mix"] == mix and r["target_name"] == target and r["reached"]),
                  key=lambda r: r["time_mean"])


def _standing(summary: list[dict[str, Any]], mix: str, target: str) -> str:
    """SFPrompt's place among the entries that reached ``target`` on ``mix``, with the numbers."""
    rows = _ranked(summary, mix, target)
    me = next((r for r in summary if r["mix"] == mix and r["target_name"] == target and r["entry"] == "sfprompt"), None)
    if not rows or me is None:
        return "nobody reached it"
    if not me["reached"]:
        return (f"SFPrompt never reaches it (0/{me['seeds']} seeds); fastest {NAMES.get(rows[0]['entry'])} "
                f"({fmt_time(_iv(rows[0], 'time'))}, {rows[0]['reached']}/{rows[0]['seeds']} seeds)")
    rank = [r["entry"] for r in rows].index("sfprompt")
    t = fmt_time(_iv(me, "time"))
    if rank == 0 and len(rows) > 1:
        nxt = rows[1]
        return (f"SFPrompt is fastest ({t}), next {NAMES.get(nxt['entry'])} ({fmt_time(_iv(nxt, 'time'))}, "
                f"{nxt['time_mean'] / me['time_mean']:.2f}x SFPrompt's mean)")
    return (f"SFPrompt ranks {rank + 1} of {len(rows)} ({t}); fastest {NAMES.get(rows[0]['entry'])} "
            f"({fmt_time(_iv(rows[0], 'time'))}, {me['time_mean'] / rows[0]['time_mean']:.2f}x faster)")


def where_section(summary: list[dict[str, Any]], cur: Any, results: Path, mixes: dict[str, list[str]],
                  targets: list[str]) -> str:
    """Data-driven lines per mix: SFPrompt's standing at each target and what its time is made of."""
    per = tta(results, "low")
    out = []
    for mix in mixes:
        upto = {s: (int(x["rounds_to_target"]) if x["rounds_to_target"] else None) for s, x in per[(mix, "sfprompt")].items()}
        b = breakdown(cur, mix, "sfprompt", upto)
        tot = sum(b[p] for p in PARTS) if b else 0.0
        top = max(PARTS, key=lambda p: b[p]) if b else "?"
        rtt_each = b["rtt"] / b["exchanges"] if b and b["exchanges"] else math.nan
        stand = "; ".join(f"{t} target: {_standing(summary, mix, t)}" for t in targets)
        out.append(f"- **{mix}**: {stand}. SFPrompt's critical path to the low target: {tot:.3g} s, largest part "
                   f"{top} ({100 * b[top] / tot if tot else 0:.0f}%), {b['exchanges'] if b else 0:.0f} request-replies "
                   f"paying {b['rtt'] if b else 0:.3g} s of RTT ({rtt_each * 1e3:.3g} ms each).")
    return "\n".join(out) + "\n"


def break_even(summary: list[dict[str, Any]], cur: Any, results: Path, mix: str) -> str:
    """The RTT at which SFPrompt's time to the low target would equal FL-Full's on this mix, with
    each one's critical path otherwise unchanged (linear in RTT: time + exchanges x (RTT' - RTT))."""
    per = tta(results, "low")
    b = {}
    for e in ("sfprompt", "fl_full"):
        upto = {s: (int(x["rounds_to_target"]) if x["rounds_to_target"] else None) for s, x in per[(mix, e)].items()}
        b[e] = breakdown(cur, mix, e, upto)
    if not all(b.values()):
        return "—"
    ts = {e: sum(b[e][p] for p in PARTS) for e in b}
    dn = b["sfprompt"]["exchanges"] - b["fl_full"]["exchanges"]
    rtt = b["sfprompt"]["rtt"] / b["sfprompt"]["exchanges"]
    if dn <= 0:
        return "never (SFPrompt's path has no more round trips)"
    extra = (ts["fl_full"] - ts["sfprompt"]) / dn
    if extra <= 0:
        return f"already slower (at {rtt * 1e3:.3g} ms)"
    return f"{(rtt + extra) * 1e3:,.0f} ms (now {rtt * 1e3:.3g} ms)"


def server_per_client(results: Path) -> tuple[float, str]:
    """SFPrompt's body seconds on the run's server per client and round (mean over seeds), and the server."""
    from fedft.config import ExperimentConfig
    from fedft.resources.profiles import load_catalog

    seeds = seeds_of(results)
    cfg = ExperimentConfig.from_toml(results / str(seeds[0]) / "sfprompt" / "config.toml")
    rate = load_catalog(cfg.resources.profiles).profile("device", cfg.resources.server).flops
    per = []
    for seed in seeds:
        s = json.loads((results / str(seed) / "sfprompt" / "summary.json").read_text())
        per.append(s["server_flops"] / sum(int(r["clients"]) for r in _read(results / str(seed) / "sfprompt" / "metrics.csv"))
                   / rate)
    return sum(per) / len(per), cfg.resources.server


def break_even_clients(results: Path, cur: Any, mixes: list[str]) -> dict[str, float]:
    """Per mix: FL-Full's mean round / SFPrompt's server seconds per client-round."""
    srv, _ = server_per_client(results)
    return {m: _mean_round(cur, m, "fl_full") / srv for m in mixes}


def one_slot_section(results: Path, cur: Any, mixes: list[str], target: float) -> str:
    """Time to ``target`` when the server computes one request at a time (resources.server_parallel
    = 1), against the default, and the clients per round at which such a server alone would make an
    SFPrompt round as long as FL-Full's (a linear extrapolation)."""
    one = curves(results, 1)
    seeds = seeds_of(results)
    srv, server = server_per_client(results)
    k = break_even_clients(results, cur, mixes)
    lines = [f"SFPrompt's body work is {srv:.3g} s of `{server}` per client and round. Time to the "
             f"target {target:.3f}, default server → one request at a time:", "",
             "| mix | SFPrompt | SFL-V1 | SFL-V2 (shared body: one at a time already) | FL-Full (no server work) "
             "| clients per round at which a one-slot server makes SFPrompt's round as long as FL-Full's |",
             "|---|---|---|---|---|---|"]
    for mix in mixes:
        cells = []
        for e in ("sfprompt", "sfl_v1", "sfl_v2", "fl_full"):
            a = interval([time_to(cur[(mix, e, sd)], target) for sd in seeds])
            b = interval([time_to(one[(mix, e, sd)], target) for sd in seeds])
            cells.append(f"{fmt_time(a)} → {fmt_time(b)}")
        cells.append(f"{k[mix]:,.0f}")
        lines.append(f"| {mix} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def round_table(cur: Any, mixes: list[str], entries: list[str]) -> str:
    """Mean simulated seconds of one round (all rounds, all seeds) per mix and entry."""
    lines = ["| mix | " + " | ".join(NAMES.get(e, e) for e in entries) + " |", "|---" * (len(entries) + 1) + "|"]
    for mix in mixes:
        cells = []
        for e in entries:
            secs = [float(r["sim_seconds"]) for (m, ee, _), rows in cur.items() if m == mix and ee == e for r in rows]
            cells.append(fmt_time((len(secs), sum(secs) / len(secs), math.nan, math.nan)) if secs else "—")
        lines.append(f"| {mix} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def retime_check(cur: Any, results: Path, study: dict[str, Any]) -> str:
    """Re-timed on the mix the plans were recorded under, does every run give its own sim_cumulative?"""
    want = {kv.split("=", 1)[0].split(".")[-1]: kv.split("=", 1)[1] for kv in study["train_mix"]}
    mix = next((m for m, (d, n) in study["mixes"].items() if d == want["devices"] and n == want["networks"]), None)
    if mix is None:
        return ""
    worst, n = 0.0, 0
    for (m, e, seed), rows in cur.items():
        if m != mix:
            continue
        own = {int(r["round"]): float(r["sim_cumulative"]) for r in _read(results / str(seed) / e / "metrics.csv")}
        for r in rows:
            worst = max(worst, abs(float(r["sim_cumulative"]) - own[int(r["round"])]) / max(own[int(r["round"])], 1e-12))
            n += 1
    return (f"Check: re-timed on `{mix}` (the profiles the plans were recorded under), the {n} run-rounds reproduce "
            f"the runs' own `sim_cumulative` within a relative {worst:.1e}.\n")


def figure(cur: Any, mixes: list[str], entries: list[str], targets: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(mixes))
    rows_n = math.ceil(len(mixes) / cols)
    fig, grid = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.2 * rows_n), sharey=True, squeeze=False)
    axes = list(grid.flat)[:len(mixes)]
    for extra in list(grid.flat)[len(mixes):]:
        extra.set_visible(False)
    colors = dict(zip(entries, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, mix in zip(axes, mixes, strict=True):
        for (m, e, seed), rows in sorted(cur.items()):
            if m != mix:
                continue
            pts = [(float(r["sim_cumulative"]), float(r["val_accuracy"])) for r in rows if r["val_accuracy"]]
            ax.plot(*zip(*pts, strict=True), marker=".", color=colors[e], alpha=0.7,
                    label=NAMES.get(e, e) if seed == min(s for (mm, ee, s) in cur if mm == mix and ee == e) else None)
        for name, t in targets.items():
            ax.axhline(t, color="grey", lw=0.8, ls="--" if name == "low" else ":")
        ax.set_xscale("log")
        ax.set_title(mix, fontsize=9)
        ax.set_xlabel("simulated seconds (log)")
        ax.grid(alpha=0.3, which="both")
    for ax in grid[:, 0]:
        ax.set_ylabel("validation accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _low(summary: list[dict[str, Any]], mix: str, entry: str, target: str = "low") -> dict[str, Any]:
    return next(r for r in summary if r["mix"] == mix and r["entry"] == entry and r["target_name"] == target)


def _mean_round(cur: Any, mix: str, entry: str) -> float:
    secs = [float(r["sim_seconds"]) for (m, e, _), rows in cur.items() if m == mix and e == entry for r in rows]
    return sum(secs) / len(secs)


def _per_round_bytes(results: Path, entry: str) -> float:
    tot = [json.loads((results / str(sd) / entry / "summary.json").read_text())["bytes_total"]
           / len(_read(results / str(sd) / entry / "metrics.csv")) for sd in seeds_of(results)]
    return sum(tot) / len(tot)


def _overlap(summary: list[dict[str, Any]], mixes: list[str]) -> str:
    """Which baselines' paired time differences to SFPrompt (low target) have intervals containing 0."""
    parts = []
    for e in ("sfl_v1", "sfl_v2", "sl", "fl_full"):
        n = sum(1 for m in mixes if (r := _low(summary, m, e))["time_minus_sfprompt_lo"] <= 0 <= r["time_minus_sfprompt_hi"])
        parts.append(f"{NAMES[e]} {n}")
    return ("Mixes (of " + str(len(mixes)) + ") where the paired 95 % interval of baseline − SFPrompt time still "
            "contains 0: " + ", ".join(parts) + ".")


def _span(d: dict[str, float], fmt: str = ".2f") -> str:
    lo, hi = min(d, key=d.get), max(d, key=d.get)
    return f"{d[lo]:{fmt}}x ({lo}) to {d[hi]:{fmt}}x ({hi})"


def headline(summary: list[dict[str, Any]], cur: Any, results: Path, mixes: dict[str, list[str]],
             fit: list[dict[str, Any]], goal: dict[str, float], srv_k: dict[str, float]) -> str:
    """The short answer, every number computed from the artifacts."""
    first = [m for m in mixes if (_ranked(summary, m, "low") or [{}])[0].get("entry") == "sfprompt"]
    ratio = {m: _low(summary, m, "fl_full")["time_mean"] / _low(summary, m, "sfprompt")["time_mean"] for m in mixes}
    runner = {m: (_ranked(summary, m, "low") + [{}, {}])[1].get("entry") for m in mixes}
    v1 = {m: _low(summary, m, "sfl_v1")["time_mean"] / _low(summary, m, "sfprompt")["time_mean"] for m in mixes}
    rnd = {m: _mean_round(cur, m, "sfprompt") / _mean_round(cur, m, "sfl_v1") for m in mixes}
    m0 = next(iter(mixes))
    byt = _low(summary, m0, "fl_full")["bytes_mean"] / _low(summary, m0, "sfprompt")["bytes_mean"]
    lines = [f"- **Low target {goal['low']:.3f}**: SFPrompt is first on {len(first)} of {len(mixes)} mixes"
             + (f" ({', '.join(first)})" if 0 < len(first) < len(mixes) else "") + f". FL-Full takes {_span(ratio, '.1f')} "
             f"SFPrompt's mean time and {byt:.1f}x its bytes. Runner-up: "
             f"{', '.join(sorted({NAMES.get(e, str(e)) for e in runner.values()}))}. SFL-V1 takes {_span(v1)} "
             f"SFPrompt's time: an SFPrompt round lasts {_span(rnd)} an SFL-V1 round (with pruning it sends "
             f"{_per_round_bytes(results, 'sfprompt') / _per_round_bytes(results, 'sfl_v1'):.2f}x SFL-V1's bytes per "
             f"round), while it needs {_low(summary, m0, 'sfprompt')['rounds_mean']:.1f} rounds on average to SFL-V1's "
             f"{_low(summary, m0, 'sfl_v1')['rounds_mean']:.1f}. " + _overlap(summary, list(mixes))]
    if "high" in goal:
        sp = {m: _low(summary, m, "sfprompt", "high") for m in mixes}
        best = sorted({NAMES.get((_ranked(summary, m, "high") or [{}])[0].get("entry"), "—") for m in mixes})
        lines.append(f"- **High target {goal['high']:.3f}** (FL-Full's level): SFPrompt reaches it in at most "
                     f"{max(r['reached'] for r in sp.values())} of {sp[m0]['seeds']} seeds on any mix; the fastest "
                     f"there is {' / '.join(best)}."
                     + (" This is where SFPrompt loses: with a frozen body it trains only prompts and the tail, on "
                        "half of each client's images, and stops short of the accuracy that the body-training "
                        "strategies reach in the same rounds." if any(r["reached"] < r["seeds"] for r in sp.values())
                        else ""))
    share = {}
    per = tta(results, "low")
    for m in mixes:
        upto = {sd: (int(x["rounds_to_target"]) if x["rounds_to_target"] else None) for sd, x in per[(m, "sfprompt")].items()}
        b = breakdown(cur, m, "sfprompt", upto)
        share[m] = b["rtt"] / sum(b[q] for q in PARTS) if b else math.nan
    top = max(share, key=share.get)
    lines.append(f"- **RTT** is at most {100 * share[top]:.0f}% of SFPrompt's critical path ({top})"
                 + ("; transfer, not latency, dominates its time on every mix here" if share[top] < 0.5 else "")
                 + ". The RTT at which SFPrompt would lose to FL-Full (linear extrapolation): "
                 + ", ".join(f"{m} {break_even(summary, cur, results, m)}" for m in mixes) + ".")
    if srv_k:
        lines.append(f"- **The server** is where SFPrompt would lose at scale: with one that computes one request at a "
                     f"time, about {_span(srv_k, ',.0f').replace('x (', ' (')} clients per round would make an SFPrompt "
                     "round as long as FL-Full's, whose round does not grow with the clients (a linear extrapolation "
                     "from these runs).")
    refused = [m for m, (d, _) in mixes.items() if "**no**" in fits(fit, "fl_full", d)]
    split_ok = all("**no**" not in fits(fit, e, d) for e in {r["entry"] for r in fit} - {"fl_full"} for d, _ in mixes.values())
    if refused:
        lines.append(f"- **Memory**: FL-Full's client part ({fits(fit, 'fl_full', mixes[refused[0]][0]).split(':')[0]}) "
                     f"does not fit some device of {', '.join(refused)}: fedft would refuse FL-Full there"
                     + ("; every split strategy's part fits every device of every mix." if split_ok else "."))
    return "\n".join(lines) + "\n"


def distinct(targets: dict[str, float]) -> dict[str, float]:
    """The targets without those equal to an earlier one (two rules may pick the same run)."""
    out: dict[str, float] = {}
    for name, v in targets.items():
        if all(abs(v - w) > 1e-9 for w in out.values()):
            out[name] = v
    return out


def build(results: Path, figure_path: Path | None) -> str:
    study = json.loads((results / "study.json").read_text())
    fit = json.loads((results / "fit.json").read_text()) if (results / "fit.json").is_file() else []
    summary = summarise(results)
    cur = curves(results)
    entries, mixes, goal = list(study["entries"]), study["mixes"], distinct(study["targets"])
    if figure_path is not None:
        figure(cur, list(mixes), entries, goal, figure_path)
    return "\n".join(sections(study, results, summary, cur, fit, entries, mixes, goal, figure_path))


def sections(study: dict[str, Any], results: Path, summary: list[dict[str, Any]], cur: Any, fit: list[dict[str, Any]],
             entries: list[str], mixes: dict[str, list[str]], goal: dict[str, float], fig: Path | None) -> list[str]:
    k = break_even_clients(results, cur, list(mixes))
    out = [HEADER, "## The short answer", "", headline(summary, cur, results, mixes, fit, goal, k),
           setting_section(study, results), "## Device/network mixes", "", mixes_section(mixes),
           "## What each entry trains to and costs (seeds: mean [95 % t-interval])", "",
           accuracy_section(results, entries), retime_check(cur, results, study), "## Targets", ""]
    every = study["targets"]
    out += [f"- **{n}**: {v:.4f} = {TARGET_RULES[n][1]}." + ("" if n in goal else " The same value as an earlier "
                                                               "target here, so not repeated below.")
            for n, v in every.items()] + [""]
    out += ["## Time and bytes to the low target, per mix", "", MIX_NOTE, ""]
    for mix, (devs, _) in mixes.items():
        out += [f"### {mix}", "", mix_table(summary, cur, results, mix, devs, entries, fit)]
    out += ["## Paired differences (baseline − SFPrompt, same seed; positive: SFPrompt is faster / sends less)", "",
            "Pairs only over the seeds where both reached the target.", ""]
    for t in goal:
        out += [f"{t.capitalize()} target ({goal[t]:.3f}):", "", paired_table(summary, t, list(mixes), entries)]
    for t in [t for t in goal if t != "low"]:
        out += [f"## Time to the {t} target, {goal[t]:.3f} (reached in n of the seeds)", "",
                target_table(summary, t, list(mixes), entries)]
    out += [
            "## One round's simulated length (mean over rounds and seeds)", "", round_table(cur, list(mixes), entries),
            "## A server that computes one request at a time", "",
            one_slot_section(results, cur, list(mixes), study["targets"]["mid"]),
            "## Where SFPrompt wins and where it loses", "", where_section(summary, cur, results, mixes, list(goal)),
            "RTT at which SFPrompt's time to the low target would equal FL-Full's (each critical path otherwise "
            "unchanged; a linear extrapolation, not a run):", ""]
    out += [f"- {mix}: {break_even(summary, cur, results, mix)}" for mix in mixes] + [""]
    out += ["## Verdict cards: \"SFPrompt reaches the target faster than FL-Full on resource-limited devices\"", "",
            CLAIM, ""] + [f"- {card(summary, mix, list(goal), fit, devs)}" for mix, (devs, _) in mixes.items()] + [""]
    if fig is not None:
        out += [f"![accuracy vs simulated time]({fig.relative_to(REPORT.parent)})", ""]
    out += ["## Commands", "", "```", *study["commands"], "```", "", "Equivalent `fedft compare` for one seed "
            "(training and re-timing; the study runs it one entry per process so that a killed run resumes):", "",
            "```", study["compare_command"], "```", "", LIMITS]
    return out


HEADER = """# Time and bytes to an accuracy on resource-limited devices (issue 18, item 6)

SFPrompt, FL-Full, SFL-V1, SFL-V2 and SL, trained once per seed and each run re-timed on several
device/network mixes from its recorded client plans (`fedft.resources.retime`, as `fedft compare
--mix` does): simulated time and bytes until the validation accuracy first reaches a target.
Numbers are means over seeds with the 95 % Student-t interval in brackets; every number below is
computed by `experiments/resources_compare_report.py` from the artifacts in
`experiments/results/resources/compare/`.
"""
WHY = """Why these sizes [D]: 5 strategies x 3 seeds had to fit about 40 minutes of one CPU core.
Kept from the main job: DINOv2-small with its real weights, MNIST at 112 px, batch 8, Dirichlet(0.5)
label skew, SFPrompt's settings, so the FLOPs per image and the bytes per batch (what the time model
turns into seconds) are the main job's. Cut: the images (250 training images over 5 clients, about 50
each instead of 200), the rounds (5 instead of 10) and the validation set (150, evaluated every round
so that time-to-target is resolved per round); the final test set (100 images) is not used. In-process
engine and one thread: the same handlers and body service without Ray's start-up."""
MIX_NOTE = """"Critical path": in each round (each group, for SL's one-client-at-a-time groups) the
client that finished last; its compute, transfer, RTT, server and queue seconds add up to the
round's simulated length, summed to the round where the target is reached, averaged over seeds.
Bytes are all clients' bytes (the run's ledger), rounds are rounds to the target; both are the
same on every mix (the training is), only the time changes. "Client part
fits": the client's part of one training step (parameters, gradients, optimizer state,
activations, wire buffers, the idle runtime; fp32; `fedft.resources.memory`, a floor) against the
device's memory."""
CLAIM = """Claim: SFPrompt suits resource-limited devices (the paper: Cao et al., arXiv 2407.17533, reports
0.46 % of FL-Full's client FLOPs and 0.47x its communication for ViT-B, not wall time on devices;
"reaches the target faster" is the user's question that those numbers imply). Rule [D], per target: reproduced
when SFPrompt reaches the target in every seed and the paired interval of FL-Full − SFPrompt
lies above 0; not reproduced when SFPrompt misses the target in some seed or the interval lies below
0; inconclusive otherwise. How our setting differs from the paper's: DINOv2-small instead of ViT-B/L,
MNIST at 112 px with 250 training images over 5 clients and 5 rounds (the paper: CIFAR-scale data,
many more rounds), simulated devices and links (fedft's catalogue) instead of a measured deployment,
h = t = 0."""
LIMITS = """## Limits

- Simulated, not measured: the time model (docs/resources.md) has independent links, no TCP slow
  start, one sustained FLOP rate per device, a server (`server-cpu`, 1.5 TFLOP/s) that runs every
  client's request at full rate at once when the body is not shared (`resources.server_parallel =
  0`, SFPrompt's frozen body and SFL-V1's copies) and one at a time when it is (SFL-V2, SL).
  Aggregation and evaluation take no simulated time.
- Scaled down: about 50 images per client instead of the main job's 200. Per round, a split
  client's traffic and every client's compute grow with its images, FL-Full's model transfer does
  not: at the main job's size the split strategies' rounds would be about 4x longer on every link,
  FL-Full's only in their compute part.
- Accuracy per round comes from real training at this small size (SFPrompt's pruning keeps half of
  each client's images for its split phase), so the targets sit below the main job's accuracies.
- Few seeds give wide t-intervals (with 3 seeds, t = 4.30 for 2 degrees of freedom).
- FL-Full's time on a mix whose devices cannot hold its client part is hypothetical: fedft's memory
  check would refuse that run.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--out", type=Path, default=REPORT)
    p.add_argument("--no-figure", action="store_true")
    a = p.parse_args()
    md = build(a.results, None if a.no_figure else FIGURE)
    a.out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
