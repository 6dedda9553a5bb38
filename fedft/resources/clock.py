"""The server's simulated clock: who is online, who is sampled, how long each round takes, and
which clients the round accepts (deadline, over-selection, availability).

Per round (docs/resources.md): the server samples among the clients online at the round's
simulated start; after the replies come back it builds each client's plan (the round's message
and reply from the server's ledger, the client's timeline of body exchanges and FLOPs, the
server's FLOPs per exchange) and runs :func:`fedft.resources.timing.simulate`. A client is then
dropped when it went offline before finishing, when it finishes after the deadline
(``stragglers = "drop"``), or when it is not among the first K to finish (over-selection). With a
shared trainable body a dropped client's body updates are already applied (the server made them
as its batches arrived); only its upload is discarded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedft.accounting import CommEvent, Direction, Kind, Phase
from fedft.config import ExperimentConfig
from fedft.errors import ConfigError
from fedft.resources.profiles import assign, load_catalog
from fedft.resources.timeline import BACKWARD, FORWARD, Timeline
from fedft.resources.timing import ClientPlan, ClientTime, Exchange, simulate

STATUS_OK, STATUS_LATE, STATUS_OFFLINE, STATUS_OVER = "ok", "missed the deadline", "went offline", "over-selected"


@dataclass(frozen=True)
class BodyCost:
    """Server FLOPs per sequence position through the body, forward and backward."""

    fwd: float = 0.0
    bwd: float = 0.0


@dataclass
class GroupOutcome:
    """One group's simulated result."""

    end: float
    times: dict[int, ClientTime]
    status: dict[int, str]
    energy_j: float | None


class RoundClock:
    """Profiles, availability and the simulated time of a run (``resources.devices`` set)."""

    def __init__(self, cfg: ExperimentConfig, body_mode: str = "frozen", sequential: bool = False) -> None:
        from fedft.resources.availability import Availability

        r, n = cfg.resources, cfg.partition.num_clients
        catalog = load_catalog(r.profiles)
        self.cfg = cfg
        self.devices = assign(r.devices, "device", n, cfg.seed, catalog)
        self.networks = assign(r.networks, "network", n, cfg.seed, catalog)
        self.server = catalog.profile("device", r.server)
        self.capacity: int | None = 1 if body_mode == "shared" else (r.server_parallel or None)
        self.availability = Availability.from_spec(r.availability, n, cfg.seed)
        self.deadline = r.deadline_s or None
        if r.over_selection and sequential:
            raise ConfigError("bad value for resources.over_selection: must be 0 for a strategy whose clients "
                              "train one after another (sl): there is no 'first K to finish'")
        self.now = 0.0  # simulated seconds since the run started

    # ---- sampling --------------------------------------------------------------------------------

    def sample(self, k: int, rng: np.random.Generator, pool: np.ndarray | None = None) -> list[int]:
        """K (times 1 + over_selection) clients drawn uniformly among those of ``pool`` (default:
        all) online now."""
        online = np.flatnonzero(self.availability.online(self.now))
        if pool is not None:
            online = np.intersect1d(online, pool, assume_unique=True)
        want = len(online) if k == 0 else math.ceil(k * (1 + self.cfg.resources.over_selection))
        if want >= len(online):
            return [int(p) for p in online]
        return [int(p) for p in np.sort(rng.choice(online, size=want, replace=False))]

    # ---- plans -----------------------------------------------------------------------------------

    def plan(self, pid: int, timeline: Timeline, client_flops: float, sync: Sequence[CommEvent],
             split_tokens: float, body: BodyCost) -> ClientPlan:
        """Client ``pid``'s round: fetch the message, its body exchanges, push the reply."""
        down = sum(e.nbytes for e in sync if e.direction == Direction.DOWN)
        up = sum(e.nbytes for e in sync if e.direction == Direction.UP)
        exchanges = [Exchange(0, down)]
        server = _server_flops(timeline, split_tokens, body)
        exchanges += [Exchange(u, d, f) for u, d, f in zip(timeline.up, timeline.down, server, strict=True)]
        exchanges.append(Exchange(up, 0))
        marks = [*timeline.flops, client_flops]
        compute = [0.0, marks[0], *(b - a for a, b in zip(marks, marks[1:], strict=False)), 0.0]
        return ClientPlan(pid, self.devices.of(pid), self.networks.of(pid), tuple(max(c, 0.0) for c in compute),
                          tuple(exchanges))

    # ---- judging a group ---------------------------------------------------------------------------

    def judge(self, plans: Sequence[ClientPlan], start: float, keep: int) -> GroupOutcome:
        """Simulate the group from ``start``; decide who is accepted (``keep``: how many the round
        wanted, 0 = all). Returns the group's end and each client's status."""
        times = simulate(plans, self.server, self.capacity, start)
        pids = np.asarray([p.pid for p in plans], dtype=np.int64)
        until = self.availability.online_until(pids, start) if len(pids) else np.zeros(0)
        status = {}
        for pid, off in zip(pids.tolist(), until.tolist(), strict=True):
            t = times[pid]
            if t.finish > off:
                status[pid] = STATUS_OFFLINE
            elif self.deadline is not None and t.finish - start > self.deadline + 1e-9:
                status[pid] = STATUS_LATE
            else:
                status[pid] = STATUS_OK
        ok = sorted((times[p].finish, p) for p, s in status.items() if s == STATUS_OK)
        if keep and len(ok) > keep:
            for _, p in ok[keep:]:
                status[p] = STATUS_OVER
        accepted = [p for p, s in status.items() if s == STATUS_OK]
        end = max((times[p].finish for p in accepted), default=start)
        if any(s == STATUS_LATE for s in status.values()):
            end = max(end, start + self.deadline)  # type: ignore[operator]
        end += self.cfg.resources.round_overhead_s  # the deployment's own per-message cost
        energies = [t.energy_j for t in times.values() if t.energy_j is not None]
        return GroupOutcome(end, times, status, sum(energies) if energies else None)

    def describe(self, pid: int) -> dict[str, Any]:
        return {"device": self.devices.of(pid).name, "network": self.networks.of(pid).name}


def _server_flops(timeline: Timeline, split_tokens: float, body: BodyCost) -> list[float]:
    """The client's server FLOPs (its positions x per-position cost), shared among its Forward
    (and Backward) exchanges in proportion to their request bytes (activations and gradients are
    B x T x D each, so bytes are proportional to positions up to a few header bytes)."""
    out = [0.0] * len(timeline.kind)
    for kind, per_token in ((FORWARD, body.fwd), (BACKWARD, body.bwd)):
        idx = [i for i, k in enumerate(timeline.kind) if k == kind]
        total = sum(timeline.up[i] for i in idx)
        for i in idx:
            out[i] = split_tokens * per_token * timeline.up[i] / total if total else 0.0
    return out


def sync_events(events: Sequence[CommEvent], pid: int) -> list[CommEvent]:
    """The round message and reply of client ``pid`` among a round's ledger events."""
    c = str(pid)
    return [e for e in events if e.client == c and e.phase == Phase.SYNC
            and e.kind in (Kind.PARAMS_DOWN, Kind.PARAMS_UP, Kind.CONTROL)]
