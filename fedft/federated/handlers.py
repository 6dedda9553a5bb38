"""The client's message handlers, free of Flower's Message wrapper (so the in-process engine and
the ClientApp run the same code): parse once at the boundary, run the round, pack the reply."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedft import keys
from fedft.accounting import CommLedger
from fedft.body.wire import Wire
from fedft.config import ExperimentConfig
from fedft.federated.client import client_cut, client_round, grpc_opener, runtime
from fedft.federated.records import from_arrays, reply_content
from fedft.federated.update_codec import decode_update, encode_update
from fedft.flops import FlopsMeter
from fedft.resources.timeline import TimelineLedger, client_clock

log = logging.getLogger(__name__)


def handle_train(content: RecordDict, pid: int, state: dict | None = None) -> RecordDict:
    """One client round from a train message's content; returns the reply content."""
    config: ConfigRecord = content[keys.CONFIG]  # type: ignore[assignment]
    cfg = ExperimentConfig.from_toml_text(str(config[keys.RUN_CONFIG_TOML]))
    round = int(config[keys.SERVER_ROUND])  # type: ignore[arg-type]
    rt = runtime(cfg)
    if not 0 <= pid < len(rt.partitions):
        raise ValueError(f"partition id {pid} is outside 0..{len(rt.partitions) - 1}")
    meter = FlopsMeter()
    ledger = TimelineLedger(meter) if cfg.resources.enabled else CommLedger()
    opener = None
    if keys.BODY_ADDRESS in config:
        root = config.get(keys.BODY_ROOT_CERT)
        opener = grpc_opener(str(config[keys.BODY_ADDRESS]), str(config[keys.BODY_TOKEN]), ledger, round,
                             str(pid), Wire.of(cfg.split), cfg.train.batch_size,
                             root if isinstance(root, bytes) else None, client_cut(cfg, pid))
    clock = client_clock(cfg, pid, content, ledger, meter) if cfg.resources.enabled else None
    received = decode_update(from_arrays(content[keys.ARRAYS]), cfg.federation.params_wire)  # type: ignore[arg-type]
    update, metrics = client_round(rt, round, pid, received, opener, state, meter=meter, clock=clock)
    for kind, nbytes in ledger.by_kind().items():
        metrics[f"{keys.CLIENT_BYTES_PREFIX}{kind}"] = float(nbytes)
    timeline = ledger.record_for_reply() if isinstance(ledger, TimelineLedger) else None
    return reply_content(encode_update(update, cfg.federation.params_wire, received), metrics, timeline)


def handle_hello(pid: int, num_partitions: int) -> RecordDict:
    """Answer the server's first query with this node's partition id and partition count."""
    return RecordDict({keys.METRICS: MetricRecord({keys.PARTITION_ID: pid, keys.NUM_PARTITIONS: num_partitions})})
