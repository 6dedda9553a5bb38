"""Generative evaluation inside runs (``[generate]``, fedft/gen_eval.py): a model that learns the
answers scores higher, training prompts are dropped, and runs record the score per round."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fedft.cli import default_config
from fedft.data.sft import pad_batch, tokenize
from fedft.errors import ConfigError
from fedft.gen_eval import GenerativeEval, _eval_examples
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

SFT = ["model.name=tiny-llama", "model.task=causal_lm", "data.name=synthetic-sft", "data.max_length=48"]


def _memorise(model, tok, examples, steps: int = 150) -> None:
    items = [tokenize(e, tok, 48) for e in examples]
    batch = pad_batch(items, tok.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss(model(batch), batch).backward()
        opt.step()


def test_a_model_that_learns_the_answers_scores_higher():
    cfg = default_config([*SFT, "generate.data=synthetic-sft", "generate.samples=6", "generate.max_new_tokens=4"])
    pool = _eval_examples(cfg)
    tok = tiny_chat_tokenizer([f"{e.prompt} {e.response}" for e in pool])
    model = tiny_task_model("llama", vocab_size=len(tok))
    ev = GenerativeEval.for_run(cfg, tok, train_x=[])
    assert ev is not None and len(ev.examples) == 6 and ev.removed == 0
    before = ev.score(model)
    _memorise(model, tok, ev.examples)
    after = ev.score(model)
    assert before <= 1 / 6 and after >= 5 / 6, (before, after)
    assert ev.summary(after) == {"gen_score": after, "gen_judge": "exact_match", "gen_samples": 6,
                                 "gen_decontaminated": 0}


def test_prompts_seen_in_training_are_dropped():
    cfg = default_config([*SFT, "generate.data=synthetic-sft"])
    pool = _eval_examples(cfg)
    tok = tiny_chat_tokenizer([f"{e.prompt} {e.response}" for e in pool])
    ev = GenerativeEval.for_run(cfg, tok, train_x=pool[:5])
    assert ev.removed == 5 and len(ev.examples) == len(pool) - 5
    assert not {e.prompt for e in ev.examples} & {e.prompt for e in pool[:5]}


@pytest.mark.parametrize("overrides, message", [
    (["model.name=tiny-vit", "generate.data=synthetic-sft"], "model.task = 'causal_lm'"),
    ([*SFT, "generate.data=synthetic-text"], "not an SFT dataset"),
])
def test_bad_generate_settings_are_one_line_errors(overrides, message):
    cfg = default_config(overrides)
    with pytest.raises(ConfigError, match=message):
        GenerativeEval.for_run(cfg, tiny_chat_tokenizer(["a"]), train_x=[])


def test_federated_run_records_the_generative_score_each_round(tmp_path):
    from fedft.runner import run

    cfg = default_config([*SFT, "data.train_size=60", "data.val_size=10", "data.test_size=10", "method.name=lora",
                          "federation.strategy=fedavg", "federation.engine=inprocess", "federation.rounds=2",
                          "federation.eval_every=1", "partition.num_clients=2", "partition.scheme=iid", "train.precision=fp32",
                          "generate.data=synthetic-sft", "generate.judge=f1", "generate.samples=5",
                          "generate.max_new_tokens=3", "output.plots=false"])
    summary = run(cfg, tmp_path / "run", show=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    scores = [float(r["gen_score"]) for r in rows]
    assert len(scores) >= 2 and all(0.0 <= s <= 1.0 for s in scores)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["gen_judge"] == "f1" and saved["gen_samples"] == 5 and saved["gen_score"] == summary["gen_score"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and set(lines[0]) == {"prompt", "gold", "completion", "f1"}
    assert abs(sum(x["f1"] for x in lines) / 5 - summary["gen_score"]) < 1e-9
    from fedft.evaluation import evaluate_run

    (tmp_path / "run" / "generations.jsonl").unlink()
    again = evaluate_run(tmp_path / "run")  # the last checkpoint, judged again
    assert again["gen_samples"] == 5 and 0.0 <= again["gen_score"] <= 1.0
    assert (tmp_path / "run" / "generations.jsonl").is_file()


def test_central_run_records_the_generative_score_each_epoch(tmp_path):
    from fedft.runner import run

    cfg = default_config([*SFT, "data.train_size=40", "data.val_size=10", "data.test_size=10", "method.name=lora",
                          "federation.strategy=central", "train.epochs=1", "train.precision=fp32",
                          "generate.data=synthetic-sft", "generate.samples=4", "generate.max_new_tokens=3",
                          "output.plots=false"])
    summary = run(cfg, tmp_path / "run", show=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    # epoch 0 (before training), 1, and 1 again after LoRA's merge
    assert [r["epoch"] for r in rows] == ["0", "1", "1"] and all(r["gen_score"] != "" for r in rows)
    assert summary["gen_samples"] == 4 and 0.0 <= summary["gen_score"] <= 1.0
