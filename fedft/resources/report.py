"""Time- and bytes-to-accuracy of several runs on several device/network mixes (``fedft compare
--mix``): each run is re-timed on each mix (:mod:`fedft.resources.retime`), so the comparison
trains once per entry, however many mixes it is read on."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fedft.outputs import METRICS, human_bytes, read_metrics
from fedft.resources.retime import retime, time_to
from fedft.resources.timing import fmt_seconds

TTA = "time_to_accuracy.csv"
COLUMNS = ["mix", "devices", "networks", "entry", "target", "time_to_target_s", "bytes_to_target",
           "rounds_to_target", "sim_seconds_total", "best_val_accuracy", "energy_j_total"]


def default_target(run_dirs: list[Path]) -> float:
    """0.95 x the lowest best validation accuracy among the runs (every run reaches it). [D]"""
    best = []
    for d in run_dirs:
        accs = [float(r["val_accuracy"]) for r in read_metrics(d / METRICS) if r.get("val_accuracy")]
        best.append(max(accs, default=0.0))
    return 0.95 * min(best, default=0.0)


def time_to_accuracy(out: Path, labels: list[str], mixes: dict[str, tuple[str, str]], target: float | None,
                     show: bool = True) -> list[dict[str, Any]]:
    """Write ``out/time_to_accuracy.csv`` and ``out/accuracy_vs_time_<mix>.png``; return the rows."""
    from fedft.plots import plot_accuracy_vs_time

    target = default_target([out / lab for lab in labels]) if target is None else target
    rows = []
    for mix, (devices, networks) in mixes.items():
        series = {}
        for lab in labels:
            timed = retime(out / lab, devices, networks)
            series[lab] = [{k: "" if v is None else str(v) for k, v in r.items()} for r in timed if r["val_accuracy"]]
            reached = time_to(timed, target, "round")
            energy = [r["sim_energy_j"] for r in timed if r["sim_energy_j"] is not None]
            accs = [float(r["val_accuracy"]) for r in timed if r["val_accuracy"]]
            rows.append({"mix": mix, "devices": devices, "networks": networks, "entry": lab, "target": target,
                         "time_to_target_s": time_to(timed, target), "bytes_to_target": time_to(timed, target,
                                                                                              "bytes_cumulative"),
                         "rounds_to_target": None if reached is None else int(reached),
                         "sim_seconds_total": timed[-1]["sim_cumulative"] if timed else None,
                         "best_val_accuracy": max(accs, default=None), "energy_j_total": sum(energy) if energy else None})
        plot_accuracy_vs_time(series, out / f"accuracy_vs_time_{mix}.png")
    with open(out / TTA, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    if show:
        _print(rows, target)
    return rows


def _print(rows: list[dict[str, Any]], target: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"time and bytes to validation accuracy {target:.3f} (simulated)")
    for c in ("mix", "entry", "time to target", "bytes to target", "rounds", "total sim time", "energy J"):
        t.add_column(c, justify="left" if c in ("mix", "entry") else "right")
    for r in rows:
        tt, bt = r["time_to_target_s"], r["bytes_to_target"]
        t.add_row(r["mix"], r["entry"], "-" if tt is None else fmt_seconds(tt), "-" if bt is None else human_bytes(bt),
                  "-" if r["rounds_to_target"] is None else str(r["rounds_to_target"]),
                  fmt_seconds(r["sim_seconds_total"] or 0.0),
                  "-" if r["energy_j_total"] is None else f"{r['energy_j_total']:.3g}")
    Console().print(t)
