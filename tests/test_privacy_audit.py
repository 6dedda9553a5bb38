"""``fedft privacy RUN_DIR`` on tiny split runs, and the defences (activation noise, NoPeek)."""

from __future__ import annotations

import json

import pytest
import torch
from test_evaluation import TINY

from fedft.cli import main
from fedft.config import ExperimentConfig, validate_names
from fedft.errors import ConfigError
from fedft.model.tiny import tiny_task_model
from fedft.privacy.audit import AuditOptions, audit
from fedft.privacy.decoders import nearest_tokens
from fedft.privacy.labels import norm_auc
from fedft.runner import run
from fedft.split import SplitSpec, split_model
from fedft.split.defence import add_activation_noise, distance_correlation, noise_off
from fedft.split.step import split_step

pytestmark = pytest.mark.usefixtures("_one_thread")
FAST = AuditOptions(samples=16, aux_size=64, inversion_steps=30, decoder_epochs=2, probe_epochs=2)
ARGS = ["--samples", "16", "--aux-size", "64", "--steps", "30", "--decoder-epochs", "2"]


def _run(tmp_path, name: str, *extra: str):
    d = tmp_path / name
    run(ExperimentConfig.from_overrides([*TINY, "federation.rounds=1", *extra]), d, show=False)
    return d


def _score(result: dict, prefix: str, codec: str, key: str) -> float:
    return next(a[key] for a in result["attacks"] if a["attack"].startswith(prefix) and a["codec"] == codec)


def test_privacy_cli_inverts_an_embedding_only_head_and_writes_its_artifacts(tmp_path, capsys):
    d = _run(tmp_path, "h0")
    assert main(["privacy", str(d), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "white-box least squares" in out and "known tail" in out
    result = json.loads((d / "privacy.json").read_text())
    assert (d / "privacy.png").stat().st_size > 1000
    chance = _score(result, "chance", "-", "psnr_db")
    exact = _score(result, "white-box least squares", "fp32", "psnr_db")
    assert exact > 60  # near-exact
    assert chance + 20 < _score(result, "white-box least squares", "fp16", "psnr_db") < exact  # rounded, still close
    assert _score(result, "white-box least squares", "fp32", "max_abs_error") < 1e-3
    for codec in ("fp32", "fp16"):
        known = next(a for a in result["attacks"] if a["attack"].startswith("known tail") and a["codec"] == codec)
        assert 0 <= known["chance"] < 1 and known["accuracy"] > known["chance"]


def test_the_privacy_section_attacks_the_run_after_its_last_round(tmp_path):
    d = _run(tmp_path, "inside", "privacy.enabled=true", "privacy.samples=8", "privacy.aux_size=32",
             "privacy.codecs=fp16", "privacy.decoder_epochs=1")
    result = json.loads((d / "privacy.json").read_text())
    assert result["options"]["codecs"] == ["fp16"] and result["options"]["samples"] == 8
    with pytest.raises(ConfigError, match="privacy.enabled"):
        validate_names(ExperimentConfig.from_overrides(["privacy.enabled=true", "federation.strategy=fl_full"]))


def test_noise_defence_degrades_the_white_box_reconstruction(tmp_path):
    clean = audit(_run(tmp_path, "clean"), FAST)
    noisy = audit(_run(tmp_path, "noisy", "split.noise=1.0"), FAST)
    assert noisy["split"]["noise"] == 1.0
    wb = "white-box least squares"
    assert _score(noisy, wb, "fp32", "psnr_db") < _score(clean, wb, "fp32", "psnr_db") - 30
    dc = "distance correlation"
    assert 0 < _score(noisy, dc, "fp32", "dcor") < _score(clean, dc, "fp32", "dcor") <= 1


def test_a_head_with_blocks_is_attacked_by_optimisation(tmp_path):
    result = audit(_run(tmp_path, "h1", "split.head_blocks=1", "split.nopeek=0.5"), FAST)
    assert result["split"]["nopeek"] == 0.5
    chance = _score(result, "chance", "-", "psnr_db")
    assert _score(result, "white-box optimisation", "fp32", "psnr_db") > chance


def test_train_head_fine_tunes_and_sends_the_head_blocks(tmp_path):
    from fedft.evaluation import load_run
    from fedft.model.build import build_model

    frozen = _run(tmp_path, "frozen", "split.head_blocks=1")
    trained = _run(tmp_path, "trained", "split.head_blocks=1", "split.train_head=true", "split.nopeek=0.5")
    sent = [json.loads((d / "summary.json").read_text())["bytes_by_kind"]["params_up"] for d in (frozen, trained)]
    assert sent[1] > sent[0]
    run_ = load_run(trained)
    fresh, _, _ = build_model(run_.cfg, run_.raw.num_labels)
    name = next(n for n, _ in run_.model.blocks[0].named_parameters())
    assert not torch.equal(dict(run_.model.blocks[0].named_parameters())[name],
                           dict(fresh.blocks[0].named_parameters())[name])
    assert torch.equal(dict(run_.model.blocks[1].named_parameters())[name],  # the body stays frozen
                       dict(fresh.blocks[1].named_parameters())[name])


def test_text_tokens_are_recovered_exactly_by_nearest_embedding_at_the_embedding_cut(tmp_path):
    d = _run(tmp_path, "text", "model.name=tiny-bert", "data.name=synthetic-text", "data.max_length=16",
             "model.readout=mean")
    result = audit(d, FAST)
    chance = _score(result, "chance", "-", "token_accuracy")
    assert _score(result, "nearest embedding", "fp32", "token_accuracy") == 1.0 > chance
    assert not (d / "privacy.png").exists()  # no images to show


def test_privacy_refuses_what_it_cannot_attack(tmp_path, capsys):
    d = _run(tmp_path, "fl", "federation.strategy=fl_prompt")
    assert main(["privacy", str(d), *ARGS]) == 1
    assert "sends no activations" in capsys.readouterr().err
    d = _run(tmp_path, "ok")
    assert main(["privacy", str(d), "--codecs", "int3"]) == 1
    assert "unknown wire dtype" in capsys.readouterr().err
    assert main(["privacy", str(tmp_path / "missing")]) == 1


def test_defence_settings_are_checked():
    with pytest.raises(ConfigError, match="split.nopeek"):
        ExperimentConfig.from_overrides(["split.nopeek=1.0"])  # head_blocks = 0
    with pytest.raises(ConfigError, match="split.noise"):
        ExperimentConfig.from_overrides(["split.noise=-1"])
    with pytest.raises(ConfigError, match="sends none"):
        validate_names(ExperimentConfig.from_overrides(["split.noise=0.5", "federation.strategy=fl_full"]))


def test_activation_noise_has_the_requested_scale_and_can_be_switched_off():
    model = tiny_task_model("vit", prompt_len=2, image_size=16)
    parts = split_model(model, SplitSpec(1, 0))
    batch = {"pixel_values": torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        clean = parts.head(batch)[0]
        add_activation_noise(model, 1, 0.5)
        noisy = parts.head(batch)[0]
        with noise_off(model):
            again = parts.head(batch)[0]
    rms = clean.pow(2).flatten(1).mean(dim=1).sqrt()
    ratio = ((noisy - clean).pow(2).flatten(1).mean(dim=1).sqrt() / rms).mean()
    assert abs(float(ratio) - 0.5) < 0.05
    torch.testing.assert_close(again, clean)


def test_distance_correlation_is_one_for_affine_copies_and_small_for_independent_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    assert abs(float(distance_correlation(x, 3 * x + 1)) - 1) < 1e-5
    independent = float(distance_correlation(x, torch.randn(256, 3, generator=g)))
    assert 0 <= independent < 0.3  # a finite sample is biased above 0
    assert float(distance_correlation(x, x.pow(2))) > independent + 0.1  # nonlinear dependence is seen
    noisy = float(distance_correlation(x, x + 0.5 * torch.randn(256, 3, generator=g)))
    assert independent < noisy < 1


def _dcor_after_training(nopeek: float) -> float:
    from fedft.accounting import CommLedger
    from fedft.body.transport import BodySession, LoopbackTransport

    torch.manual_seed(0)
    model = tiny_task_model("vit", prompt_len=4, image_size=16)
    model.freeze_backbone()
    parts = split_model(model, SplitSpec(1, 0))
    parts.freeze_body()
    for p in parts.head.parameters():  # a trainable head: NoPeek's gradient has somewhere to go
        p.requires_grad_(True)
    batch = {"pixel_values": torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
             "labels": torch.arange(16) % 3}
    opt = torch.optim.SGD(parts.client_parameters(), lr=0.05)
    transport = LoopbackTransport(BodySession(parts.body), CommLedger())
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        split_step(parts, batch, transport, model.loss, nopeek=nopeek)
        opt.step()
    with torch.no_grad():
        return float(distance_correlation(batch["pixel_values"], parts.head(batch)[0]))


def test_nopeek_steers_the_client_head_towards_less_correlated_activations():
    assert _dcor_after_training(10.0) < _dcor_after_training(0.0) - 0.05


def test_nearest_tokens_and_norm_auc_on_constructed_cases():
    table = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(nearest_tokens(lambda c: table[c], table[ids], 50, chunk=7), ids)
    labels = torch.arange(40) % 2
    grads = (1 + 4 * labels.float())[:, None] * torch.ones(40, 3)  # class 1 has 5x the norm
    auc, chance = norm_auc(grads, labels)
    assert auc == 1.0 and chance < 0.75
