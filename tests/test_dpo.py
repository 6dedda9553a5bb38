"""DPO (fedft.losses.dpo): sequence log-probs and the loss against hand-computed values, the
loss plugin's batch layout, and a few steps on a tiny model raising the chosen-over-rejected margin."""

from __future__ import annotations

import math

import pytest
import torch

from fedft.data.sft import SFTExample, tokenize
from fedft.losses import LOSSES
from fedft.losses.dpo import (
    DPOLoss,
    DPOOptions,
    dpo_batch,
    dpo_loss,
    reference_logps,
    sequence_logps,
    train_dpo,
)
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

NO = -100


def test_sequence_logps_sums_the_labelled_tokens():
    logits = torch.zeros(2, 3, 2)  # vocabulary 2: p = 1/2 unless a logit is set
    logits[0, 1, 1] = 1.0  # row 0, position 1 predicts token 2: p(1) = e/(1+e), p(0) = 1/(1+e)
    labels = torch.tensor([[NO, 0, 1], [NO, NO, 0]])
    got = sequence_logps(logits, labels)
    want = [math.log(0.5) + math.log(math.e / (1 + math.e)), math.log(0.5)]
    assert got.tolist() == pytest.approx(want)


def test_dpo_loss_by_hand():
    # chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1: margin 2, beta 0.5 -> -log sigma(1)
    got = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert float(got) == pytest.approx(math.log(1 + math.exp(-1)))
    # at the reference the loss is log 2 whatever beta; a reversed pair costs more
    assert float(dpo_loss(*[torch.tensor([-2.0])] * 4)) == pytest.approx(math.log(2))
    rev = dpo_loss(torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert float(rev) == pytest.approx(math.log(1 + math.e))


def test_the_plugin_reads_chosen_rows_then_rejected_rows():
    assert LOSSES.get("dpo") is DPOLoss
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 5, 7), torch.randint(0, 7, (4, 5))
    labels[:, :2] = NO
    ref = torch.tensor([-9.0, -8.0, -7.0, -10.0])
    got = DPOLoss(DPOOptions(beta=0.2))(logits, {"labels": labels, "ref_logps": ref})
    lp = sequence_logps(logits, labels)
    assert float(got) == pytest.approx(float(dpo_loss(lp[:2], lp[2:], ref[:2], ref[2:], 0.2)))
    with pytest.raises(ValueError, match="even"):
        DPOLoss()(logits[:3], {"labels": labels[:3], "ref_logps": ref[:3]})
    with pytest.raises(ValueError):
        DPOOptions(beta=0.0)


TOK = tiny_chat_tokenizer(["name a city . paris rome . name a fruit . apple pear . i do not know"])
PAIRS = [("name a city .", "paris", "i do not know"), ("name a fruit .", "apple pear", "i do not know")]


def test_a_few_dpo_steps_raise_the_chosen_over_rejected_margin():
    model = tiny_task_model("llama", seed=0, vocab_size=len(TOK), max_position_embeddings=64,
                            pad_token_id=TOK.pad_token_id)
    chosen = [tokenize(SFTExample(p, c), TOK, 32) for p, c, _ in PAIRS]
    rejected = [tokenize(SFTExample(p, r), TOK, 32) for p, _, r in PAIRS]
    pad = TOK.pad_token_id
    ref = reference_logps(model, [*chosen, *rejected], pad)
    batch = dpo_batch(chosen, rejected, pad, ref)
    assert batch["input_ids"].shape[0] == 4 and torch.equal(batch["ref_logps"], ref)
    log = train_dpo(model, chosen, rejected, pad, beta=0.5, lr=1e-2, epochs=8, batch_size=2, seed=0)
    assert log.steps == 8 and log.margins[0] == pytest.approx(0.0, abs=1e-4)  # starts at the reference
    after = reference_logps(model, [*chosen, *rejected], pad) - ref
    margin = after[:2] - after[2:]
    assert (margin > 1.0).all()
    assert log.losses[-1] < log.losses[0] < math.log(2) + 1e-4
