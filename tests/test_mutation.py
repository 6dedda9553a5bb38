"""Mutants (fedft.mutation): each kind on hand-written functions, only function bodies are
touched, and over many real functions every mutant parses, differs and is unique, the same for
the same seed."""

from __future__ import annotations

import ast
import bisect
import heapq
import inspect
import textwrap

import pytest

from fedft.mutation import KINDS, mutants

SOURCE = '''
def window(xs, n=3, flag=True):
    """Sum of the first n items; 0 for an empty list."""
    if not xs or n <= 0:
        return 0
    total = 0
    for i in range(len(xs)):
        if i < n and flag:
            total += xs[i] * 2
    return total + len(xs[1:n]) - 1.5 if xs == "x" else total
'''


def _all(source: str, **kw) -> list:
    return mutants(source, 1000, seed=0, **kw)


def test_every_kind_appears_and_each_mutant_is_one_change():
    # Prepare
    original = ast.unparse(ast.parse(SOURCE))
    # Execute
    found = _all(SOURCE)
    # Assert
    assert {m.kind for m in found} == set(KINDS)
    descriptions = {m.description.split(": ", 1)[1] for m in found}
    assert {"< -> <=", "<= -> <", "and -> or", "or -> and", "+ -> -", "- -> +", "* -> //", "== -> !=",
            "not dropped", "range stop + 1", "range stop - 1", "'x' -> ''", "1.5 -> 2.5", "2 -> 1",
            "slice stop + 1", "slice stop - 1"} <= descriptions
    assert {"3 -> 4", "True -> False"}.isdisjoint(descriptions)  # only in the signature's defaults
    for m in found:
        assert ast.unparse(ast.parse(m.source)) != original
    assert len({m.source for m in found}) == len(found)


def test_signature_defaults_and_docstring_are_never_mutated():
    for m in _all(SOURCE):
        tree = ast.parse(m.source)
        fn = tree.body[0]
        assert ast.unparse(fn.args) == "xs, n=3, flag=True"
        assert ast.get_docstring(fn) == "Sum of the first n items; 0 for an empty list."


def test_only_the_named_function_is_mutated():
    src = "def helper(a):\n    return a + 1\n\ndef target(b):\n    return helper(b) * 2\n"
    for m in _all(src, function="target"):
        assert "def helper(a):\n    return a + 1" in m.source
    assert any("helper(a):\n    return a - 1" in m.source for m in _all(src))


def test_the_same_seed_gives_the_same_list_and_another_seed_another_order():
    a, b = mutants(SOURCE, 5, seed=0), mutants(SOURCE, 5, seed=0)
    assert a == b and len(a) == 5
    assert [m.source for m in mutants(SOURCE, 5, seed=1)] != [m.source for m in a]
    assert len({m.kind for m in a}) == 3  # the kinds are taken in turn


def test_a_function_without_mutable_sites_has_no_mutants():
    assert mutants("def f(s):\n    '''Doc 1 2.'''\n    return len(s)\n", 5) == []


def _stdlib_functions() -> list[str]:
    out = []
    for module in (bisect, heapq, textwrap):
        tree = ast.parse(inspect.getsource(module))
        out += [ast.get_source_segment(inspect.getsource(module), n) for n in tree.body
                if isinstance(n, ast.FunctionDef)]
    return out


@pytest.mark.parametrize("seed", [0, 7])
def test_property_mutants_of_real_functions_parse_differ_and_are_unique(seed):
    # A property over every top-level function of three stdlib modules (hypothesis is not installed)
    sources = _stdlib_functions()
    assert len(sources) > 20
    for src in sources:
        original = ast.unparse(ast.parse(src))
        found = mutants(src, 8, seed=seed)
        assert found == mutants(src, 8, seed=seed)
        texts = [ast.unparse(ast.parse(m.source)) for m in found]
        assert original not in texts and len(set(texts)) == len(texts)
        assert all(m.kind in KINDS for m in found)
