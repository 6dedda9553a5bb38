"""Multi-task SFT losses (fedft.losses) against hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedft.losses import MultiTaskLoss, token_nll

NO = -100  # not a loss token


def batch():
    """Three samples, vocabulary 2; logits chosen so each loss token's NLL is known:
    p(correct) = 1/2 (nll = log 2) or 1/(1 + e) (nll = log(1 + e))."""
    e = math.e
    logits = torch.zeros(3, 4, 2)
    logits[0, 1, 0] = 1.0  # sample 0: token 2 (label 1) has p = 1/(1+e); token 3 (label 0) p = 1/2
    labels = torch.tensor([[NO, NO, 1, 0], [NO, 0, NO, NO], [NO, NO, NO, 1]])
    task_ids = torch.tensor([0, 0, 1])
    a, b = math.log(1 + e), math.log(2)
    return logits, labels, task_ids, a, b


def test_token_nll_masks_everything_but_the_response():
    logits, labels, _, a, b = batch()
    nll, mask = token_nll(logits, labels)
    assert mask.tolist() == [[False, True, True], [True, False, False], [False, False, True]]
    assert nll[0].tolist() == pytest.approx([0, a, b]) and nll[1].tolist() == pytest.approx([b, 0, 0])


@pytest.mark.parametrize("mode, want", [
    ("token", lambda a, b: (a + b + b + b) / 4),
    ("sample", lambda a, b: ((a + b) / 2 + b + b) / 3),
    ("task", lambda a, b: ((a + b + b) / 3 + b) / 2),
    ("task_sample", lambda a, b: (((a + b) / 2 + b) / 2 + b) / 2),
])
def test_each_mode_against_its_formula(mode, want):
    logits, labels, tasks, a, b = batch()
    assert float(MultiTaskLoss(mode)(logits, labels, tasks)) == pytest.approx(want(a, b), rel=1e-6)


def test_task_weights_and_focal():
    logits, labels, tasks, a, b = batch()
    weighted = MultiTaskLoss("task", task_weights={1: 3.0})(logits, labels, tasks)
    assert float(weighted) == pytest.approx(((a + b + b) / 3 + 3 * b) / 4, rel=1e-6)
    p = [(1 / (1 + math.e) + 0.5) / 2, 0.5, 0.5]  # mean token probability per sample
    focal = sum(-(1 - q) ** 2 * math.log(q) for q in p) / 3
    assert float(MultiTaskLoss("focal")(logits, labels, tasks)) == pytest.approx(focal, rel=1e-6)


def test_bad_input():
    logits, labels, tasks, _, _ = batch()
    with pytest.raises(ValueError, match="no loss tokens"):
        MultiTaskLoss()(logits, torch.full_like(labels, NO), tasks)
    with pytest.raises(ValueError, match="valid"):
        MultiTaskLoss("nope")  # type: ignore[arg-type]
    # gradients flow to the logits
    lg = logits.clone().requires_grad_(True)
    MultiTaskLoss("task")(lg, labels, tasks).backward()
    assert lg.grad is not None and lg.grad.abs().sum() > 0


# --- task ids through batching; packed batches ------------------------------------------------------

def _items(seed: int = 0, n: int = 7):
    """Random tokenised examples of three tasks; one fully labelled (its first token is a target
    only across a packing boundary), one without loss tokens."""
    from fedft.data.sft import TokenizedExample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(1, 11, (length,), generator=g).tolist()
        cut = 0 if i == 1 else length if i == 2 else int(torch.randint(1, length, (1,), generator=g))
        out.append(TokenizedExample(ids, [NO] * cut + ids[cut:], task=("a", "b", "c")[i % 3]))
    return out


INDEX = {"a": 0, "b": 1, "c": 2}


def test_pad_batch_and_pack_give_task_ids_only_when_asked():
    from fedft.data.sft import pack, pad_batch

    items = _items()
    plain, with_ids = pad_batch(items, 0), pad_batch(items, 0, INDEX)
    assert "task_ids" not in plain and with_ids["task_ids"].tolist() == [INDEX[it.task] for it in items]
    assert all(torch.equal(plain[k], with_ids[k]) for k in plain)
    p_plain, p = pack(items, 16, 0), pack(items, 16, 0, INDEX)
    assert "task_ids" not in p_plain and all(torch.equal(p_plain[k], p[k]) for k in p_plain)
    assert p["task_ids"].shape == p["input_ids"].shape and (p["task_ids"][p["segment_ids"] == 0] == 0).all()
    for row in range(p["input_ids"].shape[0]):
        for s in p["segment_ids"][row].unique().tolist():
            if s:
                assert len(set(p["task_ids"][row, p["segment_ids"][row] == s].tolist())) == 1
    with pytest.raises(ValueError, match="task index"):
        pad_batch(items, 0, {"a": 0})


def _logits_for(items, vocab: int = 12, seed: int = 0):
    """Per-example logits, laid out padded (B, T, V) and packed (rows, T', V) like the batches."""
    from fedft.data.sft import pack, pad_batch

    g = torch.Generator().manual_seed(seed)
    own = [torch.randn(len(it), vocab, generator=g) for it in items]
    padded, packed = pad_batch(items, 0, INDEX), pack(items, 16, 0, INDEX)
    lp = torch.zeros(*padded["input_ids"].shape, vocab)
    for i, x in enumerate(own):
        lp[i, : len(x)] = x
    lq = torch.randn(*packed["input_ids"].shape, vocab, generator=g)  # padding: anything
    for row in range(lq.shape[0]):
        for s in packed["segment_ids"][row].unique().tolist():
            if s:
                at = packed["segment_ids"][row] == s
                k = next(i for i, it in enumerate(items) if packed["input_ids"][row, at].tolist() == it.input_ids)
                lq[row, at] = own[k]
    return padded, lp, packed, lq


@pytest.mark.parametrize("mode", ["token", "sample", "task", "task_sample", "focal"])
def test_a_packed_batch_has_the_loss_of_the_same_examples_padded(mode):
    for seed in range(3):
        padded, lp, packed, lq = _logits_for(_items(seed), seed=seed)
        assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # something was packed
        loss = MultiTaskLoss(mode, task_weights={2: 3.0})
        want = loss(lp, padded["labels"], padded["task_ids"])
        got = loss(lq, packed["labels"], packed["task_ids"], packed["segment_ids"])
        assert float(got) == pytest.approx(float(want), rel=1e-5)
        # the token mode is the task model's plain token mean
        if mode == "token":
            flat = F.cross_entropy(lp[:, :-1].flatten(0, 1), padded["labels"][:, 1:].flatten(), ignore_index=NO)
            assert float(want) == pytest.approx(float(flat), rel=1e-5)


def test_packed_logits_of_a_task_model_match_its_padded_logits():
    from fedft.data.sft import pack, pad_batch
    from fedft.losses.wiring import packed_logits
    from fedft.model.tiny import tiny_task_model

    model = tiny_task_model("llama")
    items = _items(1)
    padded, packed = pad_batch(items, 0, INDEX), pack(items, 16, 0, INDEX)
    with torch.no_grad():
        lp, lq = model(padded), packed_logits(model, packed)
    for mode in ("token", "task", "focal"):
        want = MultiTaskLoss(mode)(lp, padded["labels"], padded["task_ids"])
        got = MultiTaskLoss(mode)(lq, packed["labels"], packed["task_ids"], packed["segment_ids"])
        assert float(got) == pytest.approx(float(want), rel=1e-4)


def test_the_plugin_reads_the_batch_and_names_tasks():
    from fedft.losses.mftcoder import MFTCoderLoss, MFTCoderOptions

    logits, labels, tasks, a, b = batch()
    plugin = MFTCoderLoss(MFTCoderOptions(mode="task", task_weights="second:3"))
    plugin.bind_tasks(["first", "second"])
    value = plugin(logits, {"labels": labels, "task_ids": tasks})
    assert float(value) == pytest.approx(((a + b + b) / 3 + 3 * b) / 4, rel=1e-6)
    assert not plugin.adaptive and plugin.report()["weights"] == {1: 3.0}
    plugin.bind_tasks(["x", "y"])
    with pytest.raises(ValueError, match="unknown task 'second'"):
        plugin(logits, {"labels": labels, "task_ids": tasks})


def test_coba_mode_is_the_task_loss_with_cobas_weights():
    from fedft.losses.mftcoder import MFTCoderLoss, MFTCoderOptions

    logits, labels, tasks, a, b = batch()
    plugin = MFTCoderLoss(MFTCoderOptions(mode="coba", coba_warmup=2, coba_history=10))
    data = {"labels": labels, "task_ids": tasks}
    assert plugin.adaptive and float(plugin(logits, data)) == pytest.approx(((a + b + b) / 3 + b) / 2, rel=1e-6)
    plugin.observe(0, {0: 2.0, 1: 2.0})
    plugin.observe(2, {0: 1.0, 1: 1.9})  # task 0 converges fast, task 1 slowly
    w = plugin.weights()
    assert w[1] > w[0] and sum(w.values()) == pytest.approx(1.0)
    want = (w[0] * (a + b + b) / 3 + w[1] * b) / (w[0] + w[1])
    assert float(plugin(logits, data)) == pytest.approx(want, rel=1e-6)
    assert {"rcs", "acs", "df", "weights"} <= set(plugin.report())


# --- configuration and the central run ------------------------------------------------------------

def test_config_selects_the_loss_and_its_table():
    from fedft.config import ExperimentConfig, validate_names
    from fedft.errors import ConfigError
    from fedft.losses.mftcoder import MFTCoderOptions
    from fedft.losses.wiring import LossRun

    default = ExperimentConfig()
    assert default.train.loss == "token_mean" and default.loss.options == ()
    assert LossRun.for_run(default, None, None, None, None) is None  # the run trains on model.loss as before
    cfg = ExperimentConfig.from_overrides(["federation.strategy=central", "train.loss=mftcoder",
                                           "loss.mftcoder.mode=coba", "loss.mftcoder.coba_warmup=5"])
    validate_names(cfg)
    o = cfg.loss.options_for("mftcoder")
    assert isinstance(o, MFTCoderOptions) and (o.mode, o.coba_warmup, o.coba_history) == ("coba", 5, 200)
    assert ExperimentConfig.from_toml_text(__import__("fedft.config").config.to_toml(cfg)) == cfg
    # the selected loss's table is present with its defaults when not given
    assert ExperimentConfig.from_overrides(["train.loss=mftcoder"]).loss.options_for("mftcoder") == MFTCoderOptions()
    bad = ExperimentConfig.from_overrides(["federation.strategy=central", "train.loss=nope"])
    with pytest.raises(ConfigError, match=r"bad value 'nope' for train.loss; allowed: token_mean, .*mftcoder"):
        validate_names(bad)
    with pytest.raises(ConfigError, match="loss.mftcoder.mode"):
        ExperimentConfig.from_overrides(["loss.mftcoder.mode=case9"])
    with pytest.raises(ConfigError, match="task_weights"):
        ExperimentConfig.from_overrides(["loss.mftcoder.task_weights=a=1"])
    with pytest.raises(ConfigError, match="central runs only"):
        validate_names(ExperimentConfig.from_overrides(["federation.strategy=fedavg", "train.loss=mftcoder"]))
    dpo = ExperimentConfig.from_overrides(["federation.strategy=central", "train.loss=dpo"])
    with pytest.raises(ConfigError, match="bad value 'dpo' for train.loss"):  # preference pairs, not SFT batches
        validate_names(dpo)


ARITH = ["model.name=tiny-llama", "model.task=causal_lm", "data.name=arith", "data.max_length=48",
         "data.train_size=40", "data.val_size=12", "data.test_size=8", "federation.strategy=central",
         "method.name=lora", "train.optimizer=adamw", "train.lr=0.01", "train.epochs=2", "train.batch_size=8",
         "train.precision=fp32", "output.plots=false", "seed=0"]


def test_a_central_run_trains_with_the_plugin_and_coba_observes(tmp_path):
    from fedft.config import ExperimentConfig
    from fedft.runner import run

    base = run(ExperimentConfig.from_overrides(ARITH), tmp_path / "base", show=False)
    assert "loss_report" not in base
    token = run(ExperimentConfig.from_overrides([*ARITH, "train.loss=mftcoder", "loss.mftcoder.mode=token"]),
                tmp_path / "token", show=False)
    # the token mode is the default token mean: the same training up to float summation order
    assert token["val_loss"] == pytest.approx(base["val_loss"], abs=1e-4)
    coba = run(ExperimentConfig.from_overrides([*ARITH, "train.loss=mftcoder", "loss.mftcoder.mode=coba",
                                                "loss.mftcoder.coba_warmup=0"]), tmp_path / "coba", show=False)
    report = coba["loss_report"]
    assert report["tasks"] == ["add", "divide", "multiply", "subtract"]
    assert [o["step"] for o in report["observed"]] == [0, 5, 10]
    last = report["observed"][-1]
    assert sum(last["weights"].values()) == pytest.approx(1.0) and min(last["weights"].values()) >= 1 / 40
    assert last["weights"] != report["observed"][0]["weights"]  # they moved after two observations
    assert coba["val_loss"] != pytest.approx(base["val_loss"], abs=1e-6)


def test_the_plugin_needs_sft_data_and_coba_a_validation_split(tmp_path):
    from fedft.config import ExperimentConfig
    from fedft.errors import ConfigError
    from fedft.runner import run

    with pytest.raises(ConfigError, match="data.val_size"):
        run(ExperimentConfig.from_overrides([*ARITH, "data.val_size=0", "train.loss=mftcoder",
                                             "loss.mftcoder.mode=coba"]), tmp_path / "a", show=False)
    with pytest.raises(ConfigError, match="SFT data"):
        run(ExperimentConfig.from_overrides(["model.name=tiny-bert", "data.name=synthetic-text", "data.max_length=16",
                                             "federation.strategy=central", "method.name=full_ft",
                                             "train.loss=mftcoder"]), tmp_path / "b", show=False)
