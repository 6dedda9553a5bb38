"""PNG plots of a run (validation accuracy per round, accuracy vs cumulative bytes, bytes by kind) and of a comparison."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedft.accounting import CommLedger  # noqa: E402


def _floats(rows: list[dict[str, str]], col: str) -> list[float]:
    return [float(r[col]) if r.get(col) not in (None, "") else float("nan") for r in rows]


def plot_accuracy(rows: list[dict[str, str]], x: str, out: str | Path) -> None:
    """Validation accuracy against round (or epoch)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(_floats(rows, x), _floats(rows, "val_accuracy"), marker="o")
    ax.set_xlabel(x)
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_bytes(series: dict[str, list[dict[str, str]]], out: str | Path) -> None:
    """Validation accuracy against cumulative bytes communicated, one line per run."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in series.items():
        mb = [b / 1e6 for b in _floats(rows, "bytes_cumulative")]
        ax.plot(mb, _floats(rows, "val_accuracy"), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes communicated (MB, log scale)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_bytes_by_kind(ledger: CommLedger, out: str | Path) -> None:
    """Total bytes per message kind (horizontal bars, MB)."""
    by_kind = ledger.by_kind()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(by_kind)
    ax.barh(names, [by_kind[k] / 1e6 for k in names])
    ax.set_xlabel("MB")
    ax.set_title("bytes by kind")
    for i, k in enumerate(names):
        ax.text(by_kind[k] / 1e6, i, f" {by_kind[k] / 1e6:.3g}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_time(series: dict[str, list[dict[str, str]]], out: str | Path) -> None:
    """Validation accuracy against cumulative simulated time ([resources]), one line per run."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in series.items():
        ax.plot([s / 60 for s in _floats(rows, "sim_cumulative")], _floats(rows, "val_accuracy"), marker="o", label=name)
    ax.set_xlabel("simulated time (minutes)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
