"""SFT data in the training pipeline: the ``sft`` modality, response-only labels in batches,
and a federated LoRA run on a tiny Llama that learns."""

from __future__ import annotations

import csv

import numpy as np
import pytest

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


def test_data_system_prompt_is_a_system_turn_in_training_and_generative_evaluation():
    from fedft.data.sft_data import encode_sft
    from fedft.errors import ConfigError
    from fedft.gen_eval import GenerativeEval
    from fedft.model.tiny import tiny_chat_tokenizer

    raw = load_raw(DataConfig(name="synthetic-sft", train_size=20, val_size=0, test_size=10,
                              system_prompt="answer in one word"), seed=0)
    assert raw.system == "answer in one word"
    tok = tiny_chat_tokenizer([f"{e.prompt} {e.response} answer in one word" for e in raw.train_x + raw.test_x])
    with_system = encode(raw, "train", tok, max_length=64)
    raw.system = None
    plain = encode(raw, "train", tok, max_length=64)
    sys_ids = tok("answer in one word", add_special_tokens=False)["input_ids"]
    a, b = with_system.items[0], plain.items[0]
    text = tok.decode(a.input_ids)
    assert "system" in text and "answer in one word" in text and "answer in one word" not in tok.decode(b.input_ids)
    assert a.input_ids[-len(b):] == b.input_ids and len(a) >= len(b) + len(sys_ids) + 2  # a turn before it
    assert [t for t in a.labels if t != sft.IGNORE] == [t for t in b.labels if t != sft.IGNORE]  # same response
    cfg = default_config(["model.name=tiny-llama", "model.task=causal_lm", "data.name=synthetic-sft",
                          "data.system_prompt=answer in one word", "generate.data=synthetic-sft", "generate.samples=2"])
    ev = GenerativeEval.for_run(cfg, tok, train_x=[])
    assert "answer in one word" in tok.decode(ev.prompts[0])
    with pytest.raises(ConfigError, match="data.system_prompt"):
        encode_sft(raw.train_x, raw.train_y, HashTokenizer(99), 64, system="x")
