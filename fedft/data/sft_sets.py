"""Real, offline SFT datasets as :class:`~fedft.data.sft.SFTExample` lists.

- :func:`chatterbot_pairs`: every consecutive pair of turns in chatterbot-corpus, in all of its
  languages. ``group`` is ``language/topic``, so clients can be partitioned by either.
- :func:`trivia`: the short-answer questions of chatterbot's English trivia file, graded by
  exact match (:class:`fedft.judges.ExactMatchJudge`).
- :func:`humaneval_unit_tests`: the 164 HumanEval problems as "given the function, write its
  unit tests". The reference response is HumanEval's own test, made runnable against
  ``solution.py``.
- :func:`stdlib_code`: docstring→function and function→docstring pairs, mined
  deterministically from this machine's Python standard library.

:func:`split_by_key` gives every dataset the same fixed, seeded train / validation / test split.
It is keyed by a stable name, so an example stays in its split however the list is ordered.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedft.data.sft import SFTExample
from fedft.data.sources import chatterbot_languages
from fedft.errors import ConfigError

UNIT_TEST_INSTRUCTION = "Write Python unit tests, as plain assert statements, for this function:\n\n"
TRIVIA_MAX_WORDS = 4  # [D] a "short answer": at most four words


def _yaml_conversations(path: Path) -> list[list[str]]:
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [[str(t).strip() for t in turns if t is not None]
            for turns in doc.get("conversations") or [] if isinstance(turns, list)]


def chatterbot_pairs(root: Path | str, languages: Sequence[str] | None = None) -> list[SFTExample]:
    """Turn pairs of every conversation in ``languages`` (default: all), in sorted file order."""
    root = Path(root)
    out = []
    for lang in languages or chatterbot_languages(root):
        folder = root / lang
        if not folder.is_dir():
            raise ConfigError(f"chatterbot language {lang!r} not found; valid: {', '.join(chatterbot_languages(root))}")
        for path in sorted(folder.glob("*.yml")):
            for turns in _yaml_conversations(path):
                out.extend(SFTExample(a, b, task="chat", group=f"{lang}/{path.stem}")
                           for a, b in zip(turns[:-1], turns[1:], strict=True) if a and b)
    return out


def trivia(root: Path | str) -> list[SFTExample]:
    """Questions (ending in "?") of chatterbot's English trivia with answers of at most
    ``TRIVIA_MAX_WORDS`` words."""
    out = []
    for turns in _yaml_conversations(Path(root) / "english" / "trivia.yml"):
        if len(turns) >= 2 and turns[0].endswith("?") and 0 < len(turns[1].split()) <= TRIVIA_MAX_WORDS:
            out.append(SFTExample(turns[0], turns[1].rstrip("."), task="trivia", group="english/trivia"))
    return out


def load_humaneval(root: Path | str) -> list[dict[str, Any]]:
    """The HumanEval problems: task_id, prompt, canonical_solution, test, entry_point."""
    path = Path(root) / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def solution_header(entry_point: str) -> str:
    """The imports a test file against ``solution.py`` starts with: the star import brings the
    helpers some tests use (HumanEval/32, 38, 50), the second names the function under test."""
    return f"from solution import *  # noqa: F403\nfrom solution import {entry_point}\n"


def reference_tests(problem: dict[str, Any]) -> str:
    """HumanEval's test as a runnable file against ``solution.py``."""
    ep = problem["entry_point"]
    return f"{solution_header(ep)}\n{problem['test'].strip()}\n\n\ncheck({ep})\n"


def solution_source(problem: dict[str, Any]) -> str:
    """The complete function: HumanEval's prompt (signature, docstring, imports) + solution."""
    return problem["prompt"] + problem["canonical_solution"]


def humaneval_unit_tests(root: Path | str) -> list[SFTExample]:
    """Function -> unit tests, one example per problem (group = task id)."""
    return [SFTExample(UNIT_TEST_INSTRUCTION + solution_source(p).strip() + "\n", reference_tests(p),
                       task="unit_tests", group=p["task_id"]) for p in load_humaneval(root)]


@dataclass(frozen=True)
class StdlibFunction:
    module: str  # dotted module name
    name: str  # qualified name inside the module
    signature: str  # "def f(a, b=1):"
    docstring: str
    body: str  # the function's source without its docstring


_SKIP_DIRS = {"test", "tests", "idlelib", "turtledemo", "site-packages", "lib2to3", "tkinter", "ensurepip",
              "__pycache__", "config-3.11-x86_64-linux-gnu"}


def _stdlib_files(stdlib: Path) -> list[Path]:
    return sorted(p for p in stdlib.rglob("*.py")
                  if not (set(p.relative_to(stdlib).parts[:-1]) & _SKIP_DIRS) and not p.name.startswith("test_"))


def mine_stdlib(stdlib: Path | str | None = None, min_doc_words: int = 4, max_lines: int = 40) -> list[StdlibFunction]:
    """Top-level functions and methods with a docstring of at least ``min_doc_words`` words and
    at most ``max_lines`` lines, from every module of the standard library (sorted walk)."""
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    out = []
    for path in _stdlib_files(stdlib):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
        lines = source.splitlines()
        scopes: list[tuple[str, Sequence[ast.stmt]]] = [("", tree.body)]
        while scopes:
            prefix, body = scopes.pop(0)
            for node in body:
                if isinstance(node, ast.ClassDef) and not prefix:
                    scopes.append((node.name + ".", node.body))
                if not isinstance(node, ast.FunctionDef) or node.end_lineno is None:
                    continue
                doc = ast.get_docstring(node)
                n_lines = node.end_lineno - node.lineno + 1
                if not doc or len(doc.split()) < min_doc_words or n_lines > max_lines or node.decorator_list:
                    continue
                first = node.body[0]  # the docstring expression
                if first.end_lineno is None or len(node.body) < 2:
                    continue
                head = lines[node.lineno - 1: first.lineno - 1]  # the signature, before the docstring
                text = textwrap.dedent("\n".join(head + lines[first.end_lineno: node.end_lineno])).splitlines()
                signature, body = "\n".join(text[: len(head)]).rstrip(), "\n".join(text[len(head):])
                out.append(StdlibFunction(module, prefix + node.name, signature, doc, body))
    return out


def stdlib_code(stdlib: Path | str | None = None) -> tuple[list[SFTExample], str]:
    """docstring -> function (task ``doc2func``) and function -> docstring (``func2doc``) pairs,
    group = module; with the Python version they were mined from."""
    examples = []
    for f in mine_stdlib(stdlib):
        key = f"{f.module}.{f.name}"
        examples.append(SFTExample(f"Write the Python function `{f.name.split('.')[-1]}` described by this "
                                   f"docstring:\n\n{f.docstring}\n\n{f.signature}", f.body.rstrip() + "\n",
                                   task="doc2func", group=key))
        examples.append(SFTExample(f"Write the docstring of this Python function:\n\n{f.signature}\n{f.body}",
                                   f.docstring, task="func2doc", group=key))
    return examples, sys.version.split()[0]


def split_by_key(items: Sequence[SFTExample], key: Callable[[SFTExample], str] = lambda e: e.group,
                 fractions: tuple[float, float] = (0.1, 0.1), seed: int = 0) -> dict[str, list[SFTExample]]:
    """{"train", "val", "test"} by a seeded hash of each example's key (default: its group), so
    every example of one key lands in the same split; ``fractions`` = (val, test)."""
    val, test = fractions
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"split fractions (val, test) must be >= 0 and sum below 1, got {fractions}")
    out: dict[str, list[SFTExample]] = {"train": [], "val": [], "test": []}
    for ex in items:
        u = int(hashlib.sha256(f"{seed}:{key(ex)}".encode()).hexdigest()[:12], 16) / 16**12
        out["test" if u < test else "val" if u < test + val else "train"].append(ex)
    return out
