"""SFT data in the training pipeline: the ``sft`` modality, response-only labels in batches,
and a federated LoRA run on a tiny Llama that learns."""

from __future__ import annotations

import csv

import numpy as np

from fedft.cli import default_config
from fedft.config import DataConfig
from fedft.data import sft
from fedft.data.datasets import encode, load_raw
from fedft.data.sft_data import SFTSplit
from fedft.data.text import HashTokenizer


def test_sft_batches_label_the_response_only_and_pad_per_batch():
    raw = load_raw(DataConfig(name="synthetic-sft", train_size=100, val_size=20, test_size=0), seed=0)
    assert raw.modality == "sft" and raw.label_names == ["add", "what"]
    assert len(raw.val_y) == 20 and not {e.prompt for e in raw.val_x} & {e.prompt for e in raw.train_x}
    tok = HashTokenizer(99)
    split = encode(raw, "train", tok, max_length=64)
    assert isinstance(split, SFTSplit) and len(split) == 100
    idx = np.array([3, 1, 4])
    b = split.batch(idx)
    items = [sft.tokenize(raw.train_x[i], tok, 64) for i in idx]
    assert b["input_ids"].shape == (3, max(len(it) for it in items))  # padded to this batch's longest
    for row, it in enumerate(items):
        n = len(it)
        assert b["labels"][row, :n].tolist() == it.labels and (b["labels"][row, n:] == sft.IGNORE).all()
        labelled = [t for t in it.labels if t != sft.IGNORE]
        assert labelled == [*tok.ids(raw.train_x[idx[row]].response), tok.sep_token_id]


def test_federated_lora_sft_on_a_tiny_llama_lowers_the_response_loss(tmp_path):
    from fedft.runner import run

    cfg = default_config(["model.name=tiny-llama", "model.task=causal_lm", "data.name=synthetic-sft",
                          "data.train_size=200", "data.val_size=40", "data.test_size=0", "method.name=lora",
                          "federation.strategy=fedavg", "federation.engine=inprocess", "federation.rounds=3",
                          "federation.eval_every=1", "partition.num_clients=2", "partition.scheme=iid",
                          "train.optimizer=adamw", "train.lr=0.01", "train.precision=fp32", "output.plots=false"])
    summary = run(cfg, tmp_path / "run", show=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    losses = [float(r["val_loss"]) for r in rows[:3]]  # a 4th row: the merged (finalized) LoRA model
    assert [int(r["round"]) for r in rows[:3]] == [1, 2, 3]
    assert losses[0] > losses[1] > losses[2] and losses[2] < losses[0] - 0.1, losses
    assert abs(float(rows[-1]["val_loss"]) - losses[2]) < 1e-3  # merging LoRA changes nothing
    assert summary["test_samples"] > 0 and summary["val_samples"] > 0
