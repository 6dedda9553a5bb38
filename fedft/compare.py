"""``fedft compare``: several strategies on identical data, partitions and seeds, one plot.

Every strategy runs from the same config (only ``federation.strategy`` and what the strategy
itself defines change), so partitions, sampled clients and initial weights are the same. In the
simulation engine all strategies share one Flower simulation session (Ray starts once).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

from fedft.config import ExperimentConfig, build, merge, parse_overrides
from fedft.errors import ConfigError
from fedft.outputs import METRICS, RunDir, human_bytes, read_metrics
from fedft.strategies import STRATEGIES

COLUMNS = ["strategy", "method", "rounds", "final_accuracy", "bytes_total", "params_bytes", "split_bytes",
           "control_bytes", "client_flops", "server_flops", "travelling_params", "wall_seconds"]


def _row(s: dict[str, Any]) -> dict[str, Any]:
    k = s.get("bytes_by_kind", {})
    return {
        "strategy": s["strategy"], "method": s["method"], "rounds": s.get("rounds", s.get("epochs")),
        "final_accuracy": s["final_accuracy"], "bytes_total": s.get("bytes_total", 0),
        "params_bytes": k.get("params_down", 0) + k.get("params_up", 0),
        "split_bytes": sum(v for kk, v in k.items() if kk.startswith(("activations", "grads"))),
        "control_bytes": k.get("control", 0), "client_flops": s.get("client_flops", 0),
        "server_flops": s.get("server_flops", 0), "travelling_params": s.get("travelling_params", 0),
        "wall_seconds": s["wall_seconds"],
    }


def compare(cfg: ExperimentConfig, strategies: list[str], out: str | Path, show: bool = True,
            per_strategy: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Run ``strategies`` on ``cfg``; write DIR/<strategy>/..., DIR/compare.csv and the plot.

    ``per_strategy`` maps a strategy to ``key=value`` overrides applied to it alone (tuned
    baseline learning rates, say); data, partitions and seeds stay shared.
    """
    per_strategy = per_strategy or {}
    unknown = sorted(set(per_strategy) - set(strategies))
    if unknown:
        raise ConfigError(f"--set-for names {', '.join(unknown)}, which is not in --strategies {','.join(strategies)}")
    for s in strategies:
        if s not in STRATEGIES:
            raise ConfigError(f"unknown strategy {s!r} in --strategies; allowed: {', '.join(STRATEGIES.names())}")
        if STRATEGIES.get(s).family == "central":
            raise ConfigError("fedft compare runs federated strategies; run 'central' with fedft run")
    out = Path(out)
    jobs = []
    for s in strategies:
        c = cfg.replace(federation=dataclasses.replace(cfg.federation, strategy=s))
        if per_strategy.get(s):
            c = build(ExperimentConfig, merge(c.to_dict(), parse_overrides(per_strategy[s])))
        jobs.append((STRATEGIES.get(s).configure(c), RunDir(out / s)))
    if cfg.federation.engine == "simulation":
        from fedft.federated.simulation import run_simulated

        summaries = run_simulated(jobs)
    else:
        from fedft.federated.engine import run_inprocess
        from fedft.federated.server import ServerRuntime

        summaries = []
        for c, rd in jobs:
            rd.write_config(c)
            s = run_inprocess(ServerRuntime(c, rd), progress=show)
            s["run_dir"] = str(rd.path)
            rd.write_summary(s)
            summaries.append(s)
    rows = write_outputs(out, strategies, summaries)
    if show:
        _print(rows)
    return summaries


def write_outputs(out: Path, strategies: list[str], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``out/compare.csv`` (one row per summary) and ``out/accuracy_vs_bytes.png`` from the run
    directories ``out/<strategy>/``; returns the rows."""
    rows = [_row(s) for s in summaries]
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    from fedft.plots import plot_accuracy_vs_bytes

    series = {s: [r for r in read_metrics(out / s / METRICS) if r.get("accuracy")] for s in strategies}
    plot_accuracy_vs_bytes(series, out / "accuracy_vs_bytes.png")
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="fedft compare")
    for c in ("strategy", "final_accuracy", "bytes_total", "params_bytes", "split_bytes", "client_flops",
              "wall_seconds"):
        t.add_column(c, justify="left" if c == "strategy" else "right")
    for r in rows:
        t.add_row(r["strategy"], f"{r['final_accuracy']:.4f}", human_bytes(r["bytes_total"]),
                  human_bytes(r["params_bytes"]), human_bytes(r["split_bytes"]), f"{r['client_flops']:.3g}",
                  f"{r['wall_seconds']:.1f}")
    Console().print(t)
