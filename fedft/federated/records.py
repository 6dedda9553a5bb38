"""Flower records <-> fedft values, and byte accounting of every record that travels.

Both ways a round can be delivered (Flower messages, or direct calls in the in-process engine)
build the same ``RecordDict`` contents, so the ledger records the same ``count_bytes()``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedft import keys
from fedft.accounting import CommLedger, Direction, Kind, Phase
from fedft.config import ExperimentConfig, OutputConfig, to_toml
from fedft.federated.aggregation import Update
from fedft.federated.update_codec import encode_update


def to_arrays(update: Update) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in update.items()})


def from_arrays(record: ArrayRecord) -> Update:
    return {k: v.numpy() for k, v in record.items()}


def train_content(update: Update, cfg: ExperimentConfig, round: int, extra: dict[str, str | int | bytes]) -> RecordDict:
    """The content of a train message: global client-side state and the round's configuration."""
    client_cfg = cfg.replace(output=OutputConfig())  # where the server writes is none of the client's business
    config = ConfigRecord({keys.SERVER_ROUND: round, keys.RUN_CONFIG_TOML: to_toml(client_cfg), **extra})
    wire = encode_update(update, cfg.federation.params_wire)  # absolute values (docs/wire.md)
    return RecordDict({keys.ARRAYS: to_arrays(wire), keys.CONFIG: config})


def reply_content(update: Update, metrics: dict[str, float], timeline: MetricRecord | None = None) -> RecordDict:
    content = RecordDict({keys.ARRAYS: to_arrays(update), keys.METRICS: MetricRecord(metrics)})
    if timeline is not None:
        content[keys.TIMELINE] = timeline
    return content


def record_content(ledger: CommLedger, round: int, client: str, content: RecordDict, direction: Direction,
                   phase: str = Phase.SYNC) -> None:
    """Add every record of a message to the ledger: arrays as parameters, the rest as control
    (except the time model's timeline, the simulator's own instrumentation)."""
    params = Kind.PARAMS_UP if direction == Direction.UP else Kind.PARAMS_DOWN
    arrays = sum(r.count_bytes() for r in content.array_records.values())
    other = sum(r.count_bytes() for r in content.config_records.values()) + \
        sum(r.count_bytes() for k, r in content.metric_records.items() if k != keys.TIMELINE)
    if arrays:
        ledger.add(round, client, phase, params, arrays)
    if other:
        ledger.add(round, client, phase, Kind.CONTROL, other, direction)
