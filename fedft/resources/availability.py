"""Which clients are online at a simulated time: always, a seeded duty cycle, or FedScale's trace.

``resources.availability`` takes one of:

* ``"always"``: every client is online at every time;
* ``"cyclic:<online_s>,<offline_s>"``: client ``i`` is online for ``online_s`` seconds, then
  offline for ``offline_s``, repeating, shifted by a phase drawn uniformly from
  ``[0, online_s + offline_s)`` with ``default_rng([seed, 18, 3])``: online at ``t`` iff
  ``(t + phase_i) mod (online_s + offline_s) < online_s`` (online on half-open intervals);
* ``"file:<path>"``: FedScale's ``client_behave_trace`` (JSON or a pickle of plain data). As in
  FedScale's ``ClientMetadata.is_active``, an entry is online at ``t`` iff some ``k`` has
  ``active[k] <= t mod finish_time <= inactive[k]`` (closed intervals, the trace repeating every
  ``finish_time`` seconds). FedScale evaluates this with a stateful pointer that advances one
  interval per call and so assumes queries in increasing time; fedft evaluates the stated rule
  exactly for any query order. Client ``pid`` takes entry ``pid mod M`` in sorted id order.

Everything is vectorised over the N clients: :meth:`Availability.online` is one boolean array and
:meth:`Availability.online_until` one float array, with no per-client Python object (a trace costs
one array of intervals). Deterministic for a seed. Limits: availability does not depend on the
device or on what the client did (no battery model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedft.errors import ConfigError
from fedft.resources.profiles import kind_rng

FORMS = "always, cyclic:<online_s>,<offline_s> or file:<path>"


@dataclass(frozen=True)
class _Trace:
    """Merged closed online intervals of the M used trace entries, flattened (entry-major)."""

    entry: np.ndarray  # (K,) int64, the entry of each interval
    start: np.ndarray  # (K,) float64, seconds into the entry's period
    end: np.ndarray  # (K,) float64
    reach: np.ndarray  # (K,) float64, where the online stretch through this interval ends (may pass the period)
    period: np.ndarray  # (M,) float64, finish_time of each entry
    offsets: np.ndarray  # (M + 1,) int64, the entry's intervals are [offsets[e], offsets[e + 1])


@dataclass(frozen=True)
class Availability:
    """Online/offline state of N clients over simulated time."""

    n: int
    kind: str  # "always", "cyclic" or "trace"
    online_s: float = math.inf
    offline_s: float = 0.0
    phase: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (N,) cyclic phases
    trace: _Trace | None = None

    @classmethod
    def from_spec(cls, spec: str, n: int, seed: int) -> Availability:
        spec = spec.strip()
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        if spec == "always":
            return cls(n=n, kind="always")
        if spec.startswith("cyclic:"):
            on, off = _cyclic_args(spec)
            if off == 0:
                return cls(n=n, kind="always")
            phase = kind_rng(seed, "availability").uniform(0.0, on + off, size=n)
            return cls(n=n, kind="cyclic", online_s=on, offline_s=off, phase=phase)
        if spec.startswith("file:"):
            from fedft.resources.fedscale import read_plain

            path = spec[len("file:"):]
            return cls(n=n, kind="trace", trace=_load_trace(read_plain(path), n, path))
        raise ConfigError(f"bad value for resources.availability: {spec!r}; must be {FORMS}")

    def online(self, t: float) -> np.ndarray:
        """(N,) bool: which clients are online at simulated time ``t``."""
        if self.kind == "always":
            return np.ones(self.n, dtype=bool)
        if self.kind == "cyclic":
            return np.mod(t + self.phase, self.online_s + self.offline_s) < self.online_s
        tr = self.trace
        assert tr is not None
        norm = np.mod(t, tr.period[tr.entry])
        hit = (tr.start <= norm) & (norm <= tr.end)
        entry_online = np.zeros(len(tr.period), dtype=bool)
        entry_online[tr.entry[hit]] = True
        return entry_online[np.arange(self.n) % len(tr.period)]

    def online_until(self, pids: np.ndarray, t: float) -> np.ndarray:
        """(len(pids),) float: the simulated time each client next goes offline, from ``t``: the end
        of its current online stretch, ``t`` when it is offline at ``t``, ``inf`` when it never goes
        offline. A client is online throughout ``[t, online_until)``."""
        pids = np.asarray(pids, dtype=np.int64)
        if self.kind == "always":
            return np.full(len(pids), math.inf)
        if self.kind == "cyclic":
            pos = np.mod(t + self.phase[pids], self.online_s + self.offline_s)
            return np.where(pos < self.online_s, t + (self.online_s - pos), float(t))
        return self._trace_until(pids, float(t))

    def online_fraction(self) -> np.ndarray:
        """(N,) float: the long-run fraction of time each client is online."""
        if self.kind == "always":
            return np.ones(self.n)
        if self.kind == "cyclic":
            return np.full(self.n, self.online_s / (self.online_s + self.offline_s))
        tr = self.trace
        assert tr is not None
        per_entry = np.bincount(tr.entry, weights=tr.end - tr.start, minlength=len(tr.period)) / tr.period
        return per_entry[np.arange(self.n) % len(tr.period)]

    def _trace_until(self, pids: np.ndarray, t: float) -> np.ndarray:
        tr = self.trace
        assert tr is not None
        entries = pids % len(tr.period)
        count = tr.offsets[entries + 1] - tr.offsets[entries]
        owner = np.repeat(np.arange(len(pids)), count)  # the ragged gather of each pid's intervals
        within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        k = np.repeat(tr.offsets[entries], count) + within
        norm = np.mod(t, tr.period[entries])
        hit = (tr.start[k] <= norm[owner]) & (norm[owner] <= tr.end[k])
        out = np.full(len(pids), t)
        who, which = owner[hit], k[hit]
        out[who] = t + (tr.reach[which] - norm[who])
        return out


def _cyclic_args(spec: str) -> tuple[float, float]:
    parts = spec[len("cyclic:"):].split(",")
    try:
        on, off = (float(p) for p in parts)
    except ValueError:
        on = off = -1.0
    if not (on > 0 and off >= 0 and math.isfinite(on) and math.isfinite(off)):
        raise ConfigError(f"bad value for resources.availability: {spec!r}; must be cyclic:<online_s>,<offline_s> "
                          "with online_s > 0 and offline_s >= 0, e.g. cyclic:600,1800")
    return on, off


def _load_trace(data: object, n: int, label: str) -> _Trace:
    """Parse, check and merge FedScale's behave trace for the entries that ``n`` clients use."""
    from fedft.resources.fedscale import sorted_entries

    entries = sorted_entries(data, label)[:max(n, 1)]
    parts, periods = [], []
    for cid, entry in entries:
        intervals, period = _entry_intervals(entry, f"{label}: client {cid}")
        parts.append(intervals)
        periods.append(period)
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    flat = np.concatenate([p for p in parts if len(p)]) if counts.sum() else np.zeros((0, 3))
    return _Trace(entry=np.repeat(np.arange(len(parts)), counts), start=flat[:, 0], end=flat[:, 1],
                  reach=flat[:, 2], period=np.asarray(periods, dtype=np.float64),
                  offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def _entry_intervals(entry: object, where: str) -> tuple[np.ndarray, float]:
    """(k, 3) [start, end, reach] merged intervals of one entry, and its period."""
    if not isinstance(entry, dict) or not {"active", "inactive", "finish_time"} <= set(entry):
        raise ConfigError(f"{where}: needs 'active', 'inactive' and 'finish_time' (FedScale client_behave_trace)")
    period = entry["finish_time"]
    on, off = entry["active"], entry["inactive"]
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not (period > 0 and math.isfinite(period)):
        raise ConfigError(f"{where}: 'finish_time' must be a number > 0, not {period!r}")
    if not (isinstance(on, list) and isinstance(off, list) and len(on) == len(off)):
        raise ConfigError(f"{where}: 'active' and 'inactive' must be lists of the same length")
    pairs = sorted((float(a), float(b)) for a, b in zip(on, off, strict=True))
    if any(not (0 <= a <= b) for a, b in pairs):
        raise ConfigError(f"{where}: each interval needs 0 <= active[k] <= inactive[k]")
    merged: list[list[float]] = []
    for a, b in pairs:
        if a >= period:
            continue  # FedScale's t mod finish_time never reaches it
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    # t mod finish_time < finish_time, so an interval past the period ends at the period
    out = np.array([[a, min(b, period), min(b, period)] for a, b in merged], dtype=np.float64).reshape(-1, 3)
    if len(out) and out[0, 0] == 0 and out[-1, 1] >= period:  # online across the period's wrap
        out[-1, 2] = math.inf if len(out) == 1 else period + out[0, 1]
    return out, float(period)
