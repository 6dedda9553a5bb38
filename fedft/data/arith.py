"""Arithmetic word problems with the same correct answer written in several styles (seeded).

The data of the GRAPE and S3FT experiments: a response style is what those papers are about
(whose "voice" the SFT targets are in), so every problem has one correct solution per style:

- ``reasoning``: one sentence of reasoning with the equation, then "The answer is N.";
- ``terse``: the number alone;
- ``verbose``: a "strong teacher" solution: numbered steps, restated facts, a bold final answer.

Problems are one-step (add, subtract, multiply, share equally) with small numbers, so a 135M
model solves some of them and its own samples are a fourth, genuinely different source (added by
the recipes, not here). Datasets: ``arith`` (one example per problem, ``reasoning`` style, the
generative evaluation set) and ``arith-candidates`` (every style, ``group`` = the style). Both
split by problem with the same keyed hash, so a problem is in the same split in each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedft.data.sft import SFTExample

STYLES = ("reasoning", "terse", "verbose")
N_PROBLEMS = 600  # [D]
TEST_FRACTION = 0.2  # [D]
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jules", "Kofi", "Lena")
ITEMS = ("apples", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    equation: str  # "12 + 7 = 19"
    facts: tuple[str, str]  # the two quantities restated, for the verbose style
    op: str  # add, subtract, multiply, divide


def problem(rng: np.random.Generator) -> Problem:
    """One seeded word problem."""
    name, item = NAMES[rng.integers(len(NAMES))], ITEMS[rng.integers(len(ITEMS))]
    op = ("add", "subtract", "multiply", "divide")[rng.integers(4)]
    a, b = int(rng.integers(2, 30)), int(rng.integers(2, 12))
    if op == "add":
        q = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        return Problem(q, a + b, f"{a} + {b} = {a + b}", (f"{name} starts with {a} {item}", f"{name} gets {b} more"), op)
    if op == "subtract":
        a += b
        q = f"{name} has {a} {item} and gives {b} of them away. How many {item} are left?"
        return Problem(q, a - b, f"{a} - {b} = {a - b}", (f"{name} starts with {a} {item}", f"{name} gives away {b}"), op)
    if op == "multiply":
        a = a % 9 + 2
        q = f"{name} has {a} bags with {b} {item} in each bag. How many {item} are there in total?"
        return Problem(q, a * b, f"{a} x {b} = {a * b}", (f"there are {a} bags", f"each bag holds {b} {item}"), op)
    total = a * b
    q = f"{name} shares {total} {item} equally among {b} friends. How many {item} does each friend get?"
    return Problem(q, a, f"{total} / {b} = {a}", (f"there are {total} {item}", f"they are shared among {b} friends"), op)


def solution(p: Problem, style: str) -> str:
    """The correct answer to ``p`` written in ``style``."""
    if style == "terse":
        return str(p.answer)
    if style == "reasoning":
        return f"We compute {p.equation}. The answer is {p.answer}."
    if style == "verbose":
        return ("Let's solve this step by step.\n\n"
                f"Step 1: Identify the known quantities. We know that {p.facts[0]}, and {p.facts[1]}.\n"
                f"Step 2: Choose the operation. This is a {p.op} problem, so we {p.op} the numbers.\n"
                f"Step 3: Calculate. {p.equation}.\n\n"
                f"Therefore, the final answer is **{p.answer}**.")
    raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")


def problems(n: int = N_PROBLEMS, seed: int = 0) -> list[Problem]:
    """``n`` distinct problems (the same list for the same seed)."""
    rng, out, seen = np.random.default_rng(seed), [], set()
    while len(out) < n:
        p = problem(rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def examples(styles: tuple[str, ...] = STYLES, n: int = N_PROBLEMS) -> list[SFTExample]:
    """One SFT example per problem and style (``task`` = the operation, ``group`` = the style)."""
    return [SFTExample(p.question, solution(p, s), task=p.op, group=s) for p in problems(n) for s in styles]
