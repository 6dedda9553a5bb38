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
    cls = STRATEGIES.get(cfg.federation.strategy)
    cfg = cls.configure(cfg)
    rd.write_config(cfg)
    summary = cls(cfg).run(cfg, rd.path, resume, show)
    summary["run_dir"] = str(rd.path)
    rd.write_summary(summary)
    if show:
        print_summary(summary, title=f"fedft run: {cfg.federation.strategy} / {cfg.method.name}")
    if cfg.privacy.enabled:  # attack the run's own traffic (writes privacy.json / privacy.png)
        from fedft.privacy.audit import AuditOptions, audit
        from fedft.privacy.report import print_table

        result = audit(rd.path, AuditOptions.from_config(cfg.privacy))
        if show:
            print_table(result)
    return summary


def resume(run_dir: str | Path, show: bool = True) -> dict[str, Any]:
    """Continue the run in ``run_dir`` with its own resolved config."""
    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise FedftError(f"{path} is not a fedft run directory (no {CONFIG}); nothing to resume")
    cfg = ExperimentConfig.from_toml(path / CONFIG)
    return run(cfg, path, show=show, resume=True)
