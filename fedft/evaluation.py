"""``fedft evaluate RUN_DIR``: the global model of a federated run on a (by default the whole) test split.

A federated run evaluates on ``data.test_size`` test samples each round, a subset that keeps
rounds short. This loads the run's resolved config and its last checkpoint (the aggregated
client-side state, and the body when it trains) and evaluates on any test size, by default all
of the test split. It writes ``RUN_DIR/evaluation.json`` and changes nothing else in the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.outputs import CONFIG

EVALUATION = "evaluation.json"


def evaluate_run(run_dir: str | Path, test_size: int = 0, batch_size: int = 0) -> dict[str, Any]:
    """Accuracy and loss of the run's last global model on ``test_size`` test samples (0 = all)."""
    from fedft.data.datasets import encode, load_raw
    from fedft.federated.checkpoint import load
    from fedft.model.build import build_model
    from fedft.split import SplitSpec, split_model
    from fedft.train import evaluate

    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise FedftError(f"{path} is not a fedft run directory (no {CONFIG})")
    ckpt = load(path)
    if ckpt is None:
        raise FedftError(f"{path} has no checkpoint (central runs keep none; federated runs write one "
                         "after every round)")
    t0 = time.time()
    cfg = ExperimentConfig.from_toml(path / CONFIG)
    cfg = cfg.replace(data=replace(cfg.data, test_size=test_size))
    raw = load_raw(cfg.data, cfg.seed)
    model, method, pre = build_model(cfg, raw.num_labels)
    method.decode_update(model, ckpt.global_update)
    if ckpt.body is not None:
        parts = split_model(model, SplitSpec(cfg.split.head_blocks, cfg.split.tail_blocks))
        parts.body.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.body.items()})
    test = encode(raw, "test", pre, cfg.data.max_length)
    result = evaluate(model, test, batch_size or cfg.train.eval_batch_size)
    out = {"run_dir": str(path), "strategy": cfg.federation.strategy, "round": ckpt.round,
           "test_samples": result.n, "accuracy": result.accuracy, "loss": result.loss,
           "seconds": round(time.time() - t0, 2)}
    (path / EVALUATION).write_text(json.dumps(out, indent=2) + "\n")
    return out
