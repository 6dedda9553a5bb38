"""The GeMQuAD study (experiments/llm_data_gemquad.py and its report): passages, a cell's rounds
with fake students, the labels' precision and the report's verdicts."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from fedft.qa import Prediction, QAItem


@pytest.fixture(scope="module")
def gq(experiment_script):
    return experiment_script("llm_data_gemquad"), experiment_script("llm_data_gemquad_report")


def test_passages_are_body_paragraphs_of_the_right_length_once(gq):
    m, _ = gq
    long, short = "x" * 300, "too short"
    articles = [f"Headline {'h' * 300}\n{long}\n{short}\n\n{long}", f"Other\n{'y' * 250}"]
    assert m.paragraphs(articles) == [long, "y" * 250]  # headline skipped, short dropped, repeat kept once
    assert m.paragraphs(articles, lo=1, hi=9) == [short]


CTX = "Profits rose, said chief executive Richard Parsons on Friday in New York."


def _silver() -> list[QAItem]:
    return [QAItem(CTX, f"q{i}", a, CTX.index(a), f"silver/{i}") for i, a in
            enumerate(["Richard Parsons", "Friday", "New York", "Profits"])]


def test_a_filtered_cell_logs_every_rounds_student_and_what_it_kept(gq, monkeypatch, tmp_path):
    import fedft.qa as qa
    import fedft.recipes.gemquad as recipe

    m, _ = gq
    gold = [QAItem(CTX, "Who?", "Richard Parsons", CTX.index("Richard Parsons"), "gold/0")]
    monkeypatch.setattr(m, "prepare", lambda opts: {"gold": gold, "eval": gold, "silver": _silver()})
    agree = {0: {"q0", "q1", "q2"}, 3: {"q0", "q2"}}  # the student trained on k silver items -> what it answers
    monkeypatch.setattr(recipe, "student_trainer", lambda o, seed, progress=True: lambda s, g: (len(s), None))
    monkeypatch.setattr(recipe, "student_predictor", lambda o: lambda st, items: [
        Prediction(it.answer if it.question in agree.get(st[0], set()) else "?", 0, 0.0) for it in items])
    monkeypatch.setattr(qa, "evaluate_student", lambda st, tok, items, **kw: {"em": 10.0 * st, "f1": 0.0, "n": 1})
    rec = m.run_cell("filtered", 0, m.Options(rounds=2, out=str(tmp_path)))
    assert [r["silver"] for r in rec["rounds"]] == [0, 3, 2]
    assert [r.get("kept") for r in rec["rounds"]] == [None, [0, 1, 2], [0, 2]]
    assert [r["em"] for r in rec["rounds"]] == [0.0, 30.0, 20.0] and rec["em"] == 20.0
    flat = m.run_cell("unfiltered", 0, m.Options(out=str(tmp_path)))
    assert [r["silver"] for r in flat["rounds"]] == [4] and flat["em"] == 40.0


def test_precision_counts_only_labelled_items_and_the_wilson_interval_brackets_it(gq):
    _, r = gq
    silver = {"items": [asdict(it) for it in _silver()]}
    flags = r.label_of(silver, {"labels": {"silver/0": True, "silver/1": False, "silver/2": True}})
    assert flags == [True, False, True, None]
    assert r.precision_of([0, 1, 2, 3], flags) == (2, 3) and r.precision_of([3], flags) == (0, 0)
    lo, hi = r.wilson(8, 10)
    assert 0.4 < lo < 0.8 < hi < 1.0
    assert all(math.isnan(x) for x in r.wilson(0, 0))  # no items


def _cell(out: Path, condition: str, seed: int, rounds: list[dict]) -> None:
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rec = {"condition": condition, "seed": seed, "options": {"out": str(out)}, "rounds": rounds}
    (out / "cells" / f"{condition}_seed{seed}.json").write_text(json.dumps(rec))


def _student(em: float, silver: int, **extra) -> dict:
    return {"em": em, "f1": em + 10, "silver": silver, "gold": 2, "gold_fit": 90.0, "train_s": 1.0, **extra}


def test_the_report_orders_conditions_and_decides_each_claim(gq, tmp_path):
    _, r = gq
    for s in range(3):
        _cell(tmp_path, "filtered", s, [_student(10 + s, 0, round=0),
                                        _student(30 + s, 2, round=1, accepted=2, kept=[0, 2]),
                                        _student(40 + s, 3, round=2, accepted=3, kept=[0, 1, 2])])
        _cell(tmp_path, "unfiltered", s, [_student(20 + 2 * s, 4)])
    silver = {"stats": {"generated": 4, "parsed": 4, "shot_copies": 0, "verbatim": 4, "unique": 4}, "seconds": 1.0,
              "items": [asdict(it) for it in _silver()]}
    (tmp_path / "silver.json").write_text(json.dumps(silver))
    (tmp_path / "silver_labels.json").write_text(json.dumps(
        {"how": "test", "labels": {"silver/0": True, "silver/1": True, "silver/2": True, "silver/3": False}}))
    by, rounds = r.load(tmp_path)
    assert sorted(by) == ["filtered-k1", "filtered-k2", "gold-only", "unfiltered"]
    text = r.write_report(tmp_path).read_text()
    cards = text.split("### ")
    assert "Verdict: reproduced in direction" in cards[1]  # 40+s > 20+2s > 10+s on every seed
    assert "Verdict: inconclusive" in cards[2]  # 3 of 4 labelled items: too few to separate
    assert "Verdict: reproduced in direction" in cards[3]  # 3 accepted in round 2, 2 in round 1
    assert "| 2 | 3, 3, 3 |" in text and (tmp_path / "summary.csv").read_text().count("\n") == 13
