"""``fedft evaluate RUN_DIR``: the last global model of a federated run, reloaded from its checkpoint."""

from __future__ import annotations

import json

from fedft.cli import main
from fedft.config import ExperimentConfig
from fedft.evaluation import evaluate_run
from fedft.runner import run

TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
    "data.test_size=24", "partition.scheme=iid", "partition.num_clients=2", "partition.min_size=4",
    "federation.rounds=2", "federation.engine=inprocess", "train.batch_size=8", "method.prompt_len=2",
    "output.plots=false", "train.head_preconditioner=kfac",
]


def test_reloaded_checkpoint_reproduces_the_last_round_and_evaluates_the_whole_split(tmp_path):
    for strategy in ("sfprompt", "sfl_v2"):  # frozen body; trained body restored from the checkpoint
        d = tmp_path / strategy
        summary = run(ExperimentConfig.from_overrides([*TINY, f"federation.strategy={strategy}"]), d, show=False)
        before = sorted(p.name for p in d.iterdir())
        same = evaluate_run(d, test_size=24)
        assert same["accuracy"] == summary["final_accuracy"] and same["round"] == 2
        assert abs(same["loss"] - summary["final_loss"]) < 1e-5
        whole = evaluate_run(d)
        assert whole["test_samples"] > 24
        assert json.loads((d / "evaluation.json").read_text())["test_samples"] == whole["test_samples"]
        assert sorted(p.name for p in d.iterdir()) == sorted({*before, "evaluation.json"})  # nothing else touched


def test_a_directory_without_checkpoint_exits_1(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("seed = 0\n")
    assert main(["evaluate", str(tmp_path)]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 1
