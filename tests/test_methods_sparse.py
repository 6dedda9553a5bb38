"""HFT halves, LT-SFT diffs, GreenTrainer's FLOPs budget, WiSE-FT endpoints, Antidote, Light-PEFT."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fedft.body.codec import decode, encode
from fedft.config import MethodConfig
from fedft.errors import ConfigError
from fedft.methods import METHODS
from fedft.methods.antidote import AntidoteOptions
from fedft.methods.greentrainer import GreenTrainerOptions, backward_flops, knapsack_select
from fedft.methods.light_peft import LightPEFTOptions, compact
from fedft.methods.lt_sft import LTSFTOptions, apply_diff
from fedft.methods.wise_ft import WiseFTOptions
from fedft.model.tiny import tiny_batch, tiny_task_model

pytestmark = pytest.mark.usefixtures("_one_thread")


def _cfg(name: str, options) -> MethodConfig:
    """The method config of ``name`` with its ``[method.<name>]`` table set to ``options``."""
    return MethodConfig(name=name, options=((name, options),))


def _train(model, batch, steps: int = 2, lr: float = 1e-2) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model.loss(model(batch), batch).backward()
        opt.step()


def _block_matrices(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters()
            if p.dim() == 2 and n.endswith("weight") and (".layers." in n or ".layer." in n)}


@pytest.mark.parametrize("arch", ["vit", "bert", "llama"])
def test_hft_freezes_exactly_half_of_the_matrices_per_stage(arch: str) -> None:
    # Prepare
    model = tiny_task_model(arch)
    method = METHODS.get("hft")(MethodConfig(name="hft"))
    method.apply(model)
    first = {n for n, p in _block_matrices(model).items() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    # Execute
    _train(model, tiny_batch(arch))
    method.new_stage(model)
    second = {n for n, p in _block_matrices(model).items() if p.requires_grad}
    # Assert
    total = len(_block_matrices(model))
    assert len(first) == len(second) == total // 2
    assert first != second
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_lt_sft_diff_has_k_entries_and_diffs_compose() -> None:
    # Prepare
    k = 300
    cfg = _cfg("lt_sft", LTSFTOptions(k=k))
    model = tiny_task_model("bert", num_hidden_layers=2)
    method = METHODS.get("lt_sft")(cfg)
    method.apply(model)
    batch = tiny_batch("bert")
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Execute: phase 1, selection + rewind, phase 2
    _train(model, batch, steps=3)
    method.on_round_start(model, 2)
    _train(model, batch, steps=3)
    method.finalize(model)
    phi = method.diff(model)
    # Assert: exactly K entries, all non-zero, nothing off the mask moved
    idx_count = sum(len(i) for i, _ in phi.values())
    assert idx_count == k and sum(int((v != 0).sum()) for _, v in phi.values()) == k
    for n in method.params:
        moved = (model.get_parameter(n) != theta0[n]).view(-1).nonzero().view(-1).numpy()
        assert set(moved) <= set(phi[n][0]), n
    # composition: theta0 + phi_a + phi_b, in either order, equals theta0 + (phi_a + phi_b)
    state = dict(model.named_parameters())
    with torch.no_grad():
        for n in method.params:
            state[n].copy_(theta0[n])
    half = {n: (i, v * 0.5) for n, (i, v) in phi.items()}
    apply_diff(model, half)
    apply_diff(model, half)
    for n, (i, v) in phi.items():
        expect = theta0[n].view(-1).clone()
        expect[torch.from_numpy(i)] += torch.from_numpy(v)
        torch.testing.assert_close(state[n].view(-1), expect, rtol=0, atol=1e-7)
    apply_diff(model, phi, scale=-1.0)
    for n in method.params:
        torch.testing.assert_close(state[n], theta0[n], rtol=0, atol=1e-6)


def test_lt_sft_sparse_update_survives_the_wire() -> None:
    # Prepare
    cfg = _cfg("lt_sft", LTSFTOptions(k=200))
    model, fresh = tiny_task_model("vit", num_hidden_layers=2), tiny_task_model("vit", num_hidden_layers=2)
    method, other = METHODS.get("lt_sft")(cfg), METHODS.get("lt_sft")(cfg)
    method.apply(model)
    other.apply(fresh)
    batch = tiny_batch("vit")
    _train(model, batch)
    method.start_phase2(model)
    _train(model, batch)
    method.project()
    # Execute
    update = method.encode_update(model)
    received = {k: decode(encode(torch.from_numpy(v))).numpy() for k, v in update.items()}
    other.decode_update(fresh, received)
    # Assert: only indices + values travel for the body; the fresh model equals the sender
    assert sum(v.size for k, v in update.items() if k.endswith("::idx")) == 200
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(fresh.get_parameter(n), p, rtol=0, atol=1e-6)  # theta0 + phi rounding


def test_greentrainer_backward_flops_within_rho() -> None:
    # Prepare
    rho = 0.5
    cfg = _cfg("greentrainer", GreenTrainerOptions(rho=rho))
    model = tiny_task_model("vit", num_hidden_layers=2)  # eval: the first-batch probe stays off
    method = METHODS.get("greentrainer")(cfg)
    method.apply(model)
    batch = tiny_batch("vit")
    full = backward_flops(model, batch)  # every candidate trainable
    # Execute
    selected = method.select(model, batch)
    got = backward_flops(model, batch)
    # Assert (measured with FlopCounterMode)
    assert "classifier" in selected and len(selected) > 1
    assert got <= rho * full
    assert {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad} == set(selected)


def test_greentrainer_knapsack_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 7
        imp = rng.random(n)
        a = np.sort(rng.integers(0, 50, n))[::-1].astype(float)
        dw = rng.integers(1, 30, n).astype(float)
        budget = float(a[n - 1] + dw[n - 1] + rng.integers(0, 80))  # the forced unit alone fits
        got = knapsack_select(imp, a, dw, budget, quant=int(budget), forced=n - 1)
        best = -1.0
        for r in range(1, n + 1):
            for sub in itertools.combinations(range(n), r):
                if n - 1 in sub and a[min(sub)] + dw[list(sub)].sum() <= budget:
                    best = max(best, imp[list(sub)].sum())
        assert best >= 0  # a feasible case, always checked
        assert n - 1 in got and a[min(got)] + dw[list(got)].sum() <= budget
        assert imp[got].sum() == pytest.approx(best)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wise_ft_endpoints(alpha: float) -> None:
    # Prepare
    opts = WiseFTOptions(alpha=alpha, interpolate_head=True, report=False)
    model = tiny_task_model("vit", num_hidden_layers=2)
    zero_shot = tiny_task_model("vit", num_hidden_layers=2)
    method = METHODS.get("wise_ft")(_cfg("wise_ft", opts))
    method.apply(model)
    batch = tiny_batch("vit")
    _train(model, batch)
    model.eval()
    with torch.no_grad():
        fine_tuned, pre_trained = model(batch), zero_shot(batch)
    # Execute
    method.finalize(model)
    # Assert
    with torch.no_grad():
        torch.testing.assert_close(model(batch), pre_trained if alpha == 0 else fine_tuned, rtol=0, atol=1e-6)


def test_wise_ft_report_and_straggler_sparsity() -> None:
    opts = WiseFTOptions(alpha=1.0, sparsity=0.5, stragglers=1, sharpness_rho=1e-3)
    model = tiny_task_model("vit", num_hidden_layers=2)
    method = METHODS.get("wise_ft")(_cfg("wise_ft", opts))
    method.apply(model)
    _train(model, tiny_batch("vit"), steps=3)
    moved = {n: (p != method.zs[n]).sum().item() for n, p in model.named_parameters() if n in method.zs}
    method.finalize(model)
    rep = method.report
    assert set(rep["layers"]) == {"embeddings", "block.0", "block.1", "final"}
    assert len(rep["stragglers"]) == 1 and all("sharpness" in v for v in rep["layers"].values())
    from fedft.methods.wise_ft import layer_groups
    for n in layer_groups(model)[rep["stragglers"][0]]:
        now = (model.get_parameter(n) != method.zs[n]).sum().item()
        assert now <= moved[n] - int(0.5 * model.get_parameter(n).numel()) or moved[n] == 0


def test_antidote_removes_exactly_the_top_scored_weights() -> None:
    # Prepare
    ratio = 0.25
    cfg = _cfg("antidote", AntidoteOptions(dense_ratio=ratio))
    model = tiny_task_model("bert", num_hidden_layers=2)
    method = METHODS.get("antidote")(cfg)
    method.apply(model)
    batch = tiny_batch("bert")
    _train(model, batch, steps=3)
    layers = method.targets(model)
    before = {n: m.weight.detach().clone() for layer in layers for n, m in layer}
    norms0 = method.input_norms(model.eval(), layers[0], [batch])  # first block: not affected by pruning
    # Execute
    masks = method.realign(model, [batch])
    # Assert
    for n, _m in layers[0]:
        score = before[n].abs() * norms0[n][None, :]
        k = int(ratio * score.shape[1])
        top = torch.zeros_like(score, dtype=torch.bool).scatter_(1, torch.topk(score, k, dim=1).indices, True)
        assert torch.equal(masks[n], top), n
    for layer in layers:
        for n, m in layer:
            assert torch.equal(m.weight, before[n].masked_fill(masks[n], 0.0)), n
            assert (masks[n].sum(1) == int(ratio * masks[n].shape[1])).all()


def test_light_peft_prunes_then_compacts_without_changing_outputs() -> None:
    # Prepare
    opts = LightPEFTOptions(l1=1e-2, rho_attn=0.5, rho_ffn=0.25, rho_module=0.5, rho_rank=0.5)
    model = tiny_task_model("bert", num_hidden_layers=2)
    method = METHODS.get("light_peft")(_cfg("light_peft", opts))
    method.apply(model)
    batch = tiny_batch("bert")
    _train(model, batch, steps=4)
    masks = torch.cat([p.detach() for n, p in model.named_parameters() if "lpeft_ffn_mask" in n])
    # Execute
    summary = method.prune(model)
    _train(model, batch, steps=2)
    model.eval()
    with torch.no_grad():
        before = model(batch)
    n_before = sum(p.numel() for p in model.parameters())
    compact(model)
    # Assert
    assert masks.std() > 0  # the L1 term spreads the mask values
    assert summary["heads"] == 2 and summary["ffn_channels"] == 32 and summary["lora_modules"] == 4
    assert summary["lora_ranks"] > 0
    with torch.no_grad():
        torch.testing.assert_close(model(batch), before, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < n_before


def _pruned_sets(selection: str, seed: int = 0) -> tuple[dict, list[torch.Tensor]]:
    opts = LightPEFTOptions(l1=1e-2, rho_attn=0.5, rho_ffn=0.25, rho_module=0.5, rho_rank=0.5,
                            selection=selection, seed=seed)
    torch.manual_seed(0)
    model = tiny_task_model("bert", num_hidden_layers=2)
    method = METHODS.get("light_peft")(_cfg("light_peft", opts))
    method.apply(model)
    _train(model, tiny_batch("bert"), steps=4)
    summary = method.prune(model)
    masks = [p.detach().clone() for n, p in model.named_parameters() if "lpeft_" in n and "mask" in n]
    return summary, masks


def test_light_peft_random_selection_prunes_the_same_counts_elsewhere() -> None:
    # Execute
    by_mask, masks = _pruned_sets("mask")
    by_random, rmasks = _pruned_sets("random")
    again, rmasks2 = _pruned_sets("random")
    # Assert
    assert by_random == by_mask  # the same numbers of heads, channels, modules and ranks
    assert any(not torch.equal(a, b) for a, b in zip(masks, rmasks, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(rmasks, rmasks2, strict=True))  # seeded
    with pytest.raises(ConfigError, match="method.light_peft.selection"):
        LightPEFTOptions(selection="magnitude")
