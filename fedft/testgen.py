"""Evaluating generated unit tests for one function: clean them, run them on the canonical
solution and on its mutants, all in the sandbox (:func:`fedft.sandbox.run_python`, the only
place generated code runs).

Cleaning (:func:`clean_tests`) makes a completion into a runnable test file beside
``solution.py``:

1. the contents of markdown code fences, when there are any (all blocks, joined);
2. the longest prefix of lines that parses (a completion cut by the token limit loses its
   trailing incomplete statement);
3. top-level re-definitions of the function under test and imports of it from any module but
   ``solution`` are dropped: the prompt never names the module, and tests of a pasted copy
   would test the copy, not the solution;
4. ``from solution import *`` and ``from solution import <entry_point>`` at the top;
5. tests that are defined but never run get run: ``check(<entry_point>)`` when ``check`` is
   defined and never called (HumanEval's own style), a call of each argument-free ``test*``
   function that is never called (pytest style), ``unittest.main()`` for ``TestCase`` classes.

:func:`is_valid` asks more than "parses": the cleaned file always parses (step 2), so it must
also contain an assertion (``assert`` or a ``self.assert*`` call); an empty or assertion-free
file passes everywhere and kills nothing.

Scoring (:func:`score_tests`): the tests *pass* when they run without error on the canonical
solution; a mutant is *killed* when tests that pass on the canonical solution fail (or time out)
on it. Kills are only counted for passing tests, so failing tests cannot kill by failing.

Equivalent mutants: a mutant that changes no observable behaviour cannot be killed by any
test, and deciding equivalence is undecidable in general. :func:`screen_mutants` uses
HumanEval's own reference tests as the oracle: mutants that pass them are reported separately
(``survived_reference``) and left out of the mutation score's denominator. This also drops
mutants that are merely not equivalent in ways the reference tests miss, so the score reads
"killed / mutants the reference tests kill", a score the reference tests themselves reach 1.0 on.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedft.data.sft_sets import solution_header
from fedft.sandbox import Limits, run_python

# [D] HumanEval solutions and their tests run in milliseconds; a mutant that loops forever is
# stopped after 2 CPU seconds (killed: the tests did not pass on it)
DEFAULT_LIMITS = Limits(timeout_s=5.0, cpu_s=2, memory_mb=512)

_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def strip_fences(text: str) -> str:
    """The code of every markdown fenced block, joined; the text itself when there is none."""
    blocks = _FENCE.findall(text)
    return "\n\n".join(b.strip("\n") for b in blocks) if blocks else text


def parses(code: str) -> bool:
    """Whether ``code`` is syntactically valid Python."""
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return False
    return True


def longest_parsing_prefix(code: str) -> str:
    """The longest prefix of whole lines of ``code`` that parses ("" at worst)."""
    lines = code.splitlines()
    for k in range(len(lines), 0, -1):
        text = "\n".join(lines[:k])
        if parses(text):
            return text
    return ""


header = solution_header  # the imports every test file starts with, as the reference tests do


def _drop_copies(code: str, entry_point: str) -> str:
    """Without top-level definitions of ``entry_point`` and imports of it from other modules."""
    tree = ast.parse(code)
    drop: set[int] = set()
    for node in tree.body:
        copy = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point
        foreign = isinstance(node, ast.ImportFrom) and node.module != "solution" \
            and any(a.name == entry_point for a in node.names)
        if copy or foreign:
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            drop.update(range(first, (node.end_lineno or node.lineno) + 1))
    return "\n".join(line for i, line in enumerate(code.splitlines(), 1) if i not in drop)


def _runners(tree: ast.Module, entry_point: str) -> list[str]:
    """Lines that run tests defined at the top level but never called."""
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    called |= {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name not in called:
            args = node.args
            if node.name == "check" and len(args.args) == 1:
                out.append(f"check({entry_point})")
            elif node.name.startswith("test") and not args.args and not args.posonlyargs:
                out.append(f"{node.name}()")
    testcase = any(isinstance(n, ast.ClassDef) and any(ast.unparse(b).endswith("TestCase") for b in n.bases)
                   for n in tree.body)
    if testcase and "main" not in called:
        out += ["import unittest", "unittest.main()"]
    return out


def clean_tests(completion: str, entry_point: str) -> str:
    """A generated completion as a runnable test file for ``solution.py`` (see the module doc)."""
    code = _drop_copies(longest_parsing_prefix(strip_fences(completion)), entry_point).strip("\n")
    top = header(entry_point)
    body = code[len(top):].lstrip("\n") if code.startswith(top) else code
    runners = _runners(ast.parse(body), entry_point)
    parts = [top, body] + (["\n".join(runners)] if runners else [])
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p.strip())


def shorten_tests(tests: str, fits: Callable[[str], bool]) -> str | None:
    """The longest test file made of a whole-line prefix of ``tests`` that parses, then its last
    line (the call that runs the tests, as in HumanEval's), for which ``fits`` holds; None if none."""
    lines = tests.rstrip("\n").splitlines()
    for k in range(len(lines) - 1, 0, -1):
        text = longest_parsing_prefix("\n".join(lines[:k])) + "\n\n\n" + lines[-1] + "\n"
        if fits(text):
            return text
    return None


def body_of(tests: str) -> str:
    """A test file without the import lines of :func:`header` (for text similarity)."""
    return "\n".join(line for line in tests.splitlines() if not line.startswith("from solution import")).strip()


def is_valid(code: str) -> bool:
    """The code parses and asserts something (``assert`` or a ``*.assert*(...)`` call)."""
    if not parses(code):
        return False
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("assert"):
            return True
    return False


@dataclass(frozen=True)
class TestScore:
    """Generated tests of one problem against its solution and mutants."""

    __test__ = False  # not a pytest class

    valid: bool  # is_valid
    passes: bool  # valid and they run OK on the canonical solution
    mutants: int  # mutants they were run against (the non-equivalent ones)
    killed: int  # of those, the ones they fail on (0 unless passes)

    @property
    def mutation_score(self) -> float | None:
        """killed / mutants for passing tests; None when they fail or there is no mutant."""
        return self.killed / self.mutants if self.passes and self.mutants else None


def score_tests(tests: str, solution: str, mutant_sources: Sequence[str],
                limits: Limits = DEFAULT_LIMITS) -> TestScore:
    """Run ``tests`` (a cleaned test file) on the canonical ``solution`` and, if they pass there,
    on each mutant source (each as ``solution.py`` in its own sandbox run)."""
    if not is_valid(tests):
        return TestScore(False, False, len(mutant_sources), 0)
    if not run_python(tests, limits, {"solution.py": solution}).ok:
        return TestScore(True, False, len(mutant_sources), 0)
    killed = sum(not run_python(tests, limits, {"solution.py": m}).ok for m in mutant_sources)
    return TestScore(True, True, len(mutant_sources), killed)


@dataclass(frozen=True)
class Screened:
    """Indices of the mutants the reference tests kill, and of those that survive them."""

    kept: list[int]
    survived_reference: list[int]


def screen_mutants(mutant_sources: Sequence[str], reference_tests: str,
                   limits: Limits = DEFAULT_LIMITS) -> Screened:
    """Split mutants by HumanEval's reference tests: survivors look equivalent and are dropped
    from the mutation score's denominator (see the module doc)."""
    kept, survived = [], []
    for i, m in enumerate(mutant_sources):
        (survived if run_python(reference_tests, limits, {"solution.py": m}).ok else kept).append(i)
    return Screened(kept, survived)
