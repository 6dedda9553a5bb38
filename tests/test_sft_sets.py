"""SFT datasets (fedft.data.sft_sets) on small stand-ins of the real files."""

from __future__ import annotations

import gzip
import json
import textwrap

import pytest

from fedft.data import sft_sets as S
from fedft.data.sft import SFTExample
from fedft.sandbox import Limits, run_python


@pytest.fixture
def chatterbot(tmp_path):
    for lang, topic, convs in (("english", "trivia", [["Who wrote Hamlet?", "Shakespeare"],
                                                       ["Name the largest ocean on Earth?", "The Pacific Ocean."],
                                                       ["Tell me about the moon?", "It is a rock that orbits our planet"],
                                                       ["Not a question", "x"]]),
                               ("english", "greetings", [["Hi", "Hello", "How are you?"]]),
                               ("french", "greetings", [["Salut", "Bonjour"]])):
        (tmp_path / lang).mkdir(exist_ok=True)
        doc = {"categories": [topic], "conversations": convs}
        (tmp_path / lang / f"{topic}.yml").write_text(json.dumps(doc))  # JSON is YAML
    return tmp_path


def test_chatterbot_pairs_are_grouped_by_language_and_topic(chatterbot):
    pairs = S.chatterbot_pairs(chatterbot)
    assert [(e.prompt, e.response, e.group) for e in pairs if e.group.endswith("greetings")] == [
        ("Hi", "Hello", "english/greetings"), ("Hello", "How are you?", "english/greetings"),
        ("Salut", "Bonjour", "french/greetings")]
    assert {e.task for e in pairs} == {"chat"}
    assert len(S.chatterbot_pairs(chatterbot, ["french"])) == 1


def test_trivia_keeps_short_answered_questions(chatterbot):
    got = [(e.prompt, e.response) for e in S.trivia(chatterbot)]
    assert got == [("Who wrote Hamlet?", "Shakespeare"), ("Name the largest ocean on Earth?", "The Pacific Ocean")]


def test_humaneval_tests_run_against_the_solution(tmp_path):
    problem = {"task_id": "HumanEval/0", "entry_point": "add",
               "prompt": 'def add(a, b):\n    """Sum of a and b."""\n', "canonical_solution": "    return a + b\n",
               "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}
    with gzip.open(tmp_path / "HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps(problem) + "\n")
    (ex,) = S.humaneval_unit_tests(tmp_path)
    assert ex.prompt.startswith(S.UNIT_TEST_INSTRUCTION) and "return a + b" in ex.prompt
    assert ex.task == "unit_tests" and ex.group == "HumanEval/0"
    files = {"solution.py": S.solution_source(problem)}
    assert run_python(ex.response, Limits(timeout_s=10), files).ok
    files["solution.py"] = files["solution.py"].replace("a + b", "a - b")
    assert not run_python(ex.response, Limits(timeout_s=10), files).ok


def test_stdlib_mining_pairs_docstrings_and_bodies(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(textwrap.dedent('''
        def area(w, h):
            """Return the area of a w by h rectangle."""
            return w * h

        def short(x):
            """Too short."""
            return x

        class Box:
            def volume(self, d):
                """Return the volume of the box with depth d."""
                return self.w * self.h * d
        '''))
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text('def f():\n    """A test helper is never mined."""\n    pass\n')
    found = S.mine_stdlib(tmp_path)
    assert [(f.module, f.name) for f in found] == [("pkg.mod", "area"), ("pkg.mod", "Box.volume")]
    assert found[1].signature == "def volume(self, d):" and found[1].body.strip() == "return self.w * self.h * d"
    examples, version = S.stdlib_code(tmp_path)
    assert [e.task for e in examples] == ["doc2func", "func2doc"] * 2 and version.count(".") == 2
    assert examples[0].response == "    return w * h\n" and "area of a w by h" in examples[0].prompt
    assert examples[1].response == "Return the area of a w by h rectangle."


def test_the_split_is_fixed_by_key_and_seed():
    items = [SFTExample(f"q{i}", "a", group=f"g{i % 50}") for i in range(500)]
    a, b = S.split_by_key(items), S.split_by_key(list(reversed(items)))
    assert {k: sorted(e.prompt for e in v) for k, v in a.items()} == {k: sorted(e.prompt for e in v) for k, v in b.items()}
    where = {e.group: k for k, v in a.items() for e in v}
    assert all(where[e.group] == k for k, v in a.items() for e in v)  # a group never straddles splits
    assert sum(len(v) for v in a.values()) == 500 and all(a[k] for k in ("train", "val", "test"))
    assert S.split_by_key(items, seed=1) != a
    with pytest.raises(ValueError, match="fractions"):
        S.split_by_key(items, fractions=(0.5, 0.5))
