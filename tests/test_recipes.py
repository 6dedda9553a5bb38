"""Data recipes (fedft/recipes): the plugin kind, GRAPE and S3FT's mechanisms, and recipes
inside central and federated runs."""

from __future__ import annotations

import json

import pytest

from fedft.cli import default_config, main
from fedft.data import arith
from fedft.data.sft import SFTExample, tokenize
from fedft.errors import ConfigError
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model
from fedft.recipes import RECIPES, RecipeContext
from fedft.recipes.grape import GrapeOptions, GrapeRecipe, choose
from fedft.recipes.s3ft import S3FTOptions, S3FTRecipe, targets
from fedft.scoring import sequence_loglik

POOL = [SFTExample("q one", "a b", group="terse"), SFTExample("q one", "the answer is a b c", group="verbose"),
        SFTExample("q two", "c", group="terse"), SFTExample("q two", "so it is c , c", group="verbose"),
        SFTExample("q three", "a", group="terse")]
TOK = tiny_chat_tokenizer([f"{e.prompt} {e.response}" for e in POOL] + ["1 2 3 4 5 6 7 8 9"])


def _ctx(seed: int = 0) -> RecipeContext:
    model = tiny_task_model("llama", seed=seed, vocab_size=len(TOK), pad_token_id=TOK.pad_token_id)
    return RecipeContext(model, TOK, max_length=48, seed=seed, batch_size=4)


def test_grape_recipe_keeps_the_argmax_likelihood_candidate_per_prompt_and_reports_it():
    ctx = _ctx()
    means = [s.mean for s in sequence_loglik(ctx.model, [tokenize(e, TOK, 48) for e in POOL], TOK.pad_token_id)]
    result = GrapeRecipe(GrapeOptions()).build(POOL, ctx)
    want = [max(idx, key=lambda i: means[i]) for idx in ([0, 1], [2, 3], [4])]
    assert result.examples == [POOL[i] for i in sorted(want)]
    r = result.report
    assert r["prompts"] == 3 and r["candidates"] == 5 and sum(r["chosen_sources"].values()) == 3
    assert r["chosen_mean_score"] == pytest.approx(sum(means[i] for i in want) / 3)
    # no other choice of one candidate per prompt has a higher mean score
    assert r["chosen_mean_score"] >= max((means[a] + means[b] + means[4]) / 3 for a in (0, 1) for b in (2, 3)) - 1e-9


def test_grape_controls_random_longest_and_source():
    scores = [0.0] * len(POOL)
    longest = choose(POOL, scores, GrapeOptions(selection="longest"), 0)
    assert longest == [1, 3, 4]
    assert choose(POOL, scores, GrapeOptions(selection="source", source="terse"), 0) == [0, 2, 4]
    assert choose(POOL, scores, GrapeOptions(selection="source", source="verbose"), 0) == [1, 3]  # q three dropped
    picks = {tuple(choose(POOL, scores, GrapeOptions(selection="random"), s)) for s in range(8)}
    assert len(picks) > 1 and all(len(p) == 3 and 4 in p for p in picks)
    assert choose(POOL, scores, GrapeOptions(selection="random"), 3) == choose(POOL, scores, GrapeOptions(selection="random"), 3)
    with pytest.raises(ConfigError, match="self_samples"):
        GrapeOptions(self_samples=-1)


def test_grape_own_samples_join_only_when_the_judge_accepts_them(monkeypatch):
    from fedft.recipes import grape

    pool = [SFTExample("add 2 and 3", "5", group="terse"), SFTExample("add 4 and 4", "8", group="terse")]
    monkeypatch.setattr(grape, "generate_batched", lambda *a, **k: ["it is 5", "it is 7"])
    monkeypatch.setattr(grape, "chat_prompt_ids", lambda tok, p, system=None: [1, 2], raising=False)
    own, drawn = grape.own_samples(pool, _ctx(), GrapeOptions(self_samples=1))
    assert drawn == 2 and own == [SFTExample("add 2 and 3", "it is 5", group=grape.SELF)]


def test_s3ft_targets_follow_the_judges_verdicts():
    pool = [SFTExample(f"q{i}", f"gold {i}") for i in range(4)]
    own = ["own 0", "own 1", "own 2", ""]
    para = [None, "para 1", "para 2", "para 3"]
    chosen = targets(pool, own, para, own_ok=[1, 0, 0, 1], para_ok=[None, 1, 0, 1])
    assert [(ex.response, kind) for ex, kind in chosen] == [
        ("own 0", "self"), ("para 1", "paraphrase"), ("gold 2", "gold"), ("para 3", "paraphrase")]


def test_s3ft_recipe_judges_own_answers_then_paraphrases(monkeypatch):
    pool = [SFTExample("what is 2 plus 3", "2 plus 3 is 5"), SFTExample("what is 4 plus 4", "it is 8"),
            SFTExample("what is 1 plus 1", "it is 2")]
    answers = {"own": ["5", "9", "3"], "para": ["eight", "the result is 2"]}  # 2nd: no number -> not accepted
    calls = []

    def fake(self, prompts, ctx, desc):
        calls.append(list(prompts))
        return answers["own" if len(calls) == 1 else "para"]

    monkeypatch.setattr(S3FTRecipe, "_complete", fake)
    result = S3FTRecipe(S3FTOptions()).build(pool, _ctx())
    assert [e.response for e in result.examples] == ["5", "it is 8", "the result is 2"]
    assert result.report == {"self": 1, "paraphrase": 1, "gold": 1, "self_accuracy": pytest.approx(1 / 3)}
    assert len(calls[1]) == 2 and "it is 8" in calls[1][0]  # only the wrong ones are paraphrased, given the gold
    calls.clear()
    result = S3FTRecipe(S3FTOptions(paraphrase=False)).build(pool, _ctx())
    assert len(calls) == 1 and result.report["gold"] == 2


def test_arith_styles_share_the_answer_and_the_datasets_share_the_split():
    from fedft.judges import NumericJudge

    ps = arith.problems(40)
    sols = [[arith.solution(p, s) for s in arith.STYLES] for p in ps]
    assert all(NumericJudge().judge([""] * 3, s, [str(p.answer)] * 3) == [1, 1, 1] for p, s in zip(ps, sols, strict=True))
    assert len({p.question for p in ps}) == 40 and arith.problems(40) == ps
    with pytest.raises(ValueError, match="style"):
        arith.solution(ps[0], "haiku")


def test_a_central_run_trains_on_what_the_recipe_built(tmp_path):
    cfg = default_config(["model.name=tiny-llama", "model.task=causal_lm", "data.name=arith-candidates",
                          "data.train_size=90", "data.val_size=0", "data.test_size=30", "data.max_length=96",
                          "recipe.name=grape", "recipe.grape.selection=longest", "method.name=lora", "federation.strategy=central",
                          "train.epochs=1", "train.optimizer=adamw", "output.plots=false"])
    from fedft.runner import run

    summary = run(cfg, tmp_path / "run", show=False)
    built = [json.loads(line) for line in open(tmp_path / "run" / "recipe_train.jsonl")]
    assert summary["recipe"]["recipe"] == "grape" and summary["recipe"]["built"] == len(built)
    # one per prompt of the subsample, the longest of its candidates there (verbose > reasoning > terse)
    assert len({b["prompt"] for b in built}) == len(built) == summary["recipe"]["prompts"]
    from fedft.data.datasets import load_raw

    longest: dict[str, int] = {}
    for ex in load_raw(cfg.data, cfg.seed).train_x:
        longest[ex.prompt] = max(longest.get(ex.prompt, 0), len(ex.response))
    assert all(len(b["response"]) == longest[b["prompt"]] for b in built)
    assert summary["train_samples"] == len(built) < 90
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["pool"] == 90


def test_recipe_config_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="recipe.name; valid: gemquad, got_d, grape"):
        from fedft.recipes.apply import recipe_for

        recipe_for(default_config(["recipe.name=nope"]))
    with pytest.raises(ConfigError, match="unknown config key 'recipe.grape.nope'"):
        default_config(["recipe.name=grape", "recipe.grape.nope=1"])
    assert main(["methods", "--kind", "data recipe"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES.names()) and "lora" not in out
    assert main(["methods", "--kind", "nope"]) == 2


def test_a_federated_run_builds_each_clients_set_from_its_own_data(tmp_path):
    from fedft.runner import run

    cfg = default_config(["model.name=tiny-llama", "model.task=causal_lm", "data.name=arith-candidates",
                          "data.train_size=60", "data.val_size=0", "data.test_size=12", "data.max_length=96",
                          "recipe.name=grape", "method.name=lora", "federation.strategy=fedavg",
                          "federation.engine=inprocess", "federation.rounds=2", "partition.num_clients=2",
                          "partition.scheme=iid", "train.optimizer=adamw", "output.plots=false"])
    run(cfg, tmp_path / "run", show=False)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "clients.jsonl")] \
        if (tmp_path / "run" / "clients.jsonl").exists() else None
    assert rows is None or rows  # the per-client metrics file is optional; the run must finish
