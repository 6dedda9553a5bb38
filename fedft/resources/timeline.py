"""The client's side of the time model: what it did, in order, and its own simulated clock.

:class:`TimelineLedger` is the client's ledger of body-service traffic that also notes, at each
request-reply, the client FLOPs counted so far; the reply carries the timeline (FLOPs before each
exchange, bytes each way, kind) in its own record, which is not counted as traffic: it is the
simulator's instrumentation, not something a real client would send.

:class:`ClientClock` is the same model seen from the client, without queueing at the server, so a
client can stop when its simulated clock reaches the round's deadline (``resources.stragglers =
"partial"``): it needs no message from the server during the round.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import MetricRecord, RecordDict

from fedft.accounting import CommEvent, CommLedger, Direction
from fedft.resources.config import ResourcesConfig

if TYPE_CHECKING:
    from fedft.config import ExperimentConfig
    from fedft.flops import FlopsMeter
    from fedft.resources.profiles import DeviceProfile, NetworkProfile

# exchange kinds in the timeline record
CONTROL, FORWARD, BACKWARD = 0, 1, 2
_KIND = {"control": CONTROL, "activations_up": FORWARD, "grads_up": BACKWARD}

# keys of the timeline record
FLOPS, UP, DOWN, KIND = "flops", "up", "down", "kind"


class TimelineLedger(CommLedger):
    """A client's ledger that also records each request-reply with the client FLOPs before it.

    Transports record a completed call's request (``up``) and then its reply (``down``); a pair
    is one exchange."""

    def __init__(self, meter: FlopsMeter | None = None) -> None:
        super().__init__()
        self.meter = meter
        self.flops: list[float] = []  # client FLOPs counted when each exchange started
        self.up: list[int] = []
        self.down: list[int] = []
        self.kind: list[int] = []
        self._open: CommEvent | None = None
        self._flops_at_open = 0.0

    def _client_flops(self) -> float:
        return float(self.meter.total(party="client")) if self.meter is not None else 0.0

    def record(self, event: CommEvent) -> None:
        super().record(event)
        if event.direction == Direction.UP:
            self._open, self._flops_at_open = event, self._client_flops()
        elif self._open is not None:
            self.flops.append(self._flops_at_open)
            self.up.append(self._open.nbytes)
            self.down.append(event.nbytes)
            self.kind.append(_KIND.get(self._open.kind, CONTROL))
            self._open = None

    def record_for_reply(self) -> MetricRecord:
        """The timeline as a Flower record (lists of numbers)."""
        return MetricRecord({FLOPS: [float(x) for x in self.flops], UP: [int(x) for x in self.up],
                             DOWN: [int(x) for x in self.down], KIND: [int(x) for x in self.kind]})


@dataclass(frozen=True)
class Timeline:
    """A parsed timeline: per exchange, client FLOPs before it, bytes up and down, kind."""

    flops: tuple[float, ...] = ()
    up: tuple[int, ...] = ()
    down: tuple[int, ...] = ()
    kind: tuple[int, ...] = ()

    @classmethod
    def from_record(cls, record: MetricRecord | None) -> Timeline:
        if record is None:
            return cls()
        t = cls(tuple(float(x) for x in record.get(FLOPS, [])), tuple(int(x) for x in record.get(UP, [])),  # type: ignore[union-attr]
                tuple(int(x) for x in record.get(DOWN, [])), tuple(int(x) for x in record.get(KIND, [])))  # type: ignore[union-attr]
        if not len(t.flops) == len(t.up) == len(t.down) == len(t.kind):
            raise ValueError("timeline lists differ in length")
        if any(b < a for a, b in zip(t.flops, t.flops[1:], strict=False)) or any(x < 0 for x in t.up + t.down):
            raise ValueError("timeline FLOPs must not decrease and bytes must be >= 0")
        return t


@dataclass
class ClientClock:
    """A client's own simulated clock for the deadline (no queueing at the server)."""

    device: DeviceProfile
    network: NetworkProfile
    deadline_s: float
    server_flops: float  # the server's FLOP/s
    body_flops_per_token: float  # server FLOPs per position sent through the body (fwd + bwd)
    download_bytes: int  # the round's message, already received
    upload_bytes: int  # what the reply will carry (estimate: the download's arrays)
    ledger: TimelineLedger | None = None
    meter: FlopsMeter | None = None
    split_tokens: int = 0  # kept current by the caller (RoundContext.split_tokens)

    def elapsed(self) -> float:
        """Simulated seconds since the round's message was sent, including the reply still to send."""
        net = self.network
        s = net.transfer_seconds(self.download_bytes, "down") + net.rtt_s
        if self.meter is not None:
            s += self.meter.total(party="client") / self.device.flops
        if self.ledger is not None:
            s += sum(net.transfer_seconds(u, "up") + net.transfer_seconds(d, "down") + net.rtt_s
                     for u, d in zip(self.ledger.up, self.ledger.down, strict=True))
        s += self.split_tokens * self.body_flops_per_token / self.server_flops
        return s + net.transfer_seconds(self.upload_bytes, "up") + net.rtt_s

    last_check: float | None = None  # elapsed() at the previous check (one batch ago)

    def out_of_time(self) -> bool:
        """True when another batch like the last one would end after the deadline (the first batch
        always runs when the clock is still before the deadline)."""
        now = self.elapsed()
        step = 0.0 if self.last_check is None else now - self.last_check
        self.last_check = now
        return now + step >= self.deadline_s


@functools.lru_cache(maxsize=4)
def _profiles(resources: ResourcesConfig, n: int, seed: int) -> tuple[Any, Any, Any]:
    from fedft.resources.profiles import assign, load_catalog

    catalog = load_catalog(resources.profiles)
    return (assign(resources.devices, "device", n, seed, catalog), assign(resources.networks, "network", n, seed, catalog),
            catalog.profile("device", resources.server))


def client_clock(cfg: ExperimentConfig, pid: int, content: RecordDict, ledger: CommLedger,
                 meter: FlopsMeter) -> ClientClock | None:
    """Client ``pid``'s deadline clock for this round's message, or None when the run has no
    deadline or drops late clients instead of stopping them (``resources.stragglers``)."""
    r = cfg.resources
    if not (r.enabled and r.deadline_s and r.stragglers == "partial"):
        return None
    from fedft import keys

    devices, networks, server = _profiles(r, cfg.partition.num_clients, cfg.seed)
    arrays = sum(rec.count_bytes() for rec in content.array_records.values())
    other = sum(rec.count_bytes() for rec in content.config_records.values())
    config = content[keys.CONFIG]
    per_token = float(config.get(keys.SIM_BODY_FLOPS, 0.0))  # type: ignore[union-attr, arg-type]
    return ClientClock(devices.of(pid), networks.of(pid), r.deadline_s, server.flops, per_token, arrays + other,
                       arrays, ledger if isinstance(ledger, TimelineLedger) else None, meter)
