"""Compute precision (``train.precision``): resolution, where bf16 applies, split == unsplit in bf16,
and that the wire and the ledger do not depend on it.

bf16 tolerances stated here: a split and an unsplit model in bf16 run the same ops in the same
dtypes, so logits and gradients agree to ``BF16_TOL`` (a few bf16 roundings, 2^-8 each); bf16
and fp32 agree in direction (cosine > 0.99) on the tiny random models.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from test_split import ARCH_NAMES

from fedft import precision
from fedft.accounting import CommLedger
from fedft.body.transport import BodySession, LoopbackTransport
from fedft.config import ExperimentConfig
from fedft.errors import ConfigError
from fedft.methods import METHODS
from fedft.model import build_model, set_precision
from fedft.model.tiny import tiny_batch, tiny_task_model
from fedft.runner import run
from fedft.split import SplitSpec, el2n_scores, split_model, split_step

pytestmark = pytest.mark.usefixtures("_one_thread")

BF16_TOL = {"atol": 2e-2, "rtol": 2e-2}


@pytest.mark.parametrize("flags,expected", [((), "fp32"), (("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16")])
def test_auto_follows_the_cpu_flags(monkeypatch, flags, expected) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    assert precision.resolve("auto", "cpu") == expected
    assert precision.resolve("fp32", "cpu") == "fp32" and precision.resolve("bf16", "cpu") == "bf16"
    assert precision.describe("auto")["used"] == expected


def test_attention_kernel_follows_the_precision() -> None:
    assert precision.attention("auto", "bf16", "cpu") == "eager"
    assert precision.attention("auto", "fp32", "cpu") == "sdpa"
    assert precision.attention("auto", "bf16", "cuda") == "sdpa"
    assert precision.attention("sdpa", "bf16", "cpu") == "sdpa"


@pytest.mark.parametrize("key,value", [("train.precision", "fp16"), ("model.attention", "flash")])
def test_bad_setting_is_named(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        ExperimentConfig.from_overrides([f"{key}={value}"])


def test_build_model_sets_dtype_and_attention() -> None:
    cfg = ExperimentConfig.from_overrides(["model.name=tiny-vit", "data.image_size=16", "train.precision=bf16"])
    model, _, _ = build_model(cfg, 3)
    assert model.compute_dtype == torch.bfloat16
    assert model.backbone.config._attn_implementation == "eager"
    set_precision(model, "fp32")
    assert model.compute_dtype == torch.float32 and model.backbone.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", ARCH_NAMES)
def test_blocks_compute_in_bf16_and_parts_return_float32(kind: str) -> None:
    model = tiny_task_model(kind, prompt_len=2)
    set_precision(model, "bf16")
    seen: list[torch.dtype] = []
    for block in model.blocks:  # head, body and tail blocks
        linear = next(m for m in block.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    parts = split_model(model, SplitSpec(1, 1))
    batch = tiny_batch(kind)
    with torch.no_grad():
        h, mask = parts.head(batch)
        z = parts.body(h, mask)
        logits = parts.tail(z, mask)
    assert len(seen) == model.n_layers >= 3 and set(seen) == {torch.bfloat16}
    assert h.dtype == z.dtype == logits.dtype == torch.float32


@pytest.mark.parametrize("kind", ARCH_NAMES)
def test_bf16_split_equals_unsplit(kind: str) -> None:
    model = tiny_task_model(kind, prompt_len=2)
    model.freeze_backbone()
    set_precision(model, "bf16")
    parts = split_model(model, SplitSpec(1, 1))
    parts.tail.requires_grad_(True)
    batch = tiny_batch(kind, padding="right" if kind in ("bert", "llama") else "none")
    model.zero_grad(set_to_none=True)
    res = split_step(parts, batch, LoopbackTransport(BodySession(parts.body), CommLedger()), model.loss)
    split = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    logits = model(batch)
    model.loss(logits, batch).backward()
    full = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(res.logits, logits.detach(), **BF16_TOL)
    assert split.keys() == full.keys() and "prompt.prompt_embeddings" in full
    for name in full:
        torch.testing.assert_close(split[name], full[name], **BF16_TOL, msg=name)


@pytest.mark.parametrize("kind", ARCH_NAMES)
def test_bf16_agrees_with_fp32_in_direction(kind: str) -> None:
    model = tiny_task_model(kind, prompt_len=2)
    batch = tiny_batch(kind)
    out = {}
    for p in ("fp32", "bf16"):
        set_precision(model, p)
        with torch.no_grad():
            out[p] = model(batch).flatten()
    assert out["bf16"].dtype == torch.float32
    assert not torch.equal(out["bf16"], out["fp32"])  # bf16 really ran
    assert F.cosine_similarity(out["bf16"], out["fp32"], dim=0) > 0.99


def test_el2n_scores_in_bf16_stay_in_range() -> None:
    model = tiny_task_model("vit", prompt_len=2)
    set_precision(model, "bf16")
    parts = split_model(model, SplitSpec(1, 1))
    scores = el2n_scores(parts, tiny_batch("vit"))
    assert scores.dtype == torch.float32 and ((scores >= 0) & (scores <= 2**0.5 + 1e-6)).all()


TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
        "data.test_size=16", "partition.scheme=iid", "partition.num_clients=2", "partition.min_size=4",
        "federation.rounds=1", "federation.engine=inprocess", "train.batch_size=8", "method.prompt_len=2",
        "output.plots=false"]


def test_ledger_does_not_depend_on_compute_precision(tmp_path) -> None:
    ledgers, summaries = {}, {}
    for p in ("fp32", "bf16"):
        cfg = ExperimentConfig.from_overrides([*TINY, f"train.precision={p}"])
        run(cfg, tmp_path / p, show=False)
        ledgers[p] = CommLedger.from_csv(tmp_path / p / "ledger.csv")
        summaries[p] = json.loads((tmp_path / p / "summary.json").read_text())
    assert ledgers["bf16"].by_kind() == ledgers["fp32"].by_kind()
    assert ledgers["bf16"].total() == ledgers["fp32"].total() > 0
    assert summaries["bf16"]["precision"]["used"] == "bf16"
    assert summaries["fp32"]["precision"] == {**summaries["bf16"]["precision"], "setting": "fp32",
                                              "used": "fp32", "attention": "sdpa"}


METHOD_TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
               "data.test_size=16", "train.batch_size=16", "method.prompt_len=2", "output.plots=false",
               "train.precision=bf16", "method.hft.reselect_every_epochs=1", "method.lt_sft.phase1_epochs=1",
               "method.light_peft.estimation_epochs=1"]


@pytest.mark.parametrize("strategy", ["central", "fedavg"])
@pytest.mark.parametrize("method", [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("fedft.")])
def test_every_method_runs_in_bf16(tmp_path, method: str, strategy: str) -> None:
    fed = ["federation.engine=inprocess", "federation.rounds=2", "partition.scheme=iid",
           "partition.num_clients=2", "partition.min_size=4"] if strategy == "fedavg" else ["train.epochs=2"]
    cfg = ExperimentConfig.from_overrides([*METHOD_TINY, *fed, f"method.name={method}",
                                           f"federation.strategy={strategy}"])
    summary = run(cfg, tmp_path, show=False)
    assert summary["precision"]["used"] == "bf16"
    assert math.isfinite(summary["final_loss"]) and summary["test_samples"] == 16


def test_evaluation_casts_each_weight_once_and_gives_the_same_numbers() -> None:
    from torch.profiler import ProfilerActivity, profile

    from fedft.model.tiny import tiny_batch, tiny_task_model
    from fedft.precision import weight_cast_cache

    model = tiny_task_model("vit", num_hidden_layers=2)
    model.compute_dtype = torch.bfloat16
    for p in model.backbone.parameters():
        p.requires_grad_(False)  # a frozen body, as the server evaluates it
    batch = tiny_batch("vit")

    def casts(cached: bool) -> tuple[list[torch.Tensor], int]:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            with weight_cast_cache(model) if cached else nullcontext():
                out = [model(batch) for _ in range(3)]
        return out, sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")

    plain, n_plain = casts(False)
    cached, n_cached = casts(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, cached, strict=True))
    assert n_cached < n_plain  # the weights were cast once, not once per forward
    assert not any(p.requires_grad for p in model.backbone.parameters())  # flags restored
