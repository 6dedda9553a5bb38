"""``fedft compare``: several strategies on identical data, partitions and seeds, one plot.

Every entry runs from the same config (only ``federation.strategy``, what the strategy itself
defines, and the entry's own overrides or config file change), so data, partitions, sampled
clients, rounds and initial weights are the same. In the
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

COLUMNS = ["entry", "strategy", "method", "rounds", "val_accuracy", "final_accuracy", "bytes_total", "params_bytes", "split_bytes",
           "control_bytes", "client_flops", "server_flops", "travelling_params", "wall_seconds"]


def _row(s: dict[str, Any]) -> dict[str, Any]:
    k = s.get("bytes_by_kind", {})
    return {
        "strategy": s["strategy"], "method": s["method"], "rounds": s.get("rounds", s.get("epochs")),
        "val_accuracy": s.get("val_accuracy"), "final_accuracy": s["final_accuracy"], "bytes_total": s.get("bytes_total", 0),
        "params_bytes": k.get("params_down", 0) + k.get("params_up", 0),
        "split_bytes": sum(v for kk, v in k.items() if kk.startswith(("activations", "grads"))),
        "control_bytes": k.get("control", 0), "client_flops": s.get("client_flops", 0),
        "server_flops": s.get("server_flops", 0), "travelling_params": s.get("travelling_params", 0),
        "wall_seconds": s["wall_seconds"],
    }


SHARED = ("seed", "data", "partition")  # what an entry's own config file may not change
SHARED_FEDERATION = ("rounds", "engine", "clients_per_round", "eval_every", "cpus_per_client")


def parse_entries(items: list[str]) -> list[tuple[str, str]]:
    """``strategy`` or ``label=strategy`` items -> (label, strategy) pairs, labels unique."""
    pairs = [tuple(i.split("=", 1)) if "=" in i else (i, i) for i in items]
    labels = [p[0] for p in pairs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"--strategies names {', '.join(dup)} twice; give each entry its own label=strategy")
    return [(a.strip(), b.strip()) for a, b in pairs]  # type: ignore[misc]


def entry_config(cfg: ExperimentConfig, label: str, strategy: str, overrides: list[str],
                 config_file: Path | None) -> ExperimentConfig:
    """One entry's config: ``cfg`` (or ``config_file`` with cfg's seed, data, partition and round
    settings), its strategy, then its own overrides; configured by the strategy."""
    base = cfg.to_dict()
    if config_file is not None:
        own = ExperimentConfig.from_toml(config_file).to_dict()
        own.update({k: base[k] for k in SHARED})
        own["federation"].update({k: base["federation"][k] for k in SHARED_FEDERATION})
        base = own
    base["federation"]["strategy"] = strategy
    c = build(ExperimentConfig, merge(base, parse_overrides(overrides)))
    if any(getattr(c, k) != getattr(cfg, k) for k in SHARED):
        raise ConfigError(f"--set-for {label}: seed, [data] and [partition] are shared by every entry; "
                          "set them with --set")
    return STRATEGIES.get(strategy).configure(c)


def compare(cfg: ExperimentConfig, strategies: list[str], out: str | Path, show: bool = True,
            per_strategy: dict[str, list[str]] | None = None,
            config_for: dict[str, Path] | None = None, mixes: list[str] | None = None,
            target: float | None = None) -> list[dict[str, Any]]:
    """Run the entries ``strategies`` (``strategy`` or ``label=strategy``) on ``cfg``; write
    DIR/<label>/..., DIR/compare.csv and the plot.

    ``per_strategy`` maps a label to ``key=value`` overrides applied to it alone (tuned baseline
    learning rates, say); ``config_for`` maps a label to a TOML file whose settings it uses
    instead of ``cfg``'s. Data, partitions, seeds and rounds stay shared. An entry whose run
    directory already holds a summary for the same config is not run again (a resumed compare).
    ``mixes`` (``LABEL=DEVICES@NETWORKS``) re-time every entry on each device/network mix
    (:mod:`fedft.resources.timing`) and write time- and bytes-to-``target`` accuracy.
    """
    parsed = parse_mixes(mixes or [])
    if parsed and not cfg.resources.enabled:  # record plans with the first mix's profiles
        first = next(iter(parsed.values()))
        cfg = cfg.replace(resources=dataclasses.replace(cfg.resources, devices=first[0], networks=first[1]))
    per_strategy, config_for = per_strategy or {}, config_for or {}
    entries = parse_entries(strategies)
    labels = [e[0] for e in entries]
    unknown = sorted((set(per_strategy) | set(config_for)) - set(labels))
    if unknown:
        raise ConfigError(f"--set-for/--config-for names {', '.join(unknown)}, which is not in --strategies "
                          f"{','.join(labels)}")
    for _, s in entries:
        if s not in STRATEGIES:
            raise ConfigError(f"unknown strategy {s!r} in --strategies; allowed: {', '.join(STRATEGIES.names())}")
        if STRATEGIES.get(s).family == "central":
            raise ConfigError("fedft compare runs federated strategies; run 'central' with fedft run")
    out = Path(out)
    jobs = [(entry_config(cfg, lab, s, per_strategy.get(lab, []), config_for.get(lab)), RunDir(out / lab))
            for lab, s in entries]
    done = {i: _finished(c, rd) for i, (c, rd) in enumerate(jobs)}
    todo = [j for i, j in enumerate(jobs) if done[i] is None]
    summaries = iter(_run(cfg, todo, show) if todo else [])
    results = [done[i] if done[i] is not None else next(summaries) for i in range(len(jobs))]
    rows = write_outputs(out, labels, results)
    if show:
        _print(rows)
    if parsed:
        from fedft.resources.report import time_to_accuracy

        time_to_accuracy(out, labels, parsed, target, show)
    return results


def parse_mixes(items: list[str]) -> dict[str, tuple[str, str]]:
    """``LABEL=DEVICES@NETWORKS`` items -> {label: (devices, networks)}."""
    out: dict[str, tuple[str, str]] = {}
    for item in items:
        label, sep, rest = item.partition("=")
        devices, at, networks = rest.rpartition("@")
        if not sep or not at or not devices or not networks or label in out:
            raise ConfigError(f"--mix {item!r} must look like LABEL=DEVICES@NETWORKS with a new label, "
                              "e.g. phones=phone-mid=0.5,phone-low=0.5@4g")
        out[label.strip()] = (devices.strip(), networks.strip())
    return out


def _finished(c: ExperimentConfig, rd: RunDir) -> dict[str, Any] | None:
    """The summary of an earlier run of exactly this config in ``rd``, if there is one."""
    import json

    from fedft.config import to_toml
    from fedft.outputs import CONFIG, SUMMARY

    if rd.file(SUMMARY).is_file() and rd.file(CONFIG).is_file() and rd.file(CONFIG).read_text() == to_toml(c):
        return json.loads(rd.file(SUMMARY).read_text())
    return None


def _run(cfg: ExperimentConfig, jobs: list[tuple[ExperimentConfig, RunDir]], show: bool) -> list[dict[str, Any]]:
    if cfg.federation.engine == "simulation":
        from fedft.federated.simulation import run_simulated

        return run_simulated(jobs)
    from fedft.federated.engine import run_inprocess
    from fedft.federated.server import ServerRuntime

    summaries = []
    for c, rd in jobs:
        rd.write_config(c)
        s = run_inprocess(ServerRuntime(c, rd), progress=show)
        s["run_dir"] = str(rd.path)
        rd.write_summary(s)
        summaries.append(s)
    return summaries


def write_outputs(out: Path, labels: list[str], summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``out/compare.csv`` (one row per entry) and ``out/accuracy_vs_bytes.png`` from the run
    directories ``out/<label>/``; returns the rows."""
    rows = [{"entry": lab, **_row(s)} for lab, s in zip(labels, summaries, strict=True)]
    with open(out / "compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    from fedft.plots import plot_accuracy_vs_bytes

    series = {s: [r for r in read_metrics(out / s / METRICS) if r.get("val_accuracy")] for s in labels}
    plot_accuracy_vs_bytes(series, out / "accuracy_vs_bytes.png")
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="fedft compare")
    for c in ("entry", "val_accuracy", "final_accuracy", "bytes_total", "params_bytes", "split_bytes", "client_flops",
              "wall_seconds"):
        t.add_column(c, justify="left" if c == "entry" else "right")
    for r in rows:
        val = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        t.add_row(r["entry"], val, f"{r['final_accuracy']:.4f}", human_bytes(r["bytes_total"]),
                  human_bytes(r["params_bytes"]), human_bytes(r["split_bytes"]), f"{r['client_flops']:.3g}",
                  f"{r['wall_seconds']:.1f}")
    Console().print(t)
