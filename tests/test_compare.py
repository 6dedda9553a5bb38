"""``fedft compare``: shared data and partitions, per-strategy overrides, one CSV and one plot."""

from __future__ import annotations

import csv

import pytest

from fedft.cli import main
from fedft.compare import compare
from fedft.config import ExperimentConfig
from fedft.errors import ConfigError

TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
    "data.test_size=16", "partition.scheme=iid", "partition.num_clients=2", "partition.min_size=4",
    "federation.rounds=1", "federation.engine=inprocess", "train.batch_size=8", "method.prompt_len=2",
    "output.plots=false",
]


def test_compare_writes_one_row_per_strategy_and_applies_per_strategy_overrides(tmp_path):
    cfg = ExperimentConfig.from_overrides(TINY)
    compare(cfg, ["sfprompt", "fl_linear"], tmp_path, show=False,
            per_strategy={"fl_linear": ["train.head_lr=0.123"]})
    rows = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [r["strategy"] for r in rows] == ["sfprompt", "fl_linear"]
    assert float(rows[0]["bytes_total"]) > 0 and float(rows[1]["split_bytes"]) == 0
    assert (tmp_path / "accuracy_vs_bytes.png").stat().st_size > 0
    lin = ExperimentConfig.from_toml(tmp_path / "fl_linear" / "config.toml")
    sfp = ExperimentConfig.from_toml(tmp_path / "sfprompt" / "config.toml")
    assert lin.train.head_lr == 0.123 and sfp.train.head_lr == cfg.train.head_lr
    assert lin.partition == sfp.partition and lin.seed == sfp.seed


def test_per_strategy_override_for_a_strategy_not_compared_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not in --strategies"):
        compare(ExperimentConfig.from_overrides(TINY), ["sfprompt"], tmp_path, show=False,
                per_strategy={"fl_full": ["train.lr=0.1"]})


def test_malformed_set_for_exits_2(tmp_path, capsys):
    rc = main(["compare", "--strategies", "sfprompt", "--set-for", "fl_full=train.lr", "--out", str(tmp_path)])
    assert rc == 2
    assert "LABEL:section.key=value" in capsys.readouterr().err


def test_labelled_entries_take_their_own_config_file_but_share_data_and_rounds(tmp_path):
    own = tmp_path / "own.toml"
    own.write_text("seed = 7\n[data]\ntrain_size = 999\n[federation]\nrounds = 9\n"
                   "[train]\nlr = 0.123\nprompt_lr = 0.5\n")
    cfg = ExperimentConfig.from_overrides(TINY)
    out = tmp_path / "cmp"
    compare(cfg, ["sfprompt", "paper=sfprompt", "paper@lr=sfprompt"], out, show=False,
            per_strategy={"paper@lr": ["train.lr=0.01"]}, config_for={"paper": own, "paper@lr": own})
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["entry"] for r in rows] == ["sfprompt", "paper", "paper@lr"]
    assert all(r["strategy"] == "sfprompt" for r in rows)
    paper = ExperimentConfig.from_toml(out / "paper" / "config.toml")
    tuned = ExperimentConfig.from_toml(out / "paper@lr" / "config.toml")
    assert (paper.train.lr, paper.train.prompt_lr, tuned.train.lr, tuned.train.prompt_lr) == (0.123, 0.5, 0.01, 0.5)
    assert paper.seed == cfg.seed and paper.data == cfg.data and paper.federation.rounds == cfg.federation.rounds
    # a second compare finds every entry done and runs nothing
    before = {p: (out / p / "summary.json").stat().st_mtime_ns for p in ("sfprompt", "paper", "paper@lr")}
    again = compare(cfg, ["sfprompt", "paper=sfprompt", "paper@lr=sfprompt"], out, show=False,
                    per_strategy={"paper@lr": ["train.lr=0.01"]}, config_for={"paper": own, "paper@lr": own})
    assert [(out / p / "summary.json").stat().st_mtime_ns for p in before] == list(before.values())
    assert [s["final_accuracy"] for s in again] == [float(r["final_accuracy"]) for r in rows]


def test_duplicate_entry_labels_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="twice"):
        compare(ExperimentConfig.from_overrides(TINY), ["sfprompt", "sfprompt"], tmp_path, show=False)
