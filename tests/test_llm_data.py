"""The data-recipe study (experiments/llm_data.py and its report): which examples each cell
trains on, and the verdict rules of the report."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def ld(experiment_script):
    return experiment_script("llm_data"), experiment_script("llm_data_report")


def _pool():
    rows = []
    for q, cands in {"q1": [("reasoning", "a", -1.0, 2), ("terse", "b", -3.0, 1), ("verbose", "c c c c", -2.0, 8)],
                     "q2": [("reasoning", "d", -2.0, 2), ("verbose", "e e e e e", -0.5, 10), ("self", "f", -4.0, 2)]}.items():
        rows += [{"prompt": q, "response": r, "task": "add", "group": g, "total": t * n, "tokens": n} for g, r, t, n in cands]
    return {"pool": {"pool": rows}}


def test_grape_cells_train_on_their_selection_and_record_the_initial_loss(ld):
    llm_data, _ = ld
    opts = llm_data.Options()
    want = {"grape": ["a", "e e e e e"], "strongest": ["c c c c", "e e e e e"], "longest": ["c c c c", "e e e e e"]}
    for cond, responses in want.items():
        train, chose = llm_data.training_set("grape", cond, 0, _pool(), opts)
        assert [e.response for e in train] == responses
    train, chose = llm_data.training_set("grape", "grape", 0, _pool(), opts)
    assert chose["initial_loss"] == pytest.approx((1.0 * 2 + 0.5 * 10) / 12)  # token-weighted NLL of the chosen
    assert chose["chosen_sources"] == {"reasoning": 1, "verbose": 1}
    assert llm_data.training_set("grape", "base", 0, _pool(), opts) == ([], {})
    assert llm_data.cells("grape", ["base", "grape"], [0, 1]) == [("grape", "base", 0), ("grape", "grape", 0),
                                                                   ("grape", "grape", 1)]


def test_the_verdict_rule_needs_every_interval_on_the_claimed_side(ld):
    _, rep = ld
    better, tie_up, tie_down, worse = (3, 0.1, 0.05, 0.15), (3, 0.02, -0.01, 0.05), (3, -0.02, -0.05, 0.01), (3, -0.1, -0.15, -0.05)
    assert rep.judge([better, tie_up], higher=True) == "reproduced in direction"
    assert rep.judge([better, tie_down], higher=True) == "inconclusive"
    assert rep.judge([better, worse], higher=True) == "not reproduced"
    assert rep.judge([worse], higher=False) == "reproduced in direction"  # lower is better: a negative difference
    assert rep.judge([better], higher=False) == "not reproduced"
    assert rep.judge([(1, 0.1, math.nan, math.nan)], higher=True) == "inconclusive"
    assert rep.combine(["reproduced in direction", "inconclusive"]) == "inconclusive"
    assert rep.combine(["reproduced in direction", "not reproduced"]) == "not reproduced"


def test_the_report_pairs_cells_by_seed(ld, tmp_path):
    _, rep = ld
    for cond, accs in {"grape": [0.5, 0.6, 0.7], "random": [0.4, 0.5, 0.6]}.items():
        for seed, acc in enumerate(accs):
            rec = {"condition": cond, "seed": seed, "accuracy": acc, "train_examples": 2, "options": {},
                   "selection": {"initial_loss": 1.0 if cond == "grape" else 2.0},
                   **{f"test_loss_{s}": 1.0 for s in ("reasoning", "terse", "verbose")}}
            (tmp_path / "grape").mkdir(exist_ok=True)
            (tmp_path / "grape" / f"{cond}_seed{seed}.json").write_text(json.dumps(rec))
    by = rep.load(tmp_path, "grape")
    assert rep.paired(by, "grape", "random", "accuracy")[1] == pytest.approx(0.1)
    assert by["grape"][0]["style_mean_loss"] == 1.0
    text = rep.write_report(tmp_path).read_text()
    assert "held-out accuracy" in text and "**Verdict: reproduced in direction.**" in text
    assert (tmp_path / "summary.csv").read_text().count("\ngrape,") == 6
