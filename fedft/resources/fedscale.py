"""FedScale's device files: ``client_device_capacity`` (profiles) and ``client_behave_trace``
(availability), read as FedScale's own code reads them, plus fedft's per-client JSON list.

Formats (FedScale, benchmark/dataset/data/device_info/README.md and the code named below):

* ``client_device_capacity``: ``{client_id: {"computation": float, "communication": float}}``.
  FedScale's ``ClientMetadata.get_completion_time`` takes ``computation`` as the inference
  latency of its reference model in ms per sample, and training as 3x that (``augmentation_factor
  = 3``): ``3 * batch * steps * computation / 1000`` seconds. It takes ``communication`` as a
  bandwidth such that ``(upload + download) / communication`` is seconds, with sizes in units of
  1024 bits (``Aggregator.run``: ``len(pickle) / 1024 * 8``): so kbit/s with k = 1024, one
  bandwidth for both directions (from MobiPerf's Wi-Fi measurements).
* ``client_behave_trace``: ``{client_id: {"active": [s], "inactive": [s], "finish_time": s, ...}}``
  (from FLASH's one-week app trace); :mod:`fedft.resources.availability` has its semantics.

fedft turns ``computation`` into a training rate with a reference workload: FedScale's training
time per sample is ``3 c / 1000`` s and the reference's training FLOPs per sample are ``3 F``
(forward + a backward of twice the forward), so ``flops = F / (c / 1000)``, with ``F`` =
:data:`REFERENCE_FLOPS_PER_SAMPLE` unless given. Bandwidth: ``up_bps = down_bps = 1024 *
communication``. FedScale gives no memory or RTT, so every entry takes :data:`MEMORY_BYTES` and
:data:`RTT_S`.

Client mapping: client ``pid`` takes the entry ``pid mod M`` of the M entries in sorted id order
(FedScale maps its 1-based client ``k`` to ``profiles.get(k mod M)`` by key, and availability
to ``keys()[k mod M]`` in insertion order; sorted order makes fedft's mapping independent of how
the file was written). Files are JSON or a pickle read by a restricted unpickler that builds only
plain dicts, lists, tuples, numbers, strings, booleans and None; anything else is refused.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedft.errors import ConfigError
from fedft.resources.profiles import Assignment, DeviceProfile, NetworkProfile

# [D] MobileNetV2 (1.0, 224 px) forward, 300 M multiply-adds (Sandler et al. 2018) = 0.6 GFLOP:
# a typical AI-Benchmark classification model; FedScale does not name the trace's reference model
REFERENCE_FLOPS_PER_SAMPLE = 0.6e9
MEMORY_BYTES = 2 * 2**30  # [D] the phone-mid profile's app budget (FedScale's devices have > 2 GB RAM)
RTT_S = 0.0  # [D] FedScale's completion time has no per-message latency
KBIT = 1024  # FedScale's model size unit: bits / 1024 (Aggregator.run)
PLAIN = (dict, list, tuple, int, float, str, bool, type(None))


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def read_plain(path: str | Path) -> Any:
    """A JSON file, or a pickle of plain Python data only (one-line ConfigError otherwise)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"no file {str(path)!r} (JSON, or a pickle of plain dicts and lists)")
    raw = file.read_bytes()
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file}: not valid JSON: {str(e).splitlines()[0]}") from None
    try:
        data = _PlainUnpickler(io.BytesIO(raw)).load()
    except Exception as e:  # a malformed pickle raises many kinds of error
        raise ConfigError(f"{file}: not a JSON file or a pickle of plain data ({str(e).splitlines()[0]}); "
                          "re-save it with plain dicts, lists, numbers and strings, or as JSON") from None
    _check_plain(data, str(file))
    return data


def _check_plain(data: Any, label: str) -> None:
    stack = [data]
    while stack:
        x = stack.pop()
        if not isinstance(x, PLAIN):
            raise ConfigError(f"{label}: holds a {type(x).__name__}; only plain dicts, lists, numbers and "
                              "strings are read")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def sorted_entries(data: Any, label: str) -> list[tuple[Any, Any]]:
    """A FedScale dict's (id, value) pairs in sorted id order (numeric ids as numbers)."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{label}: must be a non-empty dict {{client_id: entry}} (FedScale format)")

    def key(item: tuple[Any, Any]) -> tuple[int, float, str]:
        k = item[0]
        try:
            return (0, float(k), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(k))

    return sorted(data.items(), key=key)


def _positive(entry: Any, field: str, label: str, cid: Any) -> float:
    value = entry.get(field) if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{label}: client {cid}: {field!r} must be a number > 0, not {value!r}")
    return float(value)


class ProfileTable(Sequence):
    """A lazy tuple of FedScale-derived profiles: numbers in arrays, a profile built on access."""

    def __init__(self, kind: str, ids: list[Any], values: dict[str, np.ndarray], label: str) -> None:
        self.kind, self.ids, self.values, self.label = kind, ids, values, label

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        name = f"fedscale-{self.ids[i]}"
        src = f"FedScale {Path(self.label).name} client {self.ids[i]}"
        if self.kind == "device":
            return DeviceProfile(name=name, flops=float(self.values["flops"][i]), memory_bytes=MEMORY_BYTES,
                                 description="from FedScale's computation (ms/sample)", source=src)
        bps = float(self.values["up_bps"][i])
        return NetworkProfile(name=name, up_bps=bps, down_bps=bps, rtt_s=RTT_S,
                              description="from FedScale's communication (kbit/s)", source=src)

    def column(self, field: str) -> np.ndarray:
        """One numeric field of every entry, vectorised."""
        if field in self.values:
            return self.values[field]
        if field == "down_bps":
            return self.values["up_bps"]
        values = (getattr(self[i], field) for i in range(len(self)))
        return np.array([math.nan if v is None else float(v) for v in values])


def capacity_table(data: Any, kind: str, label: str, reference_flops: float | None = None) -> ProfileTable:
    """FedScale ``client_device_capacity`` entries as device or network profiles."""
    ref = REFERENCE_FLOPS_PER_SAMPLE if reference_flops is None else float(reference_flops)
    if not ref > 0:
        raise ConfigError(f"the FedScale reference FLOPs per sample must be > 0, not {ref}")
    entries = sorted_entries(data, label)
    comp = np.array([_positive(v, "computation", label, k) for k, v in entries])
    comm = np.array([_positive(v, "communication", label, k) for k, v in entries])
    values = {"flops": ref / (comp / 1000.0)} if kind == "device" else {"up_bps": comm * KBIT}
    return ProfileTable(kind, [k for k, _ in entries], values, label)


def assign_file(path: str, kind: str, n: int, table: dict[str, Any],
                reference_flops: float | None = None) -> Assignment:
    """``file:<path>`` assignments: fedft's JSON list of profile names, or FedScale's capacity
    dict; client ``pid`` takes entry ``pid mod len`` (sorted ids for FedScale)."""
    data = read_plain(path)
    pids = np.arange(n, dtype=np.int64)
    if isinstance(data, list):
        if not data or not all(isinstance(x, str) for x in data):
            raise ConfigError(f"{path}: a list must hold profile names, e.g. [\"phone-mid\", \"rpi4\"]")
        unknown = sorted(set(data) - set(table))
        if unknown:
            raise ConfigError(f"{path}: unknown {kind} profile {unknown[0]!r}; known: {', '.join(sorted(table))}")
        names, inverse = np.unique(np.asarray(data), return_inverse=True)
        return Assignment(profiles=tuple(table[str(x)] for x in names),
                          index=inverse[pids % len(data)].astype(np.int32))
    profiles = capacity_table(data, kind, path, reference_flops)
    return Assignment(profiles=profiles, index=(pids % len(profiles)).astype(np.int32))
