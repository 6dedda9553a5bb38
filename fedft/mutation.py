"""Deterministic, seeded mutants of a Python function's source, for mutation testing of unit tests.

A mutant changes one node of the function's body (never its signature, default arguments,
decorators, annotations or docstring):

- ``operator``: ``+`` <-> ``-``, ``*`` <-> ``//``, ``/`` -> ``*``, ``%`` -> ``//``, ``**`` -> ``*``
  (also in augmented assignments); ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``, ``in`` <->
  ``not in``, ``is`` <-> ``is not``; ``and`` <-> ``or``; a unary ``not`` or ``-`` dropped; calls of
  the builtins ``max`` <-> ``min`` and ``any`` <-> ``all``;
- ``off_by_one``: an integer constant plus or minus one (so ``range(1, n)`` and ``s[:3]`` too),
  and ``+ 1`` / ``- 1`` on a non-constant ``range`` stop or slice bound (``range(len(x))``);
- ``constant``: an integer to 0 (1 when it was 0), a float to 0.0 and to itself + 1.0 (1.0 when
  it was 0), a string to ``""`` (``"x"`` when it was empty), ``True`` <-> ``False``.

:func:`mutants` draws from the three kinds in turn (each kind's sites in a seeded order), so a
handful of mutants mixes the kinds. Each mutant is the mutated tree written back with
``ast.unparse``: it parses, differs from ``ast.unparse`` of the original, and no two are equal.
The same source, ``n`` and seed give the same list. Strings inside f-strings are not mutated
(their parts are not free-standing literals).
"""

from __future__ import annotations

import ast
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KINDS = ("operator", "off_by_one", "constant")

_BINOP: dict[type, type] = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
                            ast.Div: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
_CMPOP: dict[type, type] = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
                            ast.IsNot: ast.Is}
_BOOLOP: dict[type, type] = {ast.And: ast.Or, ast.Or: ast.And}
_CALLS = {"max": "min", "min": "max", "any": "all", "all": "any"}  # builtins swapped by name
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Div: "/", ast.Mod: "%", ast.Pow: "**",
           ast.Lt: "<",
           ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
           ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.And: "and", ast.Or: "or"}


@dataclass(frozen=True)
class Mutant:
    kind: str  # one of KINDS
    description: str  # e.g. "line 7: < -> <="
    source: str  # the whole mutated module, ast.unparse'd


@dataclass
class _Site:
    kind: str
    description: str
    apply: Callable[[], None]  # mutates the tree the site was found in


def _body(stmts: list[ast.stmt]) -> list[ast.stmt]:
    """A function or class body without its docstring."""
    first = stmts[0] if stmts else None
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    return stmts[1:] if is_doc else stmts


def _walk(node: ast.AST, parent: ast.AST) -> Iterator[tuple[ast.AST, ast.AST]]:
    """Pre-order walk of what may be mutated: bodies of nested functions and classes (not their
    signatures, decorators or docstrings), no annotations, no f-string parts."""
    yield node, parent
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        children: list[ast.AST] = list(_body(node.body))
    elif isinstance(node, ast.Lambda):
        children = [node.body]
    elif isinstance(node, ast.JoinedStr):
        children = []
    elif isinstance(node, ast.AnnAssign):
        children = [c for c in (node.target, node.value) if c is not None]
    elif isinstance(node, ast.arg):
        children = []
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _walk(child, node)


def _functions(tree: ast.Module, function: str | None) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions whose bodies are mutated: ``function`` (any depth), else every top-level
    function and method."""
    defs = (ast.FunctionDef, ast.AsyncFunctionDef)
    if function is not None:
        return [n for n in ast.walk(tree) if isinstance(n, defs) and n.name == function]
    out = []
    for node in tree.body:
        if isinstance(node, defs):
            out.append(node)
        elif isinstance(node, ast.ClassDef):
            out.extend(n for n in node.body if isinstance(n, defs))
    return out


def _swap(node: ast.AST, attr: str, table: dict[type, type], line: int, index: int | None = None) -> _Site | None:
    old = getattr(node, attr) if index is None else getattr(node, attr)[index]
    new = table.get(type(old))
    if new is None:
        return None

    def apply() -> None:
        if index is None:
            setattr(node, attr, new())
        else:
            getattr(node, attr)[index] = new()

    return _Site("operator", f"line {line}: {_SYMBOL[type(old)]} -> {_SYMBOL[new]}", apply)


def _set_value(node: ast.Constant, kind: str, value: object) -> _Site:
    def apply() -> None:
        node.value = value

    return _Site(kind, f"line {node.lineno}: {node.value!r} -> {value!r}", apply)


def _constant_sites(node: ast.Constant) -> list[_Site]:
    v = node.value
    if isinstance(v, bool):
        return [_set_value(node, "constant", not v)]
    if isinstance(v, int):
        return [_set_value(node, "off_by_one", v + 1), _set_value(node, "off_by_one", v - 1),
                _set_value(node, "constant", 0 if v else 1)]
    if isinstance(v, float):
        return [_set_value(node, "constant", v + 1.0)] + ([_set_value(node, "constant", 0.0)] if v else [])
    if isinstance(v, str):
        return [_set_value(node, "constant", "" if v else "x")]
    return []


def _replace(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    """Put ``new`` where ``parent`` holds ``old`` (a field or a list item)."""
    for name, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, name, new)
        elif isinstance(value, list):
            value[:] = [new if v is old else v for v in value]


def _shift(parent: ast.AST, old: ast.AST | None, line: int, what: str) -> list[_Site]:
    """``+ 1`` and ``- 1`` on a non-constant expression ``old`` held by ``parent``."""
    if old is None or isinstance(old, ast.Constant):
        return []  # constants are already shifted by _constant_sites
    return [_Site("off_by_one", f"line {line}: {what} {sign} 1",
                  lambda op=op: _replace(parent, old, ast.BinOp(left=old, op=op(), right=ast.Constant(1))))
            for op, sign in ((ast.Add, "+"), (ast.Sub, "-"))]


def _unary_sites(node: ast.UnaryOp, parent: ast.AST) -> list[_Site]:
    """Drop a ``not`` or a unary ``-``: the operand replaces the UnaryOp in its parent."""
    if not isinstance(node.op, (ast.Not, ast.USub)) or isinstance(node.operand, ast.Constant):
        return []  # -1 is a constant: shifted and zeroed by _constant_sites
    symbol = "not" if isinstance(node.op, ast.Not) else "-"
    return [_Site("operator", f"line {node.lineno}: {symbol} dropped", lambda: _replace(parent, node, node.operand))]


def _call_sites(node: ast.Call) -> list[_Site]:
    func = node.func
    if not isinstance(func, ast.Name) or func.id not in _CALLS:
        return []
    new = _CALLS[func.id]

    def apply() -> None:
        func.id = new

    return [_Site("operator", f"line {node.lineno}: {func.id}() -> {new}()", apply)]


def _node_sites(node: ast.AST, parent: ast.AST) -> list[_Site]:
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.UnaryOp):
        return _unary_sites(node, parent)
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        return [s for s in [_swap(node, "op", _BINOP, line)] if s]
    if isinstance(node, ast.BoolOp):
        return [s for s in [_swap(node, "op", _BOOLOP, line)] if s]
    if isinstance(node, ast.Compare):
        return [s for i in range(len(node.ops)) if (s := _swap(node, "ops", _CMPOP, line, i))]
    if isinstance(node, ast.Constant):
        return _constant_sites(node)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" and node.args:
        return _shift(node, node.args[min(len(node.args), 2) - 1], line, "range stop") + _call_sites(node)
    if isinstance(node, ast.Call):
        return _call_sites(node)
    if isinstance(node, ast.Slice):
        return _shift(node, node.lower, line, "slice start") + _shift(node, node.upper, line, "slice stop")
    return []


def sites(tree: ast.Module, function: str | None = None) -> list[_Site]:
    """Every possible single mutation of ``tree``, in a fixed order (the same for a re-parse)."""
    out: list[_Site] = []
    for fn in _functions(tree, function):
        for stmt in _body(fn.body):
            for node, parent in _walk(stmt, fn):
                out.extend(_node_sites(node, parent))
    return out


def _order(source: str, function: str | None, seed: int) -> list[int]:
    """Site indices: each kind's sites shuffled, then taken from the kinds in turn."""
    rng = random.Random(seed)
    by_kind: dict[str, list[int]] = {k: [] for k in KINDS}
    for i, s in enumerate(sites(ast.parse(source), function)):
        by_kind[s.kind].append(i)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    for k in kinds:
        rng.shuffle(by_kind[k])
    order = []
    while any(by_kind.values()):
        for k in kinds:
            if by_kind[k]:
                order.append(by_kind[k].pop(0))
    return order


def mutants(source: str, n: int, seed: int = 0, function: str | None = None) -> list[Mutant]:
    """Up to ``n`` distinct mutants of the functions in ``source`` (only ``function`` when given);
    fewer when the functions offer fewer distinct mutations."""
    original = ast.unparse(ast.parse(source))
    seen = {original}
    out: list[Mutant] = []
    for i in _order(source, function, seed):
        if len(out) >= n:
            break
        tree = ast.parse(source)  # a fresh tree per mutant: the sites mutate in place
        site = sites(tree, function)[i]
        site.apply()
        text = ast.unparse(ast.fix_missing_locations(tree))
        try:
            compile(text, "<mutant>", "exec")
        except (SyntaxError, ValueError):
            continue
        if text not in seen:
            seen.add(text)
            out.append(Mutant(site.kind, site.description, text + "\n"))
    return out
