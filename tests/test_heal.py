"""``fedft heal`` (fedft.assets.heal): cut a causal LM down to a few blocks, heal it, save it as an
asset directory with its recipe; on a tiny random Llama and a tiny made-up corpus."""

from __future__ import annotations

import json

import pytest
import torch

from fedft.assets import asset_dir, verify
from fedft.assets.heal import NAME, HealOptions, build_small, cut_model, kept_blocks, read_recipe
from fedft.cli import main
from fedft.model.tiny import tiny_chat_tokenizer, tiny_config

pytestmark = pytest.mark.usefixtures("_one_thread")
SENTENCES = ["the cat sat on the mat .", "the dog sat on the log .", "a bird sat on a wire ."]


def _source(tmp_path):
    from transformers import AutoModelForCausalLM

    tok = tiny_chat_tokenizer(SENTENCES + ["hello there how are you ? fine thanks"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", num_hidden_layers=6, vocab_size=len(tok),
                                                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id))
    path = tmp_path / "source"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, path


def _corpus(tmp_path):
    bbc, bot = tmp_path / "bbc", tmp_path / "chatterbot"
    for section in ("business", "tech"):
        (bbc / section).mkdir(parents=True)
        for i in range(12):
            (bbc / section / f"{i:03d}.txt").write_text(f"{section} news {i}\n\n" + " ".join(SENTENCES * 3))
    (bot / "english").mkdir(parents=True)
    (bot / "english" / "greetings.yml").write_text(
        "conversations:\n" + "".join(f"- - hello there {i}\n  - how are you ? fine thanks\n" for i in range(10)))
    return bbc, bot


def test_kept_blocks():
    assert kept_blocks(30, 2, 2) == [0, 1, 28, 29]
    assert kept_blocks(6, 3, 0) == [0, 1, 2]
    for bad in ((0, 0), (4, 3), (-1, 2)):
        with pytest.raises(ValueError):
            kept_blocks(6, *bad)


def test_the_cut_model_keeps_the_chosen_blocks(tmp_path):
    full, _ = _source(tmp_path)
    small = cut_model(full, [0, 1, 4, 5])
    assert small.config.num_hidden_layers == 4 and len(small.model.layers) == 4
    src, dst = full.state_dict(), small.state_dict()
    for new, old in enumerate([0, 1, 4, 5]):
        for k, v in dst.items():
            if f"layers.{new}." in k:
                torch.testing.assert_close(v, src[k.replace(f"layers.{new}.", f"layers.{old}.")])
    torch.testing.assert_close(dst["model.embed_tokens.weight"], src["model.embed_tokens.weight"])
    assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()  # still tied
    assert small.model.layers[3].self_attn.layer_idx == 3  # KV cache slots follow the new numbering


def test_build_heals_saves_and_loads_as_a_model_name(tmp_path, monkeypatch):
    full, source = _source(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("FEDFT_HOME", str(home))
    opts = HealOptions(source=str(source), seq_len=16, batch_size=4, lr=1e-2, warmup=2, max_steps=40,
                       eval_every=10, patience=2, heldout_docs=0.2, heldout_chunks=8)
    out = build_small(opts, home / NAME, corpus=_corpus(tmp_path), log=lambda m: None)
    recipe = read_recipe(out)
    assert recipe["blocks_kept"] == [0, 1, 4, 5] and recipe["source_layers"] == 6
    ppl = recipe["heldout_ppl"]
    assert ppl["healed"] < ppl["cut_before_healing"]  # healing lowered the held-out perplexity
    assert recipe["history"][0]["step"] == 0 and recipe["steps"] <= 40
    assert recipe["data"]["heldout_docs"]["bbc-news"] + recipe["data"]["heldout_docs"]["chatterbot"] > 0
    assert asset_dir(NAME) == out
    verify(NAME)  # MANIFEST.json matches the files

    from fedft.config import ExperimentConfig
    from fedft.model.build import build_model

    cfg = ExperimentConfig.from_overrides([f"model.name={out}", "model.task=causal_lm", "method.name=full_ft",
                                           "train.precision=fp32"])
    model, _, tok = build_model(cfg, num_labels=0)
    assert model.n_layers == 4 and tok.chat_template
    torch.testing.assert_close(model.arch.embedding_module(model.backbone).weight, full.model.embed_tokens.weight)


def test_patience_stops_a_heal_that_does_not_improve(tmp_path):
    _, source = _source(tmp_path)
    opts = HealOptions(source=str(source), seq_len=16, batch_size=4, lr=0.0, max_steps=100, eval_every=5,
                       patience=2, heldout_docs=0.2)
    recipe = read_recipe(build_small(opts, tmp_path / "out", corpus=_corpus(tmp_path), log=lambda m: None))
    assert recipe["stopped"] == "patience" and recipe["steps"] == 10


def test_the_command_has_help_and_skips_a_built_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["heal", "--help"])
    assert "--keep-first" in capsys.readouterr().out
    (tmp_path / "recipe.json").write_text(json.dumps({"heldout_ppl": {"healed": 12.5}}))
    assert main(["heal", "--out", str(tmp_path)]) == 0
    assert "is built" in capsys.readouterr().out
