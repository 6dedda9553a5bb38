"""Non-instructional fine-tuning (Xie, Syu, Lee, arXiv 2409.00096): halves, teacher continuations,
the instruction-like text detector and the rule-checked instruction suite."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedft.data.sft import IGNORE, SFTExample, tokenize
from fedft.instructions import KINDS, InstructionItem, check, follow_rate, instruction_suite, run_suite
from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model
from fedft.recipes.base import RECIPES, RecipeContext
from fedft.recipes.non_instructional import (
    NonInstructionalOptions,
    NonInstructionalRecipe,
    bbc_pool,
    build_pairs,
    half_split,
    looks_instructional,
)

pytestmark = pytest.mark.usefixtures("_one_thread")

FIRST = " ".join(f"alpha{i}" for i in range(40))
SECOND = " ".join(f"omega{i}" for i in range(40))
DOC = FIRST + "\n" + SECOND  # 80 words: the first half is exactly FIRST
NEWS = [
    "Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn for the three months to December.",
    "The firm, which is now one of the biggest investors in Google, benefited from higher advert sales.",
    "Chancellor Gordon Brown has said the economy will grow faster than expected next year.",
    "Wales beat England 11-9 in a thrilling Six Nations opener at the Millennium Stadium on Saturday.",
    "\"We are very disappointed with the decision,\" a spokesman for the airline told the BBC.",
    "Can the new console match the sales of its predecessor? Analysts are divided.",
    "The list of nominees for this year's Oscars was announced in Los Angeles on Tuesday.",
    "Answering questions from MPs, the minister said the scheme would be reviewed in April.",
]
INSTRUCTIONS = [
    ("Write a poem about the sea.", "imperative_opening"),
    ("Explain how photosynthesis works.", "imperative_opening"),
    ("Tell me a joke about cats.", "imperative_opening"),
    ("Summarize the following article in two sentences.", "imperative_opening"),
    ("Some context.\nTranslate this into French: good morning", "imperative_opening"),
    ("Can you help me plan a trip to Rome?", "request_to_assistant"),
    ("I have a question. Could you recommend a book?", "request_to_assistant"),
    ("Please list the planets in order.", "request_to_assistant"),
    ("Q: What is the capital of France?\nA: Paris", "qa_markers"),
    ("Question: how many legs has a spider?", "qa_markers"),
    ("To reset the router, Step 1: unplug it.", "numbered_steps"),
    ("Sure, here is a summary of the text.", "assistant_talk"),
]


def fake_teacher(seen: list[str]):
    def teacher(prompts: list[str]) -> list[str]:
        seen.extend(prompts)
        return [f" continued {len(seen) - len(prompts) + i} " for i in range(len(prompts))]

    return teacher


# ---- half_split --------------------------------------------------------------------------

def test_half_split_words_is_the_first_floor_half_of_the_words():
    assert half_split(DOC, "words", 64) == FIRST
    odd = DOC + " extra"  # 81 words: still the first 40
    assert half_split(odd, "words", 64).split() == odd.split()[:40]
    text = "one two\n\nthree  four five six seven"  # whitespace inside the half is kept
    assert half_split(text, "words", 2) == "one two\n\nthree"
    assert text.startswith(half_split(text, "words", 2))


def test_half_split_minimum_length_guard():
    assert half_split(" ".join(["w"] * 63), "words") is None  # default 64 words [D]
    assert half_split(" ".join(["w"] * 64), "words") == " ".join(["w"] * 32)
    assert half_split("a b c", "words", 4) is None
    with pytest.raises(ValueError, match="split mode"):
        half_split(DOC, "chars", 2)


def test_half_split_tokens_is_a_prefix_of_the_text():
    text = "The Bank of England held rates at 4.75%, it said on Thursday. Markets had expected no change."
    tok = tiny_chat_tokenizer([text])
    half = half_split(text, "tokens", 5, tok)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert text.startswith(half) and len(half) < len(text)
    assert len(tok(half, add_special_tokens=False)["input_ids"]) == n // 2
    assert half_split(text, "tokens", 100, tok) is None  # the guard counts words in both modes
    with pytest.raises(ValueError, match="needs a tokenizer"):
        half_split(text, "tokens", 5)


# ---- build_pairs ---------------------------------------------------------------------------

def test_the_second_half_never_reaches_the_teacher_or_the_data():
    seen: list[str] = []
    docs = [DOC, "too short to use", DOC.replace("alpha", "beta").replace("omega", "gamma")]
    examples, report = build_pairs(docs, ["business", "tech", "sport"], fake_teacher(seen),
                                   NonInstructionalOptions(batch_size=1))
    assert len(examples) == 2 and [ex.group for ex in examples] == ["business", "sport"]
    assert seen == [ex.prompt for ex in examples]
    for ex in examples:
        assert ex.task == "non_instructional" and ex.response.startswith("continued")
        assert "omega" not in ex.prompt + ex.response and "gamma" not in ex.prompt + ex.response
    assert examples[0].prompt == FIRST
    assert report["documents"] == 3 and report["skipped_short"] == 1 and report["pairs"] == 2
    assert report["flagged_instructional"] == 0 and report["dropped"] == 0


def test_flagged_pairs_are_reported_and_optionally_dropped():
    def teacher(prompts: list[str]) -> list[str]:
        return ["Sure, here is a list of ideas." if i == 0 else "and the talks went on" for i in range(len(prompts))]

    docs = [DOC] * 4
    opts = NonInstructionalOptions(batch_size=4)
    kept, report = build_pairs(docs, [""] * 4, teacher, opts)
    assert len(kept) == 4 and report["flagged_instructional"] == 1 and report["flagged_fraction"] == 0.25
    assert report["flagged_rules"] == {"assistant_talk": 1}
    dropped, report = build_pairs(docs, [""] * 4, teacher, NonInstructionalOptions(batch_size=4,
                                                                                   drop_instructional=True))
    assert len(dropped) == 3 and report["dropped"] == 1 and report["examples"] == 3


def test_chat_formatting_labels_only_the_continuation():
    ex = SFTExample(FIRST, "the talks went on late", task="non_instructional")
    tok = tiny_chat_tokenizer([FIRST, ex.response])
    item = tokenize(ex, tok, 256)
    learnt = [t for t in item.labels if t != IGNORE]
    assert tok.decode(learnt[:-1]) == ex.response and learnt[-1] == tok.eos_token_id
    prompt_ids = set(tok(FIRST, add_special_tokens=False)["input_ids"])
    assert not prompt_ids & set(learnt)


def test_options_reject_bad_values():
    for bad, match in [({"split": "chars"}, "split"), ({"min_words": 1}, "min_words"),
                       ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature")]:
        with pytest.raises(ValueError, match=match):
            NonInstructionalOptions(**bad)


# ---- detector --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,rule", INSTRUCTIONS)
def test_detector_flags_instruction_like_text(text, rule):
    assert looks_instructional(text) == rule


@pytest.mark.parametrize("text", NEWS)
def test_detector_passes_news_sentences(text):
    assert looks_instructional(text) is None


@pytest.mark.integration
def test_detector_flags_almost_no_real_bbc_text():
    from fedft.errors import AssetError

    try:
        pool = bbc_pool()
    except AssetError:
        pytest.skip("bbc-news is not fetched: fedft assets bbc-news")
    halves = [half_split(ex.response) for ex in pool]
    assert len(pool) > 2000 and all(h for h in halves) and {ex.group for ex in pool} >= {"business", "tech"}
    flagged = sum(looks_instructional(h) is not None for h in halves)
    assert flagged / len(halves) < 0.01  # the paper's GPT-4 classifier flagged about 0.7%


# ---- instruction suite -----------------------------------------------------------------------

PASS_FAIL = {
    "one_sentence": (lambda p: "The sea is wide.", lambda p: "The sea is wide. It is blue."),
    "list_lines": (lambda p: "\n".join(f"item {i}" for i in range(p["n"])),
                   lambda p: "\n".join(f"item {i}" for i in range(p["n"] + 1))),
    "single_word": (lambda p: "Green.", lambda p: "It is green."),
    "all_caps": (lambda p: "IT IS CALM AND BLUE.", lambda p: "It is calm."),
    "lowercase": (lambda p: "it is calm and blue.", lambda p: "It is calm."),
    "repeat_word": (lambda p: ", ".join([p["word"]] * p["n"]), lambda p: ", ".join([p["word"]] * (p["n"] - 1))),
    "end_with": (lambda p: "The leaves fall. done", lambda p: "Done. The leaves fall."),
    "start_with": (lambda p: f"{p['word']}, it is lovely.", lambda p: "It is lovely."),
    "repeat_exact": (lambda p: p["sentence"], lambda p: p["sentence"].lower()),
    "number_range": (lambda p: str(p["lo"] + 1), lambda p: str(p["hi"] + 1)),
    "max_words": (lambda p: "Quiet and green.", lambda p: " ".join(["word"] * (p["n"] + 1))),
    "no_commas": (lambda p: "It is calm. It is green.", lambda p: "It is calm, green."),
}


def test_suite_is_seeded_and_covers_every_kind():
    a = instruction_suite(seed=3, n=30)
    assert a == instruction_suite(seed=3, n=30) and a != instruction_suite(seed=4, n=30)
    assert len(KINDS) >= 8 and {it.kind for it in a} == set(KINDS) == set(PASS_FAIL)
    assert all(it.prompt and isinstance(it.params, dict) for it in a)


def test_every_kind_has_passing_and_failing_responses():
    items = instruction_suite(seed=0, n=5 * len(KINDS))
    for it in items:
        good, bad = PASS_FAIL[it.kind]
        assert check(it, good(it.params)), (it, good(it.params))
        assert not check(it, bad(it.params)), (it, bad(it.params))
        assert not check(it, "")
    rate = follow_rate(items, [PASS_FAIL[it.kind][0](it.params) for it in items])
    assert rate["rate"] == 1.0 and set(rate["per_kind"]) == set(KINDS)
    with pytest.raises(ValueError, match="unknown instruction kind"):
        check(InstructionItem("x", "haiku"), "x")


# ---- the recipe ------------------------------------------------------------------------------

def test_recipe_builds_pairs_with_a_tiny_llama_teacher():
    docs = [DOC, "short text", DOC.replace("alpha", "beta")]
    pool = [SFTExample("", d, group=g) for d, g in zip(docs, ["tech", "sport", "politics"], strict=True)]
    tok = tiny_chat_tokenizer(docs)
    model = tiny_task_model("llama", seed=0, vocab_size=len(tok), max_position_embeddings=128,
                            pad_token_id=tok.pad_token_id)
    cls = RECIPES.get("non_instructional")
    assert cls is NonInstructionalRecipe and "Xie, Syu, Lee" in cls.description
    opts = NonInstructionalOptions(max_new_tokens=6, batch_size=2)
    result = cls(opts).build(pool, RecipeContext(model=model, tokenizer=tok, max_length=64, seed=1))
    rep = result.report
    assert rep["documents"] == 3 and rep["skipped_short"] == 1
    assert rep["pairs"] + rep["empty_continuations"] == 2 and len(result.examples) == rep["pairs"]
    for ex in result.examples:
        assert ex.prompt in (FIRST, FIRST.replace("alpha", "beta"))
        assert 0 < len(tok(ex.response, add_special_tokens=False)["input_ids"]) <= 6
    again = cls(opts).build(pool, RecipeContext(model=model, tokenizer=tok, max_length=64, seed=1))
    assert again.examples == result.examples  # greedy: deterministic


def test_the_suite_runs_on_a_tiny_chat_model():
    items = instruction_suite(seed=0, n=len(KINDS))
    tok = tiny_chat_tokenizer([it.prompt for it in items])
    model = tiny_task_model("llama", seed=0, vocab_size=len(tok), max_position_embeddings=128,
                            pad_token_id=tok.pad_token_id)
    out = run_suite(model, tok, seed=0, n=len(KINDS), max_new_tokens=4)
    assert out["n"] == len(KINDS) and 0.0 <= out["rate"] <= 1.0 and len(out["answers"]) == len(KINDS)


def test_modules_are_within_the_layout_limits():
    root = Path(__file__).resolve().parent.parent / "fedft"
    for path in (root / "recipes" / "non_instructional.py", root / "instructions.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 350
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 60, node.name
