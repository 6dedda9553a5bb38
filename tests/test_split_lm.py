"""SFPrompt on a split causal language model: LM EL2N, what trains and travels (prompts and the
final norm, never the tied LM head), and a federated run on a tiny Llama that learns."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from fedft.cli import default_config
from fedft.split.step import lm_el2n


def test_lm_el2n_is_the_mean_token_distance_over_labelled_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g) * 3
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, :4] = -100  # a prompt
    labels[2, :] = -100  # nothing labelled
    got = lm_el2n(logits, labels)
    for b in range(3):
        dists = [(logits[b, t].softmax(-1) - F.one_hot(labels[b, t + 1], 11).float()).norm()
                 for t in range(5) if labels[b, t + 1] != -100]
        want = torch.stack(dists).mean() if dists else torch.tensor(0.0)
        assert torch.allclose(got[b], want, atol=1e-5), (b, got[b], want)


def test_lm_el2n_ranks_a_confidently_right_sample_below_a_wrong_one():
    labels = torch.tensor([[-100, 3, 4], [-100, 3, 4]])
    logits = torch.zeros(2, 3, 8)
    logits[0, 0, 3] = logits[0, 1, 4] = 10.0  # predicts the labels
    logits[1, 0, 5] = logits[1, 1, 6] = 10.0  # predicts other tokens
    s = lm_el2n(logits, labels)
    assert s[0] < 0.01 and s[1] > 1.4


def _sfprompt_lm(tmp_path, extra=()):
    from fedft.runner import run

    cfg = default_config(["model.name=tiny-llama", "model.task=causal_lm", "data.name=synthetic-sft",
                          "data.max_length=48", "data.train_size=120", "data.val_size=20", "data.test_size=20",
                          "federation.strategy=sfprompt", "federation.engine=inprocess", "federation.rounds=3",
                          "federation.eval_every=1", "partition.num_clients=2", "partition.scheme=iid",
                          "method.name=prompt_tuning", "method.prompt_len=4", "train.optimizer=adam",
                          "train.lr=0.01", "train.batch_size=8", "train.precision=fp32", "output.plots=false",
                          *extra])
    summary = run(cfg, tmp_path / "run", show=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    return summary, rows


def test_a_tied_lm_head_stays_frozen_and_local_while_prompts_and_final_norm_travel():
    from fedft.config import MethodConfig
    from fedft.federated.payload import download
    from fedft.methods import METHODS
    from fedft.model.tiny import tiny_task_model
    from fedft.split import SplitSpec, split_model

    model = tiny_task_model("llama", prompt_len=4, tie_word_embeddings=True)
    emb = model.backbone.get_input_embeddings().weight
    assert model.output_layer.weight is emb  # tied, as in SmolLM2
    method = METHODS.get("prompt_tuning")(MethodConfig(name="prompt_tuning", prompt_len=4))
    method.apply(model)
    parts = split_model(model, SplitSpec(0, 0))
    trainable = parts.client_named_parameters()
    assert set(trainable) == {"prompt.prompt_embeddings", "backbone.norm.weight"}
    assert not emb.requires_grad
    sent = download(method, model, parts)
    assert set(sent) == {"prompt.prompt_embeddings", "backbone.norm.weight"}
    assert all(id(p) != id(emb) for p in parts.tail.parameters() if p.requires_grad)


def test_sfprompt_on_a_split_tiny_llama_lowers_the_response_loss_and_prunes_by_lm_el2n(tmp_path):
    summary, rows = _sfprompt_lm(tmp_path)
    losses = [float(r["val_loss"]) for r in rows[:3]]
    assert losses[2] < losses[0] - 0.05, losses
    assert [int(r["kept_samples"]) for r in rows[:3]] == [60, 60, 60]  # keep_ratio 0.5 of 120
    kinds = summary["bytes_by_kind"]
    assert kinds["activations_up"] > 0 and kinds["grads_down"] > 0, kinds
    assert summary["travelling_params"] == 4 * 32 + 32  # prompts (4 x hidden 32) + final norm
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["server_flops"] > 0 and saved["client_flops"] > 0


@pytest.mark.parametrize("name", ["lora", "ia3", "ssf", "prompt_tuning", "s2ft", "hft"])
def test_parameter_methods_leave_a_causal_lm_head_frozen(name):
    from fedft.config import MethodConfig
    from fedft.methods import METHODS
    from fedft.model.tiny import tiny_task_model

    model = tiny_task_model("llama", prompt_len=4 if name == "prompt_tuning" else 0, tie_word_embeddings=True)
    METHODS.get(name)(MethodConfig(name=name, prompt_len=4)).apply(model)
    assert not model.output_layer.weight.requires_grad
    assert any(p.requires_grad for p in model.parameters())
