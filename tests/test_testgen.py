"""Generated unit tests (fedft.testgen): cleaning completions, validity, and scoring against a
tiny solution and its mutants in the sandbox, hostile tests included."""

from __future__ import annotations

from fedft.sandbox import Limits
from fedft.testgen import (
    body_of,
    clean_tests,
    header,
    is_valid,
    longest_parsing_prefix,
    parses,
    score_tests,
    screen_mutants,
    shorten_tests,
    strip_fences,
)

SOLUTION = "def clip(x, lo, hi):\n    return max(lo, min(x, hi))\n"
OFF = "def clip(x, lo, hi):\n    return max(lo, min(x, hi + 1))\n"  # killed by a test at the upper bound
SWAPPED = "def clip(x, lo, hi):\n    return min(hi, max(x, lo))\n"  # the same function: survives
FAST = Limits(timeout_s=3.0, cpu_s=1, memory_mb=512)


def test_fences_are_stripped_and_joined():
    text = "Here are tests:\n```python\nassert clip(1, 0, 2) == 1\n```\nand more:\n```\nassert clip(5, 0, 2) == 2\n```\n"
    assert strip_fences(text) == "assert clip(1, 0, 2) == 1\n\nassert clip(5, 0, 2) == 2"
    assert strip_fences("```py\nassert 1\n") == "assert 1"  # an unclosed fence (cut by the token limit)
    assert strip_fences("assert 1") == "assert 1"


def test_a_trailing_incomplete_statement_is_dropped():
    assert longest_parsing_prefix("assert f(1) == 2\nassert f(2) == 3\nassert f(3") == "assert f(1) == 2\nassert f(2) == 3"
    assert longest_parsing_prefix("Here are the tests:\nassert 1") == ""


def test_clean_tests_adds_the_imports_and_runs_an_uncalled_check():
    code = clean_tests("def check(candidate):\n    assert candidate(5, 0, 2) == 2\n    assert candidate(", "clip")
    assert code.startswith(header("clip"))
    assert code.rstrip().endswith("check(clip)") and code.count("check(clip)") == 1
    assert parses(code) and is_valid(code)
    called = clean_tests("def check(c):\n    assert c(1, 0, 2) == 1\n\ncheck(clip)\n", "clip")
    assert called.count("check(clip)") == 1  # already called: nothing appended
    again = clean_tests(called, "clip")  # a cleaned file is a fixed point
    assert again == called


def test_clean_tests_drops_copies_of_the_function_and_foreign_imports_and_runs_pytest_style_tests():
    text = ("from my_module import clip\nimport math\n\ndef clip(x, lo, hi):\n    return x\n\n"
            "def test_upper():\n    assert clip(5, 0, 2) == 2\n")
    code = clean_tests(text, "clip")
    assert "my_module" not in code and "return x" not in code and "import math" in code
    assert code.rstrip().endswith("test_upper()")


def test_validity_needs_an_assertion():
    assert not is_valid(clean_tests("", "clip")) and not is_valid(clean_tests("print(clip(1, 0, 2))", "clip"))
    assert not is_valid("assert (")
    assert is_valid("import unittest\nclass T(unittest.TestCase):\n    def test(self):\n        self.assertEqual(1, 1)\n")


def test_a_killed_and_a_surviving_mutant():
    tests = clean_tests("assert clip(1, 0, 2) == 1\nassert clip(5, 0, 2) == 2\nassert clip(-3, 0, 2) == 0\n", "clip")
    s = score_tests(tests, SOLUTION, [OFF, SWAPPED], FAST)
    assert (s.valid, s.passes, s.mutants, s.killed) == (True, True, 2, 1) and s.mutation_score == 0.5


def test_failing_tests_kill_nothing():
    tests = clean_tests("assert clip(1, 0, 2) == 2\n", "clip")  # wrong on the canonical solution
    s = score_tests(tests, SOLUTION, [OFF], FAST)
    assert (s.valid, s.passes, s.killed) == (True, False, 0) and s.mutation_score is None
    invalid = score_tests(clean_tests("no code here", "clip"), SOLUTION, [OFF], FAST)
    assert (invalid.valid, invalid.passes, invalid.killed) == (False, False, 0)


def test_unittest_style_tests_run_and_kill(tmp_path):
    text = ("import unittest\n\nclass TestClip(unittest.TestCase):\n    def test_upper(self):\n"
            "        self.assertEqual(clip(5, 0, 2), 2)\n")
    code = clean_tests(text, "clip")
    assert code.rstrip().endswith("unittest.main()")
    assert score_tests(code, SOLUTION, [OFF], FAST).killed == 1


def test_hostile_tests_fail_cleanly_in_the_sandbox(tmp_path):
    marker = tmp_path / "pwned"
    shell = clean_tests(f"import os\nos.system('touch {marker}')\nassert clip(1, 0, 2) == 1\n", "clip")
    s = score_tests(shell, SOLUTION, [OFF], FAST)
    assert (s.valid, s.passes, s.killed) == (True, False, 0) and not marker.exists()
    loop = clean_tests("while True:\n    pass\nassert clip(1, 0, 2) == 1\n", "clip")
    assert not score_tests(loop, SOLUTION, [OFF], FAST).passes
    write = clean_tests(f"open({str(marker)!r}, 'w').write('x')\nassert clip(1, 0, 2) == 1\n", "clip")
    assert not score_tests(write, SOLUTION, [], FAST).passes and not marker.exists()


def test_mutants_passing_the_reference_tests_are_screened_out():
    reference = header("clip") + "\ndef check(candidate):\n    assert candidate(5, 0, 2) == 2\n\ncheck(clip)\n"
    screened = screen_mutants([OFF, SWAPPED], reference, FAST)
    assert screened.kept == [0] and screened.survived_reference == [1]


def test_body_of_drops_the_import_header():
    assert body_of(header("clip") + "\nassert clip(1, 0, 2) == 1\n") == "assert clip(1, 0, 2) == 1"


def test_shorten_tests_keeps_whole_lines_and_the_final_call():
    tests = header("clip") + "\ndef check(c):\n    assert c(1, 0, 2) == 1\n    assert c(5, 0, 2) == 2\n\n\ncheck(clip)\n"
    short = shorten_tests(tests, lambda t: t.count("assert") <= 1)
    assert short is not None and short.count("assert") == 1 and short.rstrip().endswith("check(clip)")
    assert parses(short) and "c(1, 0, 2) == 1" in short
    assert shorten_tests(tests, lambda t: False) is None
