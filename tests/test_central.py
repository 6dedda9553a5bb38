"""Central runs end to end on tiny random models, and the CLI's error contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedft.cli import main
from fedft.config import ExperimentConfig
from fedft.runner import run

TINY = ["model.name=tiny-dinov2", "data.name=synthetic-images", "data.image_size=16",
        "federation.strategy=central", "train.batch_size=32", "output.plots=true"]


def test_full_ft_learns_synthetic_images(tmp_path):
    cfg = ExperimentConfig.from_overrides([*TINY, "method.name=full_ft", "train.epochs=4", "train.lr=0.003",
                                           "data.train_size=400", "data.val_size=100"])
    summary = run(cfg, tmp_path, show=False)
    assert summary["final_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert summary["final_accuracy"] == summary["test_accuracy"] and summary["test_samples"] == 200
    assert summary["val_samples"] == 100 and summary["val_accuracy"] > 0.5
    for f in ("config.toml", "metrics.csv", "summary.json", "accuracy.png"):
        assert (tmp_path / f).is_file()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_loss,val_accuracy,seconds,gen_score" and len(rows) == 6
    assert float(rows[-1].split(",")[3]) == summary["val_accuracy"]
    assert json.loads((tmp_path / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]


def test_linear_probe_trains_only_the_head(tmp_path):
    cfg = ExperimentConfig.from_overrides([*TINY, "method.name=linear_probe", "train.epochs=3"])
    summary = run(cfg, tmp_path, show=False)
    assert summary["trainable_params"] == 32 * 10 + 10


def test_text_run(tmp_path):
    cfg = ExperimentConfig.from_overrides(["federation.strategy=central", "model.name=tiny-bert", "data.name=synthetic-text", "data.max_length=16",
                                           "method.name=full_ft", "train.epochs=3", "train.lr=0.003"])
    assert run(cfg, tmp_path, show=False)["final_accuracy"] > 0.5


def test_unknown_key_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.1\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.learning_rate" in err[0] and "valid keys in [train]" in err[0]


def test_bad_method_exits_2(capsys):
    assert main(["run", "--set", "method.name=nope"]) == 2
    assert "method.name" in capsys.readouterr().err


def test_missing_asset_says_how_to_fetch(tmp_path):
    env = {"FEDFT_HOME": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "fedft.cli", "run", "--config",
                        "experiments/configs/mnist_linear_probe.toml", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "fedft assets" in lines[0] and "Traceback" not in p.stderr


@pytest.mark.parametrize("cmd", [[], ["run"], ["assets"], ["methods"]])
def test_help_everywhere(cmd):
    p = subprocess.run([sys.executable, "-m", "fedft.cli", *cmd, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "usage: fedft" in p.stdout
