"""``fedft run``: one experiment from a config to a run directory and a summary table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedft.config import ExperimentConfig
from fedft.outputs import RunDir, default_run_dir, print_summary
from fedft.strategies import STRATEGIES

log = logging.getLogger(__name__)


def run(cfg: ExperimentConfig, out: str | Path | None = None, show: bool = True) -> dict[str, Any]:
    """Run ``cfg``; writes config.toml, metrics.csv, summary.json and plots; returns the summary."""
    rd = RunDir(out or default_run_dir(cfg))
    rd.write_config(cfg)
    info = STRATEGIES.get(cfg.federation.strategy)
    cfg = info.configure(cfg)
    rd.write_config(cfg)
    if info.family == "central":
        from fedft.central import run_central

        summary = run_central(cfg, rd)
    elif cfg.federation.engine == "inprocess":
        from fedft.federated.engine import run_inprocess
        from fedft.federated.server import ServerRuntime

        summary = run_inprocess(ServerRuntime(cfg, rd), progress=show)
    else:
        from fedft.federated.simulation import run_simulated

        summary = run_simulated([(cfg, rd)])[0]
    summary["run_dir"] = str(rd.path)
    rd.write_summary(summary)
    if show:
        print_summary(summary, title=f"fedft run: {cfg.federation.strategy} / {cfg.method.name}")
    return summary
