"""``fedft evaluate RUN_DIR``: the global model of a federated run on a (by default the whole) test split.

A federated run validates each round and evaluates its final model once on ``data.test_size``
test samples (0 = all). This re-evaluates a run's last checkpoint (an older run that tested a
subset, a run stopped early): it loads the run's resolved config and its last checkpoint (the
aggregated client-side state, and the body when it trains) and evaluates on any test size, by
default all of the test split. A language-model run with ``[generate]`` is also judged again on
its generations (``gen_*`` keys). It writes ``RUN_DIR/evaluation.json`` (and, with
``[generate]``, ``generations.jsonl``) and changes nothing else in the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.outputs import CONFIG

EVALUATION = "evaluation.json"


@dataclass
class LoadedRun:
    """A federated run's config, data, and its model at the last checkpoint (body included)."""

    cfg: ExperimentConfig
    raw: Any  # fedft.data.datasets.RawData
    model: Any  # fedft.model.task.TaskModel
    preprocess: Any
    round: int


def load_run(run_dir: str | Path, test_size: int | None = None) -> LoadedRun:
    """Load RUN_DIR's resolved config and last checkpoint into a model (``test_size`` overrides
    ``data.test_size``; 0 = the whole test split)."""
    from fedft.data.datasets import load_raw
    from fedft.federated.checkpoint import load
    from fedft.model.build import build_model
    from fedft.split import SplitSpec, split_model

    path = Path(run_dir)
    if not (path / CONFIG).is_file():
        raise FedftError(f"{path} is not a fedft run directory (no {CONFIG})")
    ckpt = load(path)
    if ckpt is None:
        raise FedftError(f"{path} has no checkpoint (central runs keep none; federated runs write one "
                         "after every round)")
    cfg = ExperimentConfig.from_toml(path / CONFIG)
    if test_size is not None:
        cfg = cfg.replace(data=replace(cfg.data, test_size=test_size))
    raw = load_raw(cfg.data, cfg.seed)
    model, method, pre = build_model(cfg, raw.num_labels)
    method.decode_update(model, ckpt.global_update)
    if ckpt.body is not None:
        parts = split_model(model, SplitSpec(cfg.split.head_blocks, cfg.split.tail_blocks))
        parts.body.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.body.items()})
    return LoadedRun(cfg, raw, model, pre, ckpt.round)


def evaluate_run(run_dir: str | Path, test_size: int = 0, batch_size: int = 0) -> dict[str, Any]:
    """Accuracy and loss of the run's last global model on ``test_size`` test samples (0 = all)."""
    from fedft.data.datasets import encode
    from fedft.train import evaluate

    t0 = time.time()
    run = load_run(run_dir, test_size)
    cfg, path = run.cfg, Path(run_dir)
    test = encode(run.raw, "test", run.preprocess, cfg.data.max_length)
    from fedft.federated.client import split_parts
    from fedft.split.served import served

    model = served(run.model, split_parts(cfg, run.model), cfg.split.wire_dtype)  # split: over its wire
    result = evaluate(model, test, batch_size or cfg.train.eval_batch_size)
    out = {"run_dir": str(path), "strategy": cfg.federation.strategy, "round": run.round,
           "test_samples": result.n, "accuracy": result.accuracy, "loss": result.loss}
    if cfg.generate.data:  # the run's generative evaluation again, with the completions written
        from fedft.gen_eval import GenerativeEval

        gen = GenerativeEval.for_run(cfg, run.preprocess, list(run.raw.train_x))
        assert gen is not None
        out.update(gen.summary(gen.score(run.model), path))
    out["seconds"] = round(time.time() - t0, 2)
    (path / EVALUATION).write_text(json.dumps(out, indent=2) + "\n")
    return out
