"""Device and network profiles, the built-in catalogue, user files, and per-client assignment.

A :class:`DeviceProfile` says how fast a client trains (sustained FLOP/s), how much memory its
process may use and, optionally, its energy per FLOP and per byte sent or received; a
:class:`NetworkProfile` says how fast its link is each way and its round-trip time, optionally
as a time-varying trace. Profiles are plain data: :mod:`fedft.resources.timing` turns them into
simulated seconds. ``fedft profiles`` lists the catalogue; docs/resources.md cites each number.

The rates are in fedft's FLOP currency: what ``fedft.flops`` counts (matmuls, convolutions and
attention, 2 FLOPs per multiply-add) divided by the wall time of a whole fp32 training step, so
the time of the uncounted memory-bound ops (norms, activations, the optimiser) is folded into a
rate well below the chip's peak. Limits: one number per device (no thermal throttling, no
batch-size dependence); a trace is a deterministic cycle, not a random process.

Assignment is vectorised: :func:`assign` returns one small tuple of distinct profiles and an
``int32`` index per client, never one object per client (100,000 clients cost one array).
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedft.errors import ConfigError

KINDS = ("device", "network")
KIND_SEED = {"device": 1, "network": 2, "availability": 3}  # [D] the third word of the rng seed
ISSUE_SEED = 18  # [D] the second word: rng = default_rng([seed, 18, KIND_SEED[kind]])
SUM_TOLERANCE = 1e-6  # [D] mixture proportions must sum to 1 within this


@dataclass(frozen=True)
class DeviceProfile:
    """A client (or server) device."""

    name: str
    flops: float  # sustained training throughput, FLOP/s (fp32, the framework's, not the chip's peak)
    memory_bytes: int  # memory available to the client process
    joules_per_flop: float = 0.0  # 0 = unknown (no energy reported)
    joules_per_byte: float = 0.0  # radio/NIC energy per byte sent or received; 0 = unknown
    head_blocks: int | None = None  # this device's split cut (resources.cuts = "profile"); None = config's
    tail_blocks: int | None = None
    description: str = ""
    source: str = ""  # where the numbers come from (short; docs/resources.md has the full citation)
    peak_flops: float = 0.0  # the chip's fp32 peak, for reference only (flops / peak_flops = assumed fraction)

    def __post_init__(self) -> None:
        _need(self.flops > 0 and math.isfinite(self.flops), self.name, "flops", "a number > 0")
        _need(self.memory_bytes > 0, self.name, "memory", "a size > 0")
        _need(self.joules_per_flop >= 0 and self.joules_per_byte >= 0, self.name, "joules", "numbers >= 0")
        for cut in (self.head_blocks, self.tail_blocks):
            _need(cut is None or cut >= 0, self.name, "head_blocks/tail_blocks", "integers >= 0")


@dataclass(frozen=True)
class NetworkProfile:
    """A client's link to the server."""

    name: str
    up_bps: float  # uplink (client -> server), bits per second (a trace's time average when traced)
    down_bps: float  # downlink, bits per second
    rtt_s: float  # round-trip time, seconds
    # optional time-varying bandwidth: (start_s, up_bps, down_bps) segments, piecewise constant and
    # repeating every trace_period_s (the first segment starts at 0)
    trace: tuple[tuple[float, float, float], ...] = ()
    trace_period_s: float = 0.0
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        _need(self.up_bps > 0 and self.down_bps > 0, self.name, "up/down bandwidth", "numbers > 0")
        _need(self.rtt_s >= 0 and math.isfinite(self.rtt_s), self.name, "rtt", "a number of seconds >= 0")
        if self.trace:
            starts = [s[0] for s in self.trace]
            _need(starts[0] == 0 and all(a < b for a, b in zip(starts, starts[1:], strict=False)),
                  self.name, "trace", "segments with increasing start times, the first at 0")
            _need(self.trace_period_s > starts[-1], self.name, "trace_period_s", "longer than the last start")
            _need(all(s[1] >= 0 and s[2] >= 0 for s in self.trace), self.name, "trace", "bandwidths >= 0")
            for col in (1, 2):
                _need(_period_bits(self.trace, col, self.trace_period_s) > 0, self.name, "trace",
                      "some segment with bandwidth > 0 in each direction")

    def transfer_seconds(self, nbytes: int, direction: Literal["up", "down"], start_s: float = 0.0) -> float:
        """Seconds to move ``nbytes`` one way starting at simulated time ``start_s`` (the trace's
        bandwidth integrated over time when there is a trace), without the RTT."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        bits = float(nbytes) * 8.0
        col = 1 if direction == "up" else 2
        if not self.trace or bits == 0:
            return bits / (self.up_bps if col == 1 else self.down_bps)
        return _trace_seconds(bits, self.trace, col, self.trace_period_s, float(start_s))

    def mean_bps(self, direction: Literal["up", "down"]) -> float:
        """The time-averaged bandwidth (the trace's mean over one period, else the constant)."""
        col = 1 if direction == "up" else 2
        if not self.trace:
            return self.up_bps if col == 1 else self.down_bps
        return _period_bits(self.trace, col, self.trace_period_s) / self.trace_period_s


def _need(ok: bool, name: str, what: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"profile {name!r}: bad {what}: must be {allowed}")


def _period_bits(trace: Sequence[tuple[float, float, float]], col: int, period: float) -> float:
    ends = [s[0] for s in trace[1:]] + [period]
    return sum(seg[col] * (end - seg[0]) for seg, end in zip(trace, ends, strict=True))


def _trace_seconds(bits: float, trace: Sequence[tuple[float, float, float]], col: int, period: float,
                   start: float) -> float:
    """The exact time to send ``bits`` over a cyclic piecewise-constant bandwidth from ``start``:
    finish the current period segment by segment, skip whole periods, then walk the last one."""
    starts = [s[0] for s in trace]
    ends = starts[1:] + [period]
    cycle = math.floor(start / period)
    first = bisect_right(starts, start - cycle * period) - 1
    t, left = start, bits
    for rounds in range(2):
        base = cycle * period
        for j in range(first, len(trace)):
            rate, seg_end = trace[j][col], base + ends[j]
            if rate > 0 and rate * (seg_end - t) >= left:
                return t + left / rate - start
            left -= rate * max(seg_end - t, 0.0)
            t = seg_end
        cycle, first = cycle + 1, 0
        if rounds == 0:  # skip whole periods, keeping (0, one period] of bits for the last walk
            per = _period_bits(trace, col, period)
            whole = max(math.ceil(left / per) - 1, 0)
            left -= whole * per
            cycle += whole
            t = cycle * period
    return t - start  # only reached through rounding: the bits ended at the period's end


@dataclass(frozen=True)
class Catalog:
    """Named device and network profiles (built-ins plus a user's file)."""

    devices: dict[str, DeviceProfile]
    networks: dict[str, NetworkProfile]

    def table(self, kind: str) -> dict[str, DeviceProfile] | dict[str, NetworkProfile]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        return self.devices if kind == "device" else self.networks

    def profile(self, kind: str, name: str) -> Any:
        """One named profile (e.g. ``profile("device", resources.server)``); unknown names raise a
        one-line ConfigError listing the known ones."""
        return _lookup(name, kind, self.table(kind))


@dataclass(frozen=True)
class Assignment:
    """Which profile each of N clients has: ``profiles[index[pid]]``."""

    profiles: Sequence[Any]  # tuple[DeviceProfile, ...] or tuple[NetworkProfile, ...] (or a lazy table)
    index: np.ndarray  # (N,) int32

    def of(self, pid: int):  # -> DeviceProfile | NetworkProfile
        return self.profiles[int(self.index[pid])]

    def column(self, field: str) -> np.ndarray:
        """A numeric field for every client, ``(N,)`` float64 (e.g. ``column("flops")``; None -> NaN)."""
        values = getattr(self.profiles, "column", None)
        per_profile = values(field) if values else np.array(
            [math.nan if getattr(p, field) is None else float(getattr(p, field)) for p in self.profiles])
        return per_profile[self.index]


@functools.cache
def builtin_catalog() -> Catalog:
    """The shipped profiles (fedft/resources/catalog.toml; docs/resources.md cites each number)."""
    from importlib.resources import files

    from fedft.resources.catalog_io import parse_catalog

    text = files("fedft.resources").joinpath("catalog.toml").read_text()
    devices, networks = parse_catalog(text, "catalog.toml", fmt="toml")
    return Catalog(devices=devices, networks=networks)


def load_catalog(path: str = "") -> Catalog:
    """The built-ins plus the profiles of a user's TOML/JSON file (``resources.profiles``); a user's
    profile replaces a built-in one of the same name."""
    base = builtin_catalog()
    if not path:
        return base
    from fedft.resources.catalog_io import parse_catalog

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"resources.profiles: no file {path!r} (a TOML or JSON file of [device.<name>] "
                          "and [network.<name>] tables; docs/resources.md)")
    fmt = "json" if file.suffix.lower() == ".json" else "toml"
    devices, networks = parse_catalog(file.read_text(), str(file), fmt=fmt)
    return Catalog(devices={**base.devices, **devices}, networks={**base.networks, **networks})


def kind_rng(seed: int, kind: str) -> np.random.Generator:
    """The seeded generator of one kind of assignment: ``default_rng([seed, 18, kind int])``."""
    return np.random.default_rng([int(seed) % 2**32, ISSUE_SEED, KIND_SEED[kind]])


def assign(spec: str, kind: Literal["device", "network"], n: int, seed: int, catalog: Catalog,
           fedscale_reference_flops: float | None = None) -> Assignment:
    """Per-client profiles from ``spec`` (a name, a ``name=p,...`` mixture, or ``file:<path>``).

    A mixture gets exact counts (largest remainder) shuffled with :func:`kind_rng`; a file is
    fedft's JSON list of profile names or FedScale's ``client_device_capacity`` (client ``pid``
    takes entry ``pid mod len``; :mod:`fedft.resources.fedscale`)."""
    table = catalog.table(kind)
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    spec = spec.strip()
    if spec.startswith("file:"):
        from fedft.resources.fedscale import assign_file

        return assign_file(spec[len("file:"):], kind, n, table, fedscale_reference_flops)
    if "=" not in spec:
        return Assignment(profiles=(_lookup(spec, kind, table),), index=np.zeros(n, dtype=np.int32))
    names, shares = _parse_mixture(spec, kind, table)
    counts = largest_remainder(shares, n)
    index = np.repeat(np.arange(len(names), dtype=np.int32), counts)
    kind_rng(seed, kind).shuffle(index)
    return Assignment(profiles=tuple(table[x] for x in names), index=index)


def _lookup(name: str, kind: str, table: dict[str, Any]) -> Any:
    if name not in table:
        raise ConfigError(f"unknown {kind} profile {name!r}; known: {', '.join(sorted(table))} "
                          f"(or add it with resources.profiles; `fedft profiles` lists them)")
    return table[name]


def _parse_mixture(spec: str, kind: str, table: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    names: list[str] = []
    shares: list[float] = []
    for part in spec.split(","):
        name, sep, value = (s.strip() for s in part.partition("="))
        try:
            share = float(value) if sep else -1.0
        except ValueError:
            share = -1.0
        if not (share >= 0 and math.isfinite(share)):
            raise ConfigError(f"bad {kind} mixture {spec!r}: {part.strip()!r} must be name=proportion "
                              "with a proportion >= 0, e.g. phone-mid=0.6,rpi4=0.4")
        if name in names:
            raise ConfigError(f"bad {kind} mixture {spec!r}: {name!r} is listed twice")
        _lookup(name, kind, table)
        names.append(name)
        shares.append(share)
    total = sum(shares)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ConfigError(f"bad {kind} mixture {spec!r}: proportions sum to {total:.6g}, must sum to 1")
    return names, np.asarray(shares, dtype=np.float64)


def largest_remainder(shares: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``shares * n`` (Hamilton's method; ties go to the
    earlier entry)."""
    quota = np.asarray(shares, dtype=np.float64) / float(np.sum(shares)) * n
    counts = np.floor(quota).astype(np.int64)
    short = n - int(counts.sum())
    if short > 0:
        order = np.argsort(-(quota - counts), kind="stable")
        counts[order[:short]] += 1
    return counts
