"""Re-time a finished run on other devices and links, without training again.

A run with ``[resources]`` writes its clients' plans (``sim_plans.jsonl``: FLOPs per segment,
bytes and server FLOPs per exchange; nothing profile-specific). What the clients computed and sent
does not depend on how fast their devices are, unless the resource model changed the training
itself: a deadline, availability or over-selection decide who trains and for how long. So a run
without those can be re-simulated under any other device/network mix, and its accuracy curve
read against the new simulated time. ``fedft compare`` and the resources report use this to put
one set of training runs on several mixes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.outputs import CONFIG, METRICS, read_metrics
from fedft.resources.clock import RoundClock
from fedft.resources.config import ResourcesConfig
from fedft.resources.rounds import SIM_PLANS
from fedft.resources.timing import ClientPlan, Exchange


def _shaping(r: ResourcesConfig) -> list[str]:
    """The settings under which the resource model changed the training itself."""
    out = []
    if r.deadline_s:
        out.append("resources.deadline_s")
    if r.availability != "always":
        out.append("resources.availability")
    if r.over_selection:
        out.append("resources.over_selection")
    return out


def retime(run_dir: str | Path, devices: str, networks: str, **other: Any) -> list[dict[str, Any]]:
    """Per-round rows (round, val_accuracy, bytes_cumulative, sim_seconds, sim_cumulative,
    sim_energy_j, and the critical path: ``crit_<compute|transfer|rtt|server|queue>_s`` of the
    client that finished each group last, ``crit_exchanges`` its exchanges) of the run in
    ``run_dir`` re-simulated with these profile assignments (``other``: more ``resources`` fields,
    e.g. ``server_parallel``)."""
    run = Path(run_dir)
    if not (run / SIM_PLANS).is_file():
        raise FedftError(f"{run} has no {SIM_PLANS}: re-timing needs a run made with resources.devices set")
    cfg = ExperimentConfig.from_toml(run / CONFIG)
    bad = _shaping(cfg.resources)
    if bad:
        raise FedftError(f"{run} was trained with {', '.join(bad)}, which changed who trained and for how long; "
                         "re-timing it on other profiles would not be the same run: train it again instead")
    res = dataclasses.replace(cfg.resources, devices=devices, networks=networks, **other)
    cfg = cfg.replace(resources=res)
    from fedft.strategies import STRATEGIES

    strategy = STRATEGIES.get(cfg.federation.strategy)
    clock = RoundClock(cfg, strategy.body_mode if strategy.family == "split" else "none")
    metrics = {int(r["round"]): r for r in read_metrics(run / METRICS)}
    rows, now = [], 0.0
    for line in (run / SIM_PLANS).read_text().splitlines():
        doc = json.loads(line)
        start, energy = now, 0.0
        crit = dict.fromkeys(("compute", "transfer", "rtt", "server", "queue"), 0.0)
        exchanges = 0
        for group in doc["groups"]:
            plans = [_plan(clock, p) for p in group]
            out = clock.judge(plans, now, keep=0)
            now, energy = out.end, energy + (out.energy_j or 0.0)
            if out.times:
                last = max(out.times.values(), key=lambda t: t.finish)
                for k in crit:
                    crit[k] += getattr(last, f"{k}_s")
                exchanges += len(next(p for p in plans if p.pid == last.pid).exchanges)
        m = metrics.get(int(doc["round"]), {})
        rows.append({"round": doc["round"], "val_accuracy": m.get("val_accuracy"),
                     "bytes_cumulative": m.get("bytes_cumulative"), "sim_seconds": now - start,
                     "sim_cumulative": now, "sim_energy_j": energy or None,
                     **{f"crit_{k}_s": v for k, v in crit.items()}, "crit_exchanges": exchanges})
    return rows


def _plan(clock: RoundClock, doc: dict[str, Any]) -> ClientPlan:
    pid = int(doc["pid"])
    return ClientPlan(pid, clock.devices.of(pid), clock.networks.of(pid), tuple(doc["compute"]),
                      tuple(Exchange(int(u), int(d), float(f)) for u, d, f in doc["exchanges"]))


def time_to(rows: list[dict[str, Any]], target: float, column: str = "sim_cumulative") -> float | None:
    """The first ``column`` value (simulated seconds, bytes) at which validation accuracy reaches
    ``target``; None when it never does."""
    for r in rows:
        acc = r.get("val_accuracy")
        if acc not in (None, "") and float(acc) >= target:
            return float(r[column])
    return None
