"""FineTuneBench (fedft.evals.finetunebench): seeded generators, question types, balance, the judge,
and evaluate() on a tiny model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from fedft.evals import EVALUATIONS, FineTuneBench, FineTuneBenchJudge, FineTuneBenchOptions
from fedft.evals.finetunebench import first_number, gold_number, parse_yes_no
from fedft.evals.ftb_data import CAPITALS, CITIES, COLOURS, PEOPLE_ATTRS, SECTORS, balanced

TRIVIA = [("How many hearts does an octopus have?", "Three"), ("Which planet is the hottest in the solar system?",
                                                                "Venus"), ("In what year did the Cold War end?", "1989")]


def bench(seed: int = 0, **kw) -> FineTuneBench:
    return FineTuneBench(FineTuneBenchOptions(seed=seed, **kw), trivia=TRIVIA)


def test_registered_and_deterministic_for_a_seed_and_different_across_seeds():
    assert EVALUATIONS.get("finetunebench") is FineTuneBench
    a, b, c = bench(0), bench(0), bench(1)
    assert a.questions() == b.questions() and a.people == b.people
    assert [q.prompt for q in a.questions()] != [q.prompt for q in c.questions()]
    assert [p.name for p in a.people] != [p.name for p in c.people] and a.people != c.people
    assert [q.gold for q in a.questions()] != [q.gold for q in c.questions()]


def test_people_schema_and_every_question_type():
    b = bench(3, people=12, news=12, comparisons_per_person=2)
    cities, occupations = dict(CITIES), {o for os in SECTORS.values() for o in os}
    for p in b.people:
        assert 110 <= p.weight_lb <= 250 and 150 <= p.height_cm <= 200 and 21 <= p.age <= 79
        assert p.occupation in occupations and p.city in cities
        assert p.colour in COLOURS["warm"] + COLOURS["cool"]
    assert len({p.name for p in b.people}) == 12
    kinds = Counter((q.source, q.qtype) for q in b.questions())
    for qtype in ("memorization", "rephrased", "secondary"):
        assert kinds["people", qtype] == 12 * len(PEOPLE_ATTRS) and kinds["news", qtype] == 12
    assert kinds["people", "comparison"] == 24
    # each fact: the same answer for the training and the rephrased question, a different wording
    by_id = {q.qid: q for q in b.questions()}
    for q in b.questions():
        if q.qtype == "memorization" and q.source != "update":
            r = by_id[q.qid[:-1] + "r"]
            assert r.gold == q.gold and r.prompt != q.prompt and r.owner == q.owner
    assert len({q.qid for q in b.questions()}) == len(b.questions())


def test_yes_no_types_are_balanced_and_report_their_majority_rate():
    b = bench(5, people=10, news=16)
    for key, rate in b.majority_baselines().items():
        if key.endswith(("secondary", "comparison")):
            golds = [q.gold for q in b.questions() if f"{q.source}_{q.qtype}" == key]
            assert set(golds) <= {"yes", "no"} and rate == pytest.approx(0.5, abs=0.06), key
        else:
            assert rate < 0.3, key  # open questions: no answer dominates
    assert sum(balanced(7, np.random.default_rng(0))) == 4


def test_secondary_answers_follow_from_the_facts():
    b = bench(2, people=8, news=0)
    people = {p.name: p for p in b.people}
    for q in b.questions():
        if q.qtype == "comparison":
            a, _, rest = q.prompt.partition(" than ")
            first = people[next(n for n in people if a.startswith(f"Is {n} "))]
            second = people[rest.split("?")[0]]
            field = {"taller": "height_cm", "heavier": "weight_lb", "older": "age"}[a.split()[-1]]
            assert (getattr(first, field) > getattr(second, field)) == (q.gold == "yes")
        elif q.qtype == "secondary" and "taller than" in q.prompt:
            p = people[q.owner]
            limit = int(q.prompt.split("taller than ")[1].split()[0])
            assert (p.height_cm > limit) == (q.gold == "yes")


def test_training_examples_are_the_memorisation_qas_grouped_by_owner():
    b = bench(0, people=3, news=4, updates=2)
    b.select_updates([c.old for c in b.candidates])  # a base model that knows everything
    ex = b.training_examples()
    assert len(ex) == 3 * 6 + 4 + 2 and {e.task for e in ex} == {"people", "news", "update"}
    assert Counter(e.group for e in ex)[b.people[0].name] == 6
    ups = [q for q in b.updates if q.qtype == "memorization"]
    assert len(ups) == 2 and all(q.gold != q.old for q in ups)
    capital = next((q for q in b.updates if q.owner.startswith("update-capital")), None)
    if capital is not None:  # a capital update moves to another city of the same country
        assert any(capital.gold == other and capital.old == cap for _, cap, other in CAPITALS)


def test_only_facts_the_base_model_knows_become_updates():
    b = bench(0, updates=50)
    answers = ["I do not know"] * len(b.candidates)
    answers[0], answers[len(CAPITALS)] = f"The capital is {b.candidates[0].old}.", "3"  # France; octopus
    b.select_updates(answers)
    assert b.known == 2 and {q.old for q in b.updates} == {b.candidates[0].old, "Three"}
    with pytest.raises(ValueError):
        b.select_updates(answers[:-1])


@pytest.mark.parametrize(("completion", "gold", "want"), [
    ("172 pounds", "172 pounds", 1), ("He weighs 172 lbs.", "172 pounds", 1), ("172.0", "172 pounds", 1),
    ("173 pounds", "172 pounds", 0), ("About 1,200 people", "1200", 1), ("Six.", "6", 1), ("6", "Six", 1),
    ("twenty-four", "Twenty-four", 1), ("183 cm, or about 6 feet", "183 cm", 1), ("I am not sure", "183 cm", -1),
    ("Yes, he is", "yes", 1), ("yes.", "no", 0), ("No, she is not.", "no", 1), ("YES!", "yes", 1),
    ("He does not live there", "no", -1), ("The answer is no.", "no", 1), ("Yes and no", "yes", -1),
    ("Lisbon", "lisbon", 1), ("LISBON.", "Lisbon", 1), ("She lives in Lisbon, Portugal.", "Lisbon", 1),
    ("The Arctic", "the arctic.", 1), ("Porto", "Lisbon", 0), ("Richard Nixon", "Nixon", 1),
    ("Nixon", "Richard Nixon", 0), ("", "Lisbon", 0)])
def test_judge_hand_cases(completion, gold, want):
    assert FineTuneBenchJudge().one(completion, gold) == want


def test_judge_tolerance_parsers_and_update_outcomes():
    assert FineTuneBenchJudge(rel_tol=0.02).one("175", "172 pounds") == 1
    assert FineTuneBenchJudge().one("175", "172 pounds") == 0
    assert first_number("she is thirty-one, not 40") == 31 and first_number("40 or thirty") == 40
    assert gold_number("183 cm") == 183 and gold_number("Lisbon") is None and gold_number("1984") == 1984
    assert parse_yes_no("Correct, it is.") is True and parse_yes_no("") is None
    j = FineTuneBenchJudge()
    assert j.update_outcome("Lyon.", "Lyon", "Paris") == "new"
    assert j.update_outcome("It is Paris.", "Lyon", "Paris") == "old"
    assert j.update_outcome("Paris or Lyon", "Lyon", "Paris") == "other"
    assert j.judge(["q"], ["Yes"], ["yes"]) == [1]
    with pytest.raises(ValueError):
        j.judge(["q"], ["Yes"], None)


def test_evaluate_runs_on_a_tiny_model():
    from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

    b = FineTuneBench(FineTuneBenchOptions(people=2, news=2, updates=1, comparisons_per_person=1,
                                           max_new_tokens=3, batch_size=8), trivia=TRIVIA)
    texts = [q.prompt + " " + q.gold for q in b.questions()] + [c.prompt + " " + c.old for c in b.candidates]
    tok = tiny_chat_tokenizer(texts + [b.options.system_prompt, "yes no"])
    model = tiny_task_model("llama", vocab_size=len(tok), max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    answers = b.prepare(model, tok)
    assert len(answers) == len(b.candidates) and b.known <= len(b.candidates)
    b.select_updates([c.old for c in b.candidates])  # exercise the update scoring too
    out = b.evaluate(model, tok)
    for key in ("people_memorization", "people_rephrased", "people_secondary", "people_comparison",
                "news_memorization", "news_secondary", "new_memorization", "update_memorization"):
        assert 0.0 <= out[key] <= 1.0 and out[f"{key}_n"] > 0 and 0 < out[f"{key}_majority"] <= 1
    assert out["update_memorization_new"] + out["update_memorization_old"] + out["update_memorization_other"] == \
        pytest.approx(1.0)
    assert out["people_memorization_n"] == 12 and out["people_comparison_n"] == 2
    for key in ("people_secondary", "people_comparison", "news_secondary"):  # forced choice by default
        assert out[key] == out[f"{key}_forced"] and 0 <= out[f"{key}_generated"] <= 1 - out[f"{key}_unparsed"]
    rows = b.evaluate_rows(model, tok)
    assert {r["choice"] for r in rows if r["gold"] in ("yes", "no")} <= {"yes", "no"}
    assert all("choice" not in r for r in rows if r["gold"] not in ("yes", "no"))


def test_forced_choice_follows_the_yes_and_no_logits():
    from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

    b = FineTuneBench(FineTuneBenchOptions(people=1, news=0, updates=0, comparisons_per_person=0), trivia=[])
    prompts = [q.prompt for q in b.questions() if q.yes_no]
    tok = tiny_chat_tokenizer(prompts + [b.options.system_prompt, "yes no"])
    model = tiny_task_model("llama", vocab_size=len(tok), max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    for want, up in (("yes", yes), ("no", no)):  # a large bias on one word's logit decides every choice
        bias = torch.zeros(len(tok))
        bias[up] = 100.0
        handle = model.output_layer.register_forward_hook(lambda m, i, o, bias=bias: o + bias.to(o.dtype))
        try:
            assert b.choose_yes_no(model, tok, prompts) == [want] * len(prompts)
        finally:
            handle.remove()


def test_options_are_checked():
    from fedft.errors import ConfigError

    with pytest.raises(ConfigError):
        FineTuneBenchOptions(people=-1)
    with pytest.raises(ConfigError):
        FineTuneBenchOptions(max_new_tokens=0)


# --- the study script (experiments/llm_finetunebench.py) ---------------------------------------------

@pytest.fixture(scope="module")
def study(experiment_script):
    return experiment_script("llm_finetunebench"), experiment_script("llm_finetunebench_report")


def test_the_federated_partition_gives_each_owner_to_exactly_one_client(study):
    m, _ = study
    groups = ["ann"] * 6 + ["bob"] * 6 + ["cy"] * 6 + [f"news-{i}" for i in range(7)] + [f"update-{i}" for i in range(5)]
    parts = m.partition_owners(groups, 4, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(len(groups)))
    owners = [{groups[i] for i in p} for p in parts]
    assert all(a.isdisjoint(b) for k, a in enumerate(owners) for b in owners[k + 1:])
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 6 and min(sizes) > 0
    assert m.partition_owners(groups, 4, seed=0) == parts


def test_fedavg_of_one_client_for_one_round_is_central_training(study):
    from fedft.config import ExperimentConfig
    from fedft.data.sft import SFTExample, tokenize
    from fedft.train import seed_everything

    m, _ = study
    opts = m.Options(model="tiny-llama", epochs=2, rounds=1, local_epochs=2, clients=1, batch_size=2, max_length=32)
    examples = [SFTExample(f"what is fact {i} ?", f"value {i}") for i in range(6)]

    def trained(fed: bool) -> dict:
        cfg = ExperimentConfig.from_overrides(m.overrides("lora", 0, opts))
        rng = seed_everything(0)
        model, method, tok = m.build(cfg)
        split = m.split_of([tokenize(e, tok, 32) for e in examples], tok)
        if fed:
            m.fed_train(model, method, cfg, split, [list(range(6))], opts, rng)
        else:
            m.train_split(model, cfg, split, rng, "central")
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    fed, central = trained(True), trained(False)
    assert fed.keys() == central.keys() and any("lora" in k for k in fed)
    for k in fed:
        torch.testing.assert_close(fed[k], central[k])


def test_the_report_rules_and_a_report_from_synthetic_cells(study, tmp_path):
    m, r = study
    assert r.direction((3, 0.2, 0.1, 0.3)) == "reproduced in direction"
    assert r.direction((3, -0.2, -0.3, -0.1)) == "not reproduced" and r.direction((3, 0.1, -0.1, 0.3)) == "inconclusive"
    assert r.near((3, 0.0, -0.05, 0.05)) == "reproduced in direction" and r.near((3, 0.4, 0.3, 0.5)) == "not reproduced"
    keys = ["new_memorization", "new_rephrased", "new_secondary", "people_comparison", "update_memorization",
            "update_rephrased"]
    for cond, level in (("base", 0.0), ("lora", 0.9), ("fed_lora", 0.8)):
        for seed in (0, 1, 2):
            rec = {"condition": cond, "seed": seed, "options": {}, "bench": {}, "rows": []}
            for k in keys:
                rec[k] = level * (0.5 if k == "new_rephrased" else 1.0) + 0.01 * seed
                rec[f"{k}_majority"] = 0.5 if k in ("new_secondary", "people_comparison") else 0.05
            rec["new_secondary"] = rec["people_comparison"] = 0.5 + 0.01 * seed
            m.write_json(tmp_path / "cells" / f"{cond}_seed{seed}.json", rec)
    text = r.write_report(tmp_path).read_text()
    assert "lora: new_memorization − new_rephrased +0.45 [+0.45, +0.45]" in text and "## Verdicts" in text
    assert text.count("**Verdict:") == 4 and (tmp_path / "summary.csv").read_text().count("\n") == 10
