"""The round loop's use of the simulated clock: judge each group's replies, record where each
client's simulated time went (``sim_clients.csv``), and sum a round's time and energy."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedft import keys
from fedft.resources.clock import STATUS_OK, BodyCost, RoundClock, sync_events
from fedft.resources.timeline import Timeline
from fedft.resources.timing import ClientPlan

SIM_CLIENTS = "sim_clients.csv"
SIM_PLANS = "sim_plans.jsonl"  # one line per round: each group's client plans (profile-free)
CLIENT_COLUMNS = ["round", "client", "device", "network", "status", "start_s", "finish_s", "seconds", "compute_s",
                  "transfer_s", "rtt_s", "server_s", "queue_s", "energy_j"]


@dataclass
class SimRound:
    """One round's simulated outcome, accumulated over its groups."""

    start: float
    end: float
    energy_j: float | None = None
    dropped: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    plans: list[list[dict[str, Any]]] = field(default_factory=list)  # per group, for re-timing (retime.py)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def judge_group(clock: RoundClock, rnd: int, replies: list[Any], events: Any, body: Callable[[int], BodyCost],
                sim: SimRound, keep: int) -> None:
    """Simulate one group that started at ``sim.end``; replies the clock does not accept get an
    error (so the strategy's combine drops them) and the group's end moves ``sim.end``."""
    live = [r for r in replies if r.error is None]
    plans = [clock.plan(r.pid, r.timeline or Timeline(), r.metrics.get(keys.CLIENT_FLOPS, 0.0),
                        sync_events(events, r.pid), r.metrics.get(keys.SPLIT_TOKENS, 0.0), body(r.pid))
             for r in live]
    start = sim.end
    sim.plans.append([plan_to_json(p) for p in plans])
    out = clock.judge(plans, start, keep)
    for r in live:
        status, t = out.status[r.pid], out.times[r.pid]
        if status != STATUS_OK:
            r.error = f"{status} (simulated {t.finish - start:.3g} s)"
            sim.dropped += 1
        sim.rows.append({"round": rnd, "client": r.pid, **clock.describe(r.pid), "status": status,
                         "start_s": start, "finish_s": t.finish, "seconds": t.seconds, "compute_s": t.compute_s,
                         "transfer_s": t.transfer_s, "rtt_s": t.rtt_s, "server_s": t.server_s,
                         "queue_s": t.queue_s, "energy_j": t.energy_j})
    if out.energy_j is not None:
        sim.energy_j = (sim.energy_j or 0.0) + out.energy_j
    sim.end = out.end


def append_clients(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append the round's per-client rows to ``sim_clients.csv`` (header on first write)."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CLIENT_COLUMNS)
        if new:
            w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def truncate_clients(path: Path, upto: int) -> None:
    """Keep only rounds <= ``upto`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["round"]) <= upto]
    path.unlink()
    append_clients(path, rows)  # type: ignore[arg-type]


def plan_to_json(plan: ClientPlan) -> dict[str, Any]:
    """A plan without its profiles: FLOPs per segment and (up, down, server FLOPs) per exchange."""
    return {"pid": plan.pid, "compute": list(plan.compute),
            "exchanges": [[e.up_bytes, e.down_bytes, e.server_flops] for e in plan.exchanges]}


def append_plans(path: Path, rnd: int, groups: list[list[dict[str, Any]]]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"round": rnd, "groups": groups}, separators=(",", ":")) + "\n")


def truncate_plans(path: Path, upto: int) -> None:
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["round"] <= upto]
    path.write_text("".join(ln + "\n" for ln in lines))
