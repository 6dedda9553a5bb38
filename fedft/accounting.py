"""Communication accounting: an append-only ledger of every message that crosses a party boundary.

Bytes are measured, never estimated: transports record ``len()`` of the encoded payload they send
(the wire codec for split traffic, ``count_bytes()`` for Flower records). The ledger is passed in
explicitly; there are no global counters.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path


class Direction(StrEnum):
    """Who sends: ``up`` is client -> server, ``down`` is server -> client."""

    UP = "up"
    DOWN = "down"


class Kind(StrEnum):
    """What a message carries."""

    PARAMS_DOWN = "params_down"
    PARAMS_UP = "params_up"
    ACTIVATIONS_UP = "activations_up"
    ACTIVATIONS_DOWN = "activations_down"
    GRADS_UP = "grads_up"
    GRADS_DOWN = "grads_down"
    CONTROL = "control"

    @property
    def direction(self) -> Direction | None:
        """The direction implied by the kind (``None`` for control, which goes both ways)."""
        if self.value.endswith("_up"):
            return Direction.UP
        if self.value.endswith("_down"):
            return Direction.DOWN
        return None


class Phase(StrEnum):
    """Which part of a round a message or a FLOP belongs to."""

    SETUP = "setup"
    PRUNING = "pruning"
    LOCAL = "local"
    SPLIT = "split"
    SYNC = "sync"
    EVAL = "eval"
    TRAIN = "train"


@dataclass(frozen=True)
class CommEvent:
    """One message: who (round, client), when (phase), which way, what, how many bytes."""

    round: int
    client: str
    phase: str
    direction: str
    kind: str
    nbytes: int

    def __post_init__(self) -> None:
        kind = Kind(self.kind)  # raises ValueError on an unknown kind
        Direction(self.direction)
        if kind.direction is not None and kind.direction != self.direction:
            raise ValueError(f"kind {self.kind} travels {kind.direction}, not {self.direction}")
        if self.nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {self.nbytes}")


FIELDS = [f.name for f in fields(CommEvent)]


class CommLedger:
    """Append-only list of :class:`CommEvent` with pure summaries and CSV export."""

    def __init__(self, events: Iterable[CommEvent] = ()) -> None:
        self._events: list[CommEvent] = list(events)

    def record(self, event: CommEvent) -> None:
        """Append one event."""
        self._events.append(event)

    def add(
        self, round: int, client: str, phase: str, kind: Kind | str, nbytes: int,
        direction: Direction | str | None = None,
    ) -> None:
        """Record a message; the direction is derived from the kind unless it is ``control``."""
        kind = Kind(kind)
        direction = direction or kind.direction
        if direction is None:
            raise ValueError("control events need an explicit direction")
        self.record(CommEvent(round, str(client), str(phase), str(direction), str(kind), int(nbytes)))

    def extend(self, events: Iterable[CommEvent]) -> None:
        """Append several events (for example a client's events shipped back to the server)."""
        for e in events:
            self.record(e)

    @property
    def events(self) -> tuple[CommEvent, ...]:
        return tuple(self._events)

    def since(self, start: int) -> list[CommEvent]:
        """The events recorded after the first ``start`` (without copying the earlier ones)."""
        return self._events[start:]

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[CommEvent]:
        return iter(self._events)

    def total(self, where: Callable[[CommEvent], bool] | None = None) -> int:
        """Sum of bytes over the events that pass ``where`` (all by default)."""
        return sum(e.nbytes for e in self._events if where is None or where(e))

    def summarize(self, key: str) -> dict[str | int, int]:
        """Bytes grouped by one event field (``round``, ``client``, ``kind``, ``direction``, ``phase``)."""
        if key not in FIELDS or key == "nbytes":
            raise ValueError(f"cannot group by {key!r}; use one of {FIELDS[:-1]}")
        out: dict[str | int, int] = defaultdict(int)
        for e in self._events:
            out[getattr(e, key)] += e.nbytes
        return dict(sorted(out.items()))

    def by_round(self) -> dict[str | int, int]:
        return self.summarize("round")

    def by_client(self) -> dict[str | int, int]:
        return self.summarize("client")

    def by_kind(self) -> dict[str | int, int]:
        return self.summarize("kind")

    def by_direction(self) -> dict[str | int, int]:
        return self.summarize("direction")

    def to_csv(self, path: str | Path) -> None:
        """Write every event as one CSV row with the header ``round,client,phase,direction,kind,nbytes``."""
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            for e in self._events:
                w.writerow(asdict(e))

    @classmethod
    def from_csv(cls, path: str | Path) -> CommLedger:
        """Read a ledger written by :meth:`to_csv`."""
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return cls(
            CommEvent(int(r["round"]), r["client"], r["phase"], r["direction"], r["kind"],
                      int(r["nbytes"]))
            for r in rows
        )
