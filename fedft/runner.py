"""``fedft run``: one experiment from a config to a run directory and a summary table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.outputs import CONFIG, RunDir, default_run_dir, print_summary
from fedft.strategies import STRATEGIES

log = logging.getLogger(__name__)


def run(cfg: ExperimentConfig, out: str | Path | None = None, show: bool = True,
        resume: bool = False) -> dict[str, Any]:
    """Run ``cfg``; writes config.toml, metrics.csv, summary.json and plots; returns the summary.

    With ``resume``, continue the federated run in ``out`` from its last checkpoint."""
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

        srv = ServerRuntime(cfg, rd)
        if resume:
            srv.resume_from(_checkpoint(rd))
        summary = run_inprocess(srv, progress=show)
    else:
        from fedft.federated.simulation import run_simulated

        if resume:
            _checkpoint(rd)
        summary = run_simulated([(cfg, rd)], resume=resume)[0]
    summary["run_dir"] = str(rd.path)
    rd.write_summary(summary)
    if show:
        print_summary(summary, title=f"fedft run: {cfg.federation.strategy} / {cfg.method.name}")
    return summary


def _checkpoint(rd: RunDir) -> Any:
    from fedft.federated.checkpoint import load

    ckpt = load(rd.path)
    if ckpt is None:
        raise FedftError(f"{rd.path} has no checkpoint to resume from (it is written after each round)")
    return ckpt


def resume(run_dir: str | Path, show: bool = True) -> dict[str, Any]:
    """Continue the run in ``run_dir`` with its own resolved config."""
    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise FedftError(f"{path} is not a fedft run directory (no {CONFIG}); nothing to resume")
    cfg = ExperimentConfig.from_toml(path / CONFIG)
    if STRATEGIES.get(cfg.federation.strategy).family == "central":
        raise FedftError("central runs cannot be resumed; run them again")
    return run(cfg, path, show=show, resume=True)
