"""Text metrics and rule judges (fedft.judges)."""

from __future__ import annotations

import pytest

from fedft import judges as J


def test_squad_normalisation_exact_match_and_f1():
    assert J.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert J.exact_match("the Paris.", ["London", "paris"]) == 1.0
    assert J.exact_match("Paris, France", "Paris") == 0.0
    # 2 shared tokens of 3 predicted and 2 gold: P = 2/3, R = 1, F1 = 0.8
    assert J.token_f1("Paris in France", "Paris France") == pytest.approx(0.8)
    assert J.token_f1("Rome", ["Paris", "Rome"]) == 1.0
    assert J.token_f1("", "Paris") == 0.0 and J.token_f1("the", "a") == 1.0  # both empty after normalising


@pytest.mark.parametrize("text, want", [
    ("The answer is 42.", 42.0), ("It costs $1,234.50 in total", 1234.5), ("from -3 to -7", -7.0),
    ("so we get .5", 0.5), ("#### 18", 18.0), ("3 apples, 4 pears #### 7 fruits", 7.0), ("no number", None),
])
def test_numeric_answer_extraction(text, want):
    assert J.extract_number(text) == want


def test_bleu_and_rouge_l_from_the_libraries():
    assert J.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert J.bleu(["a completely different sentence here"], ["the cat sat on the mat"]) < 10
    two_refs = J.bleu(["the cat sat on the mat"], [["a dog", "the cat sat on the mat"]])
    assert two_refs == pytest.approx(100.0)
    assert J.rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    # LCS "the cat" (2 of 3 tokens each way): F = 2/3
    assert J.rouge_l("the cat ran", "the cat sat") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="references"):
        J.bleu(["a", "b"], ["a"])


def test_rule_judges_share_the_trl_shape():
    prompts = ["q1", "q2", "q3"]
    assert J.ExactMatchJudge().judge(prompts, ["Paris", "rome", "x"], ["paris", "Rome", "y"]) == [1, 1, 0]
    assert J.NumericJudge().judge(prompts, ["it is 4", "five", "#### 10"], ["4", "5", "10.0"]) == [1, -1, 1]
    assert J.F1Judge().judge(prompts[:1], ["Paris in France"], ["Paris France"]) == [pytest.approx(0.8)]
    with pytest.raises(ValueError, match="gold"):
        J.ExactMatchJudge().judge(prompts, ["a", "b", "c"])


def test_unit_test_judge_runs_tests_against_the_code_in_the_sandbox():
    code = "def add(a, b):\n    return a + b\n"
    passing = "from solution import add\nassert add(1, 2) == 3\n"
    failing = "from solution import add\nassert add(1, 2) == 4\n"
    hostile = "import os\nos.system('echo pwned')\n"
    assert J.UnitTestJudge(timeout_s=5).judge(["p"] * 3, [passing, failing, hostile], [code] * 3) == [1, 0, 0]
