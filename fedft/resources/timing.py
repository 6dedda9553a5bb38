"""Simulated time of a round, from the FLOPs and bytes fedft counts exactly.

The model (docs/resources.md, "Simulated time"). Each client runs on its own device and link, in
parallel with the others, as a sequence of *segments*:

* ``compute``: counted client FLOPs / the device's sustained FLOP/s;
* ``exchange``: one request-reply: the request's bytes over the uplink, the server's work, the
  reply's bytes over the downlink, plus one round-trip time (half before the server sees the
  request, half after it replies). Split learning pays one exchange per Forward and per Backward,
  FedAvg one to fetch the round's message and one to push the reply.

The server's work of an exchange (counted server FLOPs / the server's FLOP/s) runs on a shared
resource with ``capacity`` slots: 1 when clients share one trainable body (SFL-V2, SL: requests
are served one at a time, in arrival order), ``server_parallel`` slots otherwise (frozen body,
SFL-V1 copies; ``None`` = unbounded). A request that finds every slot busy waits (FIFO). A
client's finish is the end of its last segment; the round ends when the last accepted client
finishes (:mod:`fedft.resources.clock` decides which are accepted).

Limits: links are independent (no shared bottleneck at the server's NIC), transfer time is
bytes / bandwidth (no TCP slow start or loss), compute is FLOPs / a sustained rate (no memory-
bound kernels, no thermal throttling), and the server's aggregation and evaluation take no time.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fedft.resources.profiles import DeviceProfile, NetworkProfile


@dataclass(frozen=True)
class Exchange:
    """One request-reply: bytes each way and the server's FLOPs in between."""

    up_bytes: int
    down_bytes: int
    server_flops: float = 0.0


@dataclass(frozen=True)
class ClientPlan:
    """A client's round: ``compute[i]`` FLOPs run before ``exchanges[i]``; ``compute[-1]`` after
    the last exchange (so ``len(compute) == len(exchanges) + 1``)."""

    pid: int
    device: DeviceProfile
    network: NetworkProfile
    compute: tuple[float, ...]
    exchanges: tuple[Exchange, ...]

    def __post_init__(self) -> None:
        if len(self.compute) != len(self.exchanges) + 1:
            raise ValueError(f"client {self.pid}: {len(self.compute)} compute segments for "
                             f"{len(self.exchanges)} exchanges; need one more segment than exchanges")

    @property
    def client_flops(self) -> float:
        return float(sum(self.compute))

    @property
    def bytes_sent(self) -> int:
        return sum(e.up_bytes for e in self.exchanges)

    @property
    def bytes_received(self) -> int:
        return sum(e.down_bytes for e in self.exchanges)

    def energy_j(self) -> float | None:
        """Device energy of this round (compute + radio), or None when the profile has none."""
        d = self.device
        if not d.joules_per_flop and not d.joules_per_byte:
            return None
        return d.joules_per_flop * self.client_flops + d.joules_per_byte * (self.bytes_sent + self.bytes_received)


@dataclass
class ClientTime:
    """Where one client's simulated seconds went."""

    pid: int
    start: float
    finish: float = 0.0
    compute_s: float = 0.0
    transfer_s: float = 0.0
    rtt_s: float = 0.0
    server_s: float = 0.0
    queue_s: float = 0.0
    energy_j: float | None = None

    @property
    def seconds(self) -> float:
        return self.finish - self.start


@dataclass
class _Client:
    plan: ClientPlan
    time: ClientTime
    steps: Iterator[tuple[str, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.steps = _steps(self.plan, self.time)


def _steps(plan: ClientPlan, t: ClientTime) -> Iterator[tuple[str, float]]:
    """The client's segments as ("wait", seconds) and ("server", seconds) steps; transfer times
    depend on when they start (a trace), so they are computed as the clock reaches them."""
    net = plan.network
    for i, ex in enumerate(plan.exchanges):
        yield from _compute(plan, t, plan.compute[i])
        up = net.transfer_seconds(ex.up_bytes, "up", _now(t))
        t.transfer_s += up
        t.rtt_s += net.rtt_s
        yield "wait", up + net.rtt_s / 2
        if ex.server_flops:
            yield "server", ex.server_flops
        down = net.transfer_seconds(ex.down_bytes, "down", _now(t))
        t.transfer_s += down
        yield "wait", down + net.rtt_s / 2
    yield from _compute(plan, t, plan.compute[-1])


def _now(t: ClientTime) -> float:
    return t.finish  # the simulator keeps ``finish`` at the client's current time while it runs


def _compute(plan: ClientPlan, t: ClientTime, flops: float) -> Iterator[tuple[str, float]]:
    if flops:
        s = flops / plan.device.flops
        t.compute_s += s
        yield "wait", s


def simulate(plans: Sequence[ClientPlan], server: DeviceProfile, capacity: int | None,
             start: float = 0.0) -> dict[int, ClientTime]:
    """Run every client's plan from ``start``; the server computes at most ``capacity`` requests
    at once (``None`` = unbounded), first come first served. Returns each client's times."""
    if capacity is not None and capacity < 1:
        raise ValueError(f"server capacity must be >= 1 or None, got {capacity}")
    clients = {p.pid: _Client(p, ClientTime(p.pid, start, start, energy_j=p.energy_j())) for p in plans}
    events: list[tuple[float, int, int]] = []  # (time, sequence, pid): the client resumes then
    seq = 0
    busy, queue = 0, deque[tuple[int, float, float]]()  # (pid, seconds, arrival)

    def advance(pid: int, now: float) -> None:
        nonlocal seq, busy
        c = clients[pid]
        c.time.finish = now
        step = next(c.steps, None)
        if step is None:
            return
        kind, value = step
        if kind == "wait":
            seq += 1
            heapq.heappush(events, (now + value, seq, pid))
            return
        secs = value / server.flops
        c.time.server_s += secs
        if capacity is None or busy < capacity:
            busy += 1
            seq += 1
            heapq.heappush(events, (now + secs, -seq, pid))  # negative: a server completion
        else:
            queue.append((pid, secs, now))

    for pid in clients:
        advance(pid, start)
    while events:
        now, s, pid = heapq.heappop(events)
        if s < 0:  # a server slot frees up: the next queued request starts now
            busy -= 1
            if queue:
                nxt, secs, arrived = queue.popleft()
                clients[nxt].time.queue_s += now - arrived
                busy += 1
                seq += 1
                heapq.heappush(events, (now + secs, -seq, nxt))
        advance(pid, now)
    return {pid: c.time for pid, c in clients.items()}


def round_seconds(times: dict[int, ClientTime], accepted: Sequence[int], start: float,
                  deadline: float | None = None, dropped_late: bool = False) -> float:
    """The round's simulated length: the last accepted client's finish, or the deadline when the
    server waited for it to drop a late client."""
    ends = [times[p].finish for p in accepted if p in times]
    end = max(ends, default=start)
    if dropped_late and deadline is not None:
        end = max(end, start + deadline)
    return end - start


def fmt_seconds(s: float) -> str:
    """Seconds for humans: 0.35 s, 12.4 s, 3.2 min, 1.5 h."""
    if not math.isfinite(s):
        return str(s)
    if s < 60:
        return f"{s:.3g} s"
    return f"{s / 60:.3g} min" if s < 3600 else f"{s / 3600:.3g} h"
