"""Profile files: the shipped catalogue (catalog.toml) and a user's TOML or JSON file.

A file holds ``[device.<name>]`` and ``[network.<name>]`` tables (JSON: ``{"device": {name: {...}},
"network": {...}}``). Each quantity may be given in one of several units; the key names the unit
(``gflops = 20`` is ``flops = 20e9``). Unknown keys, a quantity given twice, a missing quantity or
a bad value raise a one-line :class:`~fedft.errors.ConfigError` naming ``kind.name.key``.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from typing import Any

from fedft.errors import ConfigError
from fedft.resources.profiles import DeviceProfile, NetworkProfile

# key -> (field, multiplier to the field's unit)
DEVICE_UNITS: dict[str, tuple[str, float]] = {
    "flops": ("flops", 1.0), "gflops": ("flops", 1e9), "tflops": ("flops", 1e12),
    "peak_flops": ("peak_flops", 1.0), "peak_gflops": ("peak_flops", 1e9), "peak_tflops": ("peak_flops", 1e12),
    "memory_bytes": ("memory_bytes", 1.0), "memory_gib": ("memory_bytes", 2.0**30),
    "joules_per_flop": ("joules_per_flop", 1.0), "joules_per_gflop": ("joules_per_flop", 1e-9),
    "joules_per_byte": ("joules_per_byte", 1.0), "joules_per_mb": ("joules_per_byte", 1e-6),
}
NETWORK_UNITS: dict[str, tuple[str, float]] = {
    "up_bps": ("up_bps", 1.0), "up_kbps": ("up_bps", 1e3), "up_mbps": ("up_bps", 1e6),
    "down_bps": ("down_bps", 1.0), "down_kbps": ("down_bps", 1e3), "down_mbps": ("down_bps", 1e6),
    "rtt_s": ("rtt_s", 1.0), "rtt_ms": ("rtt_s", 1e-3), "trace_period_s": ("trace_period_s", 1.0),
}
TRACE_UNITS = {"trace_bps": 1.0, "trace_mbps": 1e6}  # a list of [start_s, up, down] segments
TEXT_KEYS = ("description", "source")
CUT_KEYS = ("head_blocks", "tail_blocks")
REQUIRED = {"device": ("flops", "memory_bytes"), "network": ("up_bps", "down_bps", "rtt_s")}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_catalog(text: str, label: str, fmt: str = "toml") -> tuple[dict[str, DeviceProfile],
                                                                     dict[str, NetworkProfile]]:
    """Device and network profiles from a file's text (``label`` names the file in errors)."""
    try:
        data = tomllib.loads(text) if fmt == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{label}: not valid {fmt.upper()}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: must hold [device.<name>] and [network.<name>] tables")
    for key in data:
        if key not in ("device", "network"):
            raise ConfigError(f"{label}: unknown table {key!r}; use [device.<name>] or [network.<name>]")
    out: dict[str, dict[str, Any]] = {"device": {}, "network": {}}
    for kind in ("device", "network"):
        tables = data.get(kind, {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{label}: {kind} must be a table of [{kind}.<name>] tables")
        for name, entry in tables.items():
            where = f"{label}: {kind}.{name}"
            if not NAME.match(name):
                raise ConfigError(f"{where}: bad name; use letters, digits, '.', '_' and '-'")
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: must be a table of keys")
            out[kind][name] = _profile(kind, name, entry, where)
    return out["device"], out["network"]


def _profile(kind: str, name: str, entry: dict[str, Any], where: str) -> DeviceProfile | NetworkProfile:
    units = DEVICE_UNITS if kind == "device" else NETWORK_UNITS
    fields: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in entry.items():
        if key in units:
            field, scale = units[key]
            _once(given, field, key, where)
            fields[field] = _number(value, f"{where}.{key}") * scale
        elif key in TEXT_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{key}: must be a string")
            fields[key] = value
        elif kind == "device" and key in CUT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{where}.{key}: must be an integer >= 0")
            fields[key] = value
        elif kind == "network" and key in TRACE_UNITS:
            _once(given, "trace", key, where)
            fields["trace"] = _trace(value, TRACE_UNITS[key], f"{where}.{key}")
        else:
            known = sorted([*units, *TEXT_KEYS, *(CUT_KEYS if kind == "device" else TRACE_UNITS)])
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(known)}")
    return _build(kind, name, fields, where)


def _build(kind: str, name: str, fields: dict[str, Any], where: str) -> DeviceProfile | NetworkProfile:
    if kind == "network" and fields.get("trace"):
        if "trace_period_s" not in fields:
            raise ConfigError(f"{where}: a trace needs trace_period_s (the cycle's length in seconds)")
        probe = NetworkProfile(name, 1.0, 1.0, 0.0, trace=fields["trace"], trace_period_s=fields["trace_period_s"])
        fields.setdefault("up_bps", probe.mean_bps("up"))  # the table shows a trace's time averages
        fields.setdefault("down_bps", probe.mean_bps("down"))
    for field in REQUIRED[kind]:
        if field not in fields:
            units = DEVICE_UNITS if kind == "device" else NETWORK_UNITS
            keys = [k for k, (f, _) in units.items() if f == field]
            raise ConfigError(f"{where}: missing {' or '.join(keys)}")
    if kind == "device":
        fields["memory_bytes"] = int(fields["memory_bytes"])
        return DeviceProfile(name=name, **fields)
    return NetworkProfile(name=name, **fields)


def _once(given: dict[str, str], field: str, key: str, where: str) -> None:
    if field in given:
        raise ConfigError(f"{where}: {key!r} and {given[field]!r} give the same quantity; keep one")
    given[field] = key


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: must be a finite number >= 0, not {value!r}")
    return float(value)


def _trace(value: Any, scale: float, where: str) -> tuple[tuple[float, float, float], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: must be a list of [start_s, up, down] segments")
    out = []
    for seg in value:
        if not isinstance(seg, list) or len(seg) != 3:
            raise ConfigError(f"{where}: each segment must be [start_s, up, down], not {seg!r}")
        start, up, down = (_number(x, where) for x in seg)
        out.append((start, up * scale, down * scale))
    return tuple(out)
