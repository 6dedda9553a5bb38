"""Run directory: resolved config, metrics.csv, ledger.csv, summary.json, plots and the summary table.

File names and CSV columns are stable; other tools read them.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from fedft.accounting import CommLedger
from fedft.config import ExperimentConfig, to_toml

CONFIG = "config.toml"
METRICS = "metrics.csv"
LEDGER = "ledger.csv"
GENERATIONS = "generations.jsonl"  # the final model's completions under [generate]
SUMMARY = "summary.json"
PARTITIONS = "partitions.json"


def default_run_dir(cfg: ExperimentConfig) -> Path:
    """``runs/<strategy>-<method>-<timestamp>`` unless ``output.dir`` is set."""
    if cfg.output.dir:
        return Path(cfg.output.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.federation.strategy}-{cfg.method.name}-{stamp}"


class RunDir:
    """Writes the files of one run; creating it never deletes anything already there."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._metric_cols: list[str] | None = None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg: ExperimentConfig) -> None:
        self.file(CONFIG).write_text(to_toml(cfg))

    def start_metrics(self, columns: list[str]) -> None:
        """Start (overwrite) metrics.csv with a fixed header."""
        self._metric_cols = columns
        with open(self.file(METRICS), "w", newline="") as f:
            csv.writer(f).writerow(columns)

    def resume_metrics(self, columns: list[str], upto: int) -> None:
        """Keep the rows of metrics.csv up to round/epoch ``upto`` (a resumed run continues after it)."""
        rows = read_metrics(self.file(METRICS)) if self.file(METRICS).is_file() else []
        key = columns[0]
        self.start_metrics(columns)
        for r in rows:
            if int(r[key]) <= upto:
                self.append_metrics({k: v for k, v in r.items() if k in columns})

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row (per epoch or round); unknown columns are an error, missing ones empty."""
        if self._metric_cols is None:
            raise RuntimeError("start_metrics() first")
        extra = set(row) - set(self._metric_cols)
        if extra:
            raise KeyError(f"metrics row has unknown columns {sorted(extra)}")
        with open(self.file(METRICS), "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in self._metric_cols])

    def write_ledger(self, ledger: CommLedger) -> None:
        ledger.to_csv(self.file(LEDGER))

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.file(SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} B"


def print_summary(summary: dict[str, Any], title: str = "fedft run") -> None:
    """The end-of-run table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                table.add_row(f"{k}.{kk}", human_bytes(vv) if k.startswith("bytes") else _show(vv))
        elif k.startswith("bytes"):
            table.add_row(k, human_bytes(v))
        else:
            table.add_row(k, _show(v))
    Console(stderr=False).print(table)


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
