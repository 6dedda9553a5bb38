"""The non-instructional fine-tuning study (experiments/llm_data_noninstr.py and its report): the
cells, the plain template (prompt a prefix, response-only labels), the equal-token selection, the data
preparation and one cell on a tiny random Llama, and the report's verdicts on fabricated cells."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedft.data.sft import IGNORE, SFTExample, render, tokenize
from fedft.errors import AssetError
from fedft.model.tiny import tiny_chat_tokenizer

pytestmark = pytest.mark.usefixtures("_one_thread")  # tiny models: one thread (conftest.py)
WORDS = ("the cat sat on mat and a dog ran in park with red ball . what is ai ? it field of study "
         "write letter to your friend about holiday one sentence rain")  # no "input" / "output": see _data_test
CHAT = [SFTExample("what is ai ?", "a field of study .", "chat", "english/ai"),
        SFTExample("the cat ?", "sat on the mat .", "chat", "english/cat"),
        SFTExample("a dog ?", "ran in the park with a red ball .", "chat", "english/dog"),
        SFTExample("red ball ?", "the dog and the cat .", "chat", "english/ball")]


@pytest.fixture(scope="module")
def ni(experiment_script):
    return experiment_script("llm_data_noninstr"), experiment_script("llm_data_noninstr_report")


def _tok():
    return tiny_chat_tokenizer([WORDS])


def test_the_cells_are_base_once_and_each_trained_condition_per_seed(ni):
    m, _ = ni
    todo = m.cells(m.CONDITIONS, [0, 1, 2])
    assert todo == [("base", 0), ("non_instructional", 0), ("non_instructional", 1), ("non_instructional", 2),
                    ("instruction", 0), ("instruction", 1), ("instruction", 2)]
    assert m.cells(["instruction"], [5]) == [("instruction", 5)]
    assert m.cell_path(Path("o"), "non_instructional", 2) == Path("o/cells/non_instructional_seed2.json")
    assert "--suite-n" in m.option_args(m.Options()) and m.Options().model == "smollm2-135m"


def _check_plain_template(m, tok):
    tok.chat_template = m.PLAIN_TEMPLATE
    user = [{"role": "user", "content": "What is AI?"}]
    text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert text == "Input:\nWhat is AI?\n\nOutput:\n"
    full = tok.apply_chat_template([*user, {"role": "assistant", "content": "A field.\nOf study."}], tokenize=False)
    assert full == text + "A field.\nOf study." + tok.eos_token  # the prompt is a prefix of the conversation
    ex = SFTExample("What is AI?", "A field.\nOf study.")
    prompt, response = render(ex, tok)
    item = tokenize(ex, tok, 64)
    assert item.input_ids == prompt + response and response[-1] == tok.eos_token_id
    assert item.labels == [IGNORE] * len(prompt) + response  # only the response (and its EOS) is learnt
    with pytest.raises(Exception, match="no system turn"):
        tok.apply_chat_template([{"role": "system", "content": "x"}, *user], tokenize=False)
    return prompt, response


def test_the_plain_template_renders_the_prompt_as_a_prefix_and_labels_only_the_response(ni):
    m, _ = ni
    prompt, response = _check_plain_template(m, _tok())
    assert len(response) == 1 + len("a field . of study .".split())


@pytest.mark.integration
def test_the_plain_template_with_the_real_smollm2_tokenizer(ni):
    from transformers import AutoTokenizer

    from fedft.assets import asset_dir

    m, _ = ni
    try:
        tok = AutoTokenizer.from_pretrained(asset_dir("smollm2-135m"))
    except AssetError:
        pytest.skip("the smollm2-135m asset is not fetched")
    prompt, response = _check_plain_template(m, tok)
    assert tok.decode(prompt) == "Input:\nWhat is AI?\n\nOutput:\n"
    assert tok.decode(response) == "A field.\nOf study." + tok.eos_token


def test_equal_token_selection_takes_pairs_in_order_until_the_budget_is_reached(ni):
    m, _ = ni
    length = {"a": 5, "b": 3, "c": 4, "d": 2}.__getitem__
    assert m.take_tokens("abcd", length, 8) == (list("ab"), 8)
    assert m.take_tokens("abcd", length, 9) == (list("abc"), 12)  # the pair that reaches the budget is kept
    assert m.take_tokens("abcd", length, 100) == (list("abcd"), 14)  # too few: all of them
    assert m.take_tokens("abcd", length, 0) == ([], 0)


def test_documents_are_cut_at_a_whitespace(ni):
    m, _ = ni
    assert m.cut_text("one two three four", 100) == "one two three four"
    assert m.cut_text("one two three four", 9) == "one two"
    assert m.cut_text("one two\nthree four", 13) == "one two\nthree"
    assert m.cut_text("x" * 20, 10) == "x" * 10  # no whitespace: a hard cut


def _tiny(m, monkeypatch, tmp_path, **kw):
    from fedft.model.build import build_model

    assert len(_tok()) <= 99  # the tiny Llama's vocabulary
    monkeypatch.setattr(m, "build", lambda cfg: (build_model(cfg, num_labels=0)[0], _tok()))
    return m.Options(**{"model": "tiny-llama", "docs": 5, "teacher_tokens": 4, "heldout": 2, "suite_n": 3,
                        "max_new_tokens": 3, "max_length": 48, "batch_size": 2, "gen_batch": 4, "out": str(tmp_path),
                        **kw})


def test_the_data_preparation_on_a_tiny_model(ni, monkeypatch, tmp_path):
    m, _ = ni
    opts = _tiny(m, monkeypatch, tmp_path)
    body = " ".join(["the cat sat on the mat and a dog ran in the park ."] * 7)  # 91 words
    docs = [body, "Write a letter to your friend about the holiday . " + body, body.replace("cat", "dog"),
            "the cat sat .", body.replace("park", "mat")]
    monkeypatch.setattr(m, "documents", lambda n, chars: (docs[:n], ["a", "b", "c", "d", "e"][:n]))
    monkeypatch.setattr("fedft.data.datasets.load_raw", lambda cfg: SimpleNamespace(
        train_x=[*CHAT, SFTExample("hola", "hola", "chat", "spanish/x")], test_x=CHAT[:3]))
    asked = []  # a fixed teacher: the tiny random model's continuations are arbitrary (often empty)
    monkeypatch.setattr("fedft.recipes.non_instructional.model_teacher", lambda model, tok, o, seed, most: (
        lambda prompts: asked.append((o.max_new_tokens, o.temperature, most)) or ["and the cat sat ."] * len(prompts)))
    data = m.prepare(opts)
    r = data["report"]
    assert (r["documents"], r["skipped_short"], r["pairs"], r["min_words"]) == (5, 1, 4, 64)
    assert r["flagged_rules"] == {"imperative_opening": 1} and r["dropped"] == 1  # the "Write a letter" half
    assert r["examples"] == len(data["non_instructional"]) == 3 and set(asked) == {(4, 0.0, 44)}
    assert r["teacher_tokens"] == 4 * 5 and r["teacher_s"] > 0  # 4 continuations of 5 words
    ex = data["non_instructional"][0]
    assert ex["group"] == "a" and ex["response"] == "and the cat sat ." and docs[0].startswith(ex["prompt"])
    budget, got = data["tokens"]["non_instructional"], data["tokens"]["instruction"]
    tok = _tok()
    tok.chat_template = m.PLAIN_TEMPLATE
    assert budget == sum(len(tokenize(e, tok, 48)) for e in m.examples(data["non_instructional"]))
    assert got == sum(len(tokenize(e, tok, 48)) for e in m.examples(data["instruction"]))
    assert got >= budget or len(data["instruction"]) == 4  # equal tokens, unless the pool runs out
    assert {e["group"] for e in data["instruction"]} <= {c.group for c in CHAT}  # English only
    assert len(data["heldout"]) == 2 and data["heldout_pool"] == 3 and data["instruction_pool"] == 4
    assert m.prepare(opts) == json.loads((tmp_path / "data.json").read_text())  # cached
    with pytest.raises(SystemExit, match="was made with"):
        m.prepare(m.Options(**{**asdict(opts), "docs": 6}))


def test_one_cell_end_to_end_on_a_tiny_model(ni, monkeypatch, tmp_path):
    m, _ = ni
    opts = _tiny(m, monkeypatch, tmp_path)
    pair = SFTExample("the cat sat on the mat and a dog", "ran in the park .", "non_instructional", "sports")
    (tmp_path / "data.json").write_text(json.dumps({
        "key": m.data_key(opts), "non_instructional": [asdict(pair)] * 3, "instruction": [asdict(c) for c in CHAT],
        "heldout": [asdict(c) for c in CHAT[:2]]}))
    argv = ["--cell", "non_instructional", "0", *m.option_args(opts)]
    assert m.main(argv) == 0
    rec = json.loads(m.cell_path(tmp_path, "non_instructional", 0).read_text())
    assert (rec["train_examples"], rec["train_steps"], rec["suite_n"], len(rec["answers"])) == (3, 2, 3, 3)
    assert rec["train_tokens"] > rec["train_response_tokens"] == 3 * 6  # 5 words and EOS per response
    assert math.isfinite(rec["train_loss"]) and math.isfinite(rec["heldout_loss"]) and rec["peak_rss_mb"] > 0
    assert 0 <= rec["follow_rate"] <= 1 and set(rec["per_kind"]) == {a["kind"] for a in rec["answers"]}
    assert "--cell non_instructional 0" in rec["command"] and "own_template_follow_rate" not in rec
    base = m.run_cell("base", 0, opts)
    assert base["train_steps"] == 0 and base["train_loss"] is None
    assert 0 <= base["own_template_follow_rate"] <= 1 and math.isfinite(base["own_template_heldout_loss"])


def _cell(cond, seed, follow, loss, kinds=None):
    answers = [{"kind": "one_sentence", "prompt": "Write one sentence about rain.", "answer": f"{cond} | rain.",
                "ok": True}]
    rec = {"condition": cond, "seed": seed, "follow_rate": follow, "heldout_loss": loss, "options": {},
           "per_kind": kinds or {"one_sentence": follow, "all_caps": 0.0}, "answers": answers,
           "train_examples": 0 if cond == "base" else 10, "train_tokens": 0 if cond == "base" else 900}
    if cond == "base":
        rec.update(own_template_follow_rate=0.6, own_template_heldout_loss=1.8, own_template_answers=answers,
                   own_template_per_kind={"one_sentence": 1.0, "all_caps": 0.5})
    return rec


def test_the_report_compares_with_the_one_base_value_and_judges_each_claim(ni, tmp_path):
    _, rep = ni
    (tmp_path / "cells").mkdir()
    recs = [_cell("base", 0, 0.30, 2.00)]
    for s in range(3):
        recs.append(_cell("non_instructional", s, 0.40 + 0.02 * s, 1.90 + 0.01 * s))
        recs.append(_cell("instruction", s, 0.50 + 0.02 * s, 1.50 + 0.02 * s))
    for r in recs:
        (tmp_path / "cells" / f"{r['condition']}_seed{r['seed']}.json").write_text(json.dumps(r))
    by = rep.load(tmp_path)
    n, mean, lo, hi = rep.vs_base(by, "non_instructional", "follow_rate")
    assert n == 3 and mean == pytest.approx(0.12) and lo > 0  # every seed against the one base value
    assert rep.vs_base(by, "instruction", "heldout_loss")[1] == pytest.approx(-0.48)
    assert rep.half_gap(by, "follow_rate")[1] == pytest.approx(0.01)  # 0.12 - 0.22 / 2
    assert rep.half_gap(by, "heldout_loss")[1] == pytest.approx(0.15)  # -0.09 - (-0.48) / 2
    text = rep.write_report(tmp_path).read_text()
    verdicts = [line for line in text.splitlines() if line.startswith("**Verdict")]
    assert verdicts == ["**Verdict: reproduced in direction.**",  # beats base on both metrics
                        "**Verdict: not reproduced.**",  # recovers well under half of instruction FT's loss drop
                        "**Verdict: reproduced in direction.**"]  # the control beats base
    assert "follow rate 0.600, held-out chatterbot loss 1.800" in text and "(no data.json)" in text
    assert "| all_caps | 0.50 | 0.00 | 0.00 | 0.00 |" in text and "rain." in text and "\\|" in text
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + len(recs) and rows[0].startswith("condition,seed,follow_rate,heldout_loss")
    assert (tmp_path / "report.md").is_file()
