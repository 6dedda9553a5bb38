"""The PEFT unit-test study runner (experiments/peft_unit_tests.py) on a tiny random Llama and two
hand-written problems: one cell end to end, the scoring with known tests, the reference-test
shortening, and the report's verdict rules on fabricated cells."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fedft.data.sft import SFTExample, render
from fedft.data.sft_sets import UNIT_TEST_INSTRUCTION, reference_tests, solution_source
from fedft.model.tiny import tiny_chat_tokenizer

pytestmark = pytest.mark.usefixtures("_one_thread")  # tiny models: one thread (conftest.py)
ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = {
    "T/0": {"task_id": "T/0", "entry_point": "add", "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
            "canonical_solution": "    return a + b\n",
            "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"},
    "T/1": {"task_id": "T/1", "entry_point": "clip", "prompt": 'def clip(x, lo, hi):\n    """Clip x to lo and hi."""\n',
            "canonical_solution": "    return max(lo, min(x, hi))\n",
            "test": "def check(candidate):\n    assert candidate(5, 0, 2) == 2\n    assert candidate(-1, 0, 2) == 0\n"},
}
EXAMPLES = [SFTExample(UNIT_TEST_INSTRUCTION + solution_source(p), reference_tests(p), "unit_tests", tid)
            for tid, p in PROBLEMS.items()]
FORGET = [SFTExample("Write the Python function `inc` described by this docstring:\n\nAdd one.\n\ndef inc(x):",
                     "    return x + 1\n", "doc2func", "m.inc")]
TOK = tiny_chat_tokenizer([e.prompt + " " + e.response for e in EXAMPLES + FORGET])


def _runner():
    """The runner and its report module, imported as the script imports them (experiments/ on the path)."""
    if str(ROOT / "experiments") not in sys.path:
        sys.path.insert(0, str(ROOT / "experiments"))
    import peft_unit_tests
    import peft_unit_tests_report

    return peft_unit_tests, peft_unit_tests_report


@pytest.fixture(scope="module")
def put():
    return _runner()[0]


@pytest.fixture(scope="module")
def rep():
    return _runner()[1]


@pytest.fixture(scope="module")
def data(put):
    return put.StudyData(train=EXAMPLES * 4, test=EXAMPLES, problems=PROBLEMS,
                         mutants={tid: put._mutants_for(p) for tid, p in PROBLEMS.items()}, forget=FORGET)


@pytest.fixture
def tiny(put, monkeypatch, tmp_path):
    from fedft.model.build import build_model

    assert len(TOK) <= 99  # the tiny Llama's vocabulary
    monkeypatch.setattr(put, "build", lambda cfg: (build_model(cfg, num_labels=0)[0], TOK))
    return put.Options(model="tiny-llama", max_length=64, max_new_tokens=4, gen_batch=2, out=str(tmp_path))


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt_tuning", "full_ft"])
def test_a_cell_trains_generates_and_scores(put, data, tiny, method):
    rec = put.run_cell(method, 0, tiny, data)
    assert 0 < rec["trainable_params"] <= rec["total_params"] and rec["train_steps"] == 2
    assert (rec["trainable_params"] == rec["total_params"]) == (method == "full_ft")
    assert math.isfinite(rec["train_loss"]) and math.isfinite(rec["test_loss"]) and math.isfinite(rec["stdlib_loss"])
    assert [r["task_id"] for r in rec["rows"]] == ["T/0", "T/1"] and len(rec["samples"]) == 2
    assert 0 <= rec["pass_rate"] <= rec["validity"] <= 1 and rec["peak_rss_mb"] > 0
    assert f"train.lr={put.LR[method]}" in rec["overrides"] and set(put.METHOD_SETTINGS[method]) <= set(rec["overrides"])
    json.dumps(rec)  # the record is what the cell writes


def test_the_reference_tests_as_generations_pass_and_kill_every_screened_mutant(put, data, tiny, monkeypatch):
    refs = [reference_tests(PROBLEMS[e.group]) for e in EXAMPLES]
    monkeypatch.setattr(put, "generate_tests", lambda model, tok, examples, opts: (refs, 8))
    rec = put.run_cell("base", 0, tiny, data)
    assert rec["trainable_params"] == 0 and rec["train_steps"] == 0
    assert rec["validity"] == rec["pass_rate"] == rec["parse_rate"] == 1.0
    assert rec["mutation_score"] == 1.0 and rec["bleu"] == pytest.approx(100.0)
    kept = sum(not m["survived_reference"] for ms in data.mutants.values() for m in ms)
    assert sum(r["mutants"] for r in rec["rows"]) == kept > 0


def test_a_long_reference_is_cut_at_whole_lines_and_keeps_its_call(put):
    p = dict(PROBLEMS["T/0"], test="def check(candidate):\n" + "".join(
        f"    assert candidate({i}, 1) == {i + 1}\n" for i in range(40)))
    ex = SFTExample(UNIT_TEST_INSTRUCTION + solution_source(p), reference_tests(p), "unit_tests", "T/0")
    tok = tiny_chat_tokenizer([ex.prompt + " " + ex.response])
    short = put.fit(ex, tok, 120)
    prompt, response = render(short, tok)
    assert len(prompt) + len(response) <= 120 and short.response.rstrip().endswith("check(add)")
    assert short.response.startswith("from solution import") and "candidate(0, 1) == 1" in short.response
    compile(short.response, "<tests>", "exec")
    assert put.fit(EXAMPLES[0], TOK, 500) is EXAMPLES[0]


def _cell(method, seed, pass_rate, mut, stdlib, rss, params):
    return {"method": method, "seed": seed, "pass_rate": pass_rate, "mutation_score": mut, "stdlib_loss": stdlib,
            "peak_rss_mb": rss, "trainable_params": params, "total_params": 10**6, "train_s": 10.0, "eval_s": 5.0,
            "train_examples": 8, "test_problems": 2, "options": {**put_options()}}


def put_options():
    return {"model": "tiny-llama", "epochs": 1, "batch_size": 4, "max_length": 384, "max_new_tokens": 192,
            "gen_batch": 8, "limit_train": 0, "limit_test": 0, "threads": 0, "out": "x"}


def test_the_report_computes_intervals_and_verdicts_by_its_rules(put, rep, tmp_path):
    cells = [_cell("base", 0, 0.1, 0.2, 1.0, 900, 0)]
    for s, d in enumerate((-0.01, 0.0, 0.01)):
        cells += [_cell("full_ft", s, 0.50 + d, 0.60 + d, 1.50 + d, 3000 + 10 * d, 10**6),
                  _cell("lora", s, 0.49 + d, 0.60 + d, 1.20 + d, 1500 + 10 * d, 10**4),  # close to full FT
                  _cell("ia3", s, 0.20 + d, 0.30 + d, 1.05 + d, 1400 + 10 * d, 10**3),  # below full FT; forgets less
                  _cell("prompt_tuning", s, 0.35 + d, 0.55 + d, 1.10 + d, 1200 + 10 * d, 10**2)]
    for c in cells:
        (tmp_path / f"{c['method']}_seed{c['seed']}.json").write_text(json.dumps(c))
    rep.write_report(tmp_path, tmp_path / "report.md")
    n, mean, lo, hi = rep.interval([0.49, 0.50, 0.51])
    assert (n, mean) == (3, pytest.approx(0.50)) and hi - mean == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    verdicts = {c["claim"]: c["verdict"] for c in rep.verdicts(rep.load_cells(tmp_path))}
    assert verdicts["lora performs comparably to full fine-tuning"] == "reproduced"
    assert verdicts["ia3 performs comparably to full fine-tuning"] == "not reproduced"
    assert verdicts["prompt tuning is the cheapest method"] == "reproduced"
    assert verdicts["LoRA comes closest to full fine-tuning"] == "reproduced"
    assert verdicts["(IA)3 forgets little (its stdlib loss rises less than full fine-tuning's)"] == "reproduced"
    text = (tmp_path / "report.md").read_text()
    assert "## Sizes chosen and why" in text and text.count("**Verdict:") == 6 and "[paper]" in text and "[D]" in text
    csv = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv[0] == "method,metric,n,mean,ci_low,ci_high" and any(r.startswith("lora,pass_rate,3,0.49,") for r in csv)
    for f in tmp_path.glob("*_seed[12].json"):
        f.unlink()
    assert {c["verdict"] for c in rep.verdicts(rep.load_cells(tmp_path))} == {"inconclusive"}


def test_cells_skip_existing_results_unless_forced(put, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(put, "prepare", lambda opts: None)
    import study_cells

    monkeypatch.setattr(study_cells.subprocess, "run", lambda cmd, cwd: calls.append(cmd) or type("R", (), {"returncode": 0}))
    opts = replace(put.Options(), out=str(tmp_path))
    (tmp_path / "lora_seed0.json").write_text("{}")
    todo = put.cells(["base", "lora"], [0, 1])
    assert todo == [("base", 0), ("lora", 0), ("lora", 1)]
    assert put.run_study(opts, todo, force=False) == [] and [c[3:5] for c in calls] == [["base", "0"], ["lora", "1"]]
    calls.clear()
    put.run_study(opts, todo, force=True)
    assert len(calls) == 3


def test_comparable_needs_the_paired_gap_within_the_margin_not_just_overlapping_intervals(rep):
    def cells(method, passes, muts):
        return [{"method": method, "seed": s, "pass_rate": p, "mutation_score": m}
                for s, (p, m) in enumerate(zip(passes, muts, strict=True))]

    full = cells("full_ft", [0.2, 0.4, 0.6], [0.8, 0.8, 0.8])
    wide = {"full_ft": full, "x": cells("x", [0.05, 0.45, 0.3], [0.8, 0.8, 0.8])}  # gaps -0.15, +0.05, -0.3
    assert rep._comparable(wide, "x")["verdict"] == "inconclusive"
    worse = {"full_ft": full, "x": cells("x", [0.0, 0.2, 0.35], [0.8, 0.8, 0.8])}  # gaps -0.2, -0.2, -0.25
    assert rep._comparable(worse, "x")["verdict"] == "not reproduced"
