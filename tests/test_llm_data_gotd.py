"""The GOT-D study (experiments/llm_data_gotd.py and its report): the cells, the cached-embedding
lookup, the plain-text and headline items, the selectors on a toy pool, and the report's verdicts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gd(experiment_script):
    return experiment_script("llm_data_gotd"), experiment_script("llm_data_gotd_report")


def test_the_cells_are_base_once_none_per_seed_and_each_selector_per_budget_and_seed(gd):
    m, _ = gd
    todo = m.cells([*m.CONTROLS, *m.SELECTORS], [32, 96], [0, 1, 2])
    assert len(todo) == 1 + 3 + 3 * 2 * 3 == 22
    assert todo[:4] == [("base", 0, 0), ("none", 0, 0), ("none", 0, 1), ("none", 0, 2)]
    assert ("got_d", 96, 2) in todo and ("random", 32, 0) in todo and ("target_sim", 96, 1) in todo
    assert m.cells(["got_d"], [4], [0]) == [("got_d", 4, 0)]
    assert m.cell_path(Path("o"), "got_d", 96, 1) == Path("o/cells/got_d_b96_seed1.json")
    assert m.cell_path(Path("o"), "none", 0, 2) == Path("o/cells/none_seed2.json")
    assert m.budget_list(m.Options(budgets="50,150")) == [50, 150]


def test_the_embed_lookup_returns_the_cached_vectors_in_the_order_asked(gd):
    m, _ = gd
    texts = ["a", "b", "c", "d"]
    vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
    embed = m.lookup_embedder(texts, vectors)
    np.testing.assert_array_equal(embed(texts), vectors)
    np.testing.assert_array_equal(embed(["c", "a"]), vectors[[2, 0]])
    assert embed(texts).dtype == np.float64
    with pytest.raises(KeyError, match="no cached embedding"):
        embed(["zz"])


class _Tok:
    """A whitespace tokenizer: one id per word."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [10 + len(w) for w in text.split()]}


def test_plain_text_items_label_every_token_but_the_first(gd):
    m, _ = gd
    item = m.plain_item("one three fives and more words", _Tok(), 4)
    assert item.input_ids == [13, 15, 15, 13]  # no special token; cut at max_length
    assert item.labels == [-100, 15, 15, 13]
    assert item.response_tokens == 3


def test_the_headline_pair_is_the_first_line_given_the_body(gd):
    m, _ = gd
    body = " ".join(["word"] * 200)  # 999 characters
    ex = m.headline_pair("Apple unveils new iPod\n\n" + body + "\n\nMore text.", body_chars=600)
    assert ex.response == "Apple unveils new iPod"
    assert ex.prompt.startswith("Write the headline of this news article:\n\nword word")
    kept = ex.prompt.split("\n\n", 1)[1]
    assert len(kept) <= 600 and kept.endswith("word") and "Apple" not in kept
    short = m.headline_pair("Title\n\nA short\nbody.", body_chars=600)
    assert short.prompt.endswith("A short body.") and short.response == "Title"


def _toy_data():
    """Off-target clusters (bbc/sports at 0, stdlib at -5) and a few tech chunks near the target at 5."""
    rng = np.random.default_rng(0)
    groups = ["bbc/sports"] * 20 + ["stdlib"] * 10 + ["bbc/tech"] * 4
    centre = {"bbc/sports": 0.0, "stdlib": -5.0, "bbc/tech": 5.0}
    pool_emb = np.array([[centre[g], 0.0] for g in groups]) + 0.3 * rng.normal(size=(len(groups), 2))
    target_emb = np.array([[5.0, 0.0]] * 6) + 0.3 * rng.normal(size=(6, 2))
    pool = {"pool": [f"p{i}" for i in range(len(groups))], "groups": groups,
            "target": [f"t{i}" for i in range(6)]}
    el2n = [1.0 if g == "stdlib" else 0.1 for g in groups]
    return {"pool": pool, "emb": {"pool": pool_emb, "target": target_emb}, "el2n": el2n}


def test_the_selectors_on_a_toy_pool(gd):
    m, _ = gd
    data, opts = _toy_data(), m.Options()
    for name in ("got_d", "target_sim"):
        keep, _ = m.select(name, 4, 0, data, opts)
        assert [data["pool"]["groups"][i] for i in keep] == ["bbc/tech"] * 4
    keep, extra = m.select("got_d", 4, 0, data, opts)
    assert extra["pool_ot_cost_entropic"] > 0
    assert {data["pool"]["groups"][i] for i in m.select("el2n", 10, 0, data, opts)[0]} == {"stdlib"}
    assert m.select("random", 5, 1, data, opts)[0] == m.select("random", 5, 1, data, opts)[0]
    near, far = m.describe(m.select("got_d", 4, 0, data, opts)[0], data), m.describe(list(range(4)), data)
    assert near["target_share"] == 1.0 and near["by_group"] == {"bbc/tech": 4}
    assert near["ot_cost"] < far["ot_cost"]


def _cell(selector, budget, seed, ppl, rouge, loss, tech):
    return {"condition": f"{selector}_b{budget}" if budget else selector, "selector": selector, "budget": budget,
            "seed": seed, "target_ppl": ppl, "rouge_l": rouge, "headline_loss": loss, "pool_size": 34,
            "options": {}, "selection": {"by_group": {"bbc/tech": tech, "stdlib": budget - tech},
                                         "target_share": tech / budget, "ot_cost": 0.5} if budget else {}}


def test_the_report_pairs_cells_by_seed_and_judges_each_claim(gd, tmp_path):
    m, rep = gd
    (tmp_path / "cells").mkdir()
    recs = [_cell("base", 0, 0, 20.0, 0.10, 3.0, 0)]
    for s in range(3):
        recs.append(_cell("none", 0, s, 20.0, 0.20, 2.5, 0))
        for b in (4, 8):
            recs.append(_cell("random", b, s, 19.0 + 0.1 * s, 0.20 + 0.01 * s, 2.5, 1))
            recs.append(_cell("target_sim", b, s, 18.0 + 0.1 * s, 0.22 + 0.01 * s, 2.5 - 0.1 * s, b))
            recs.append(_cell("got_d", b, s, 18.0 + 0.2 * s, 0.25 + 0.01 * s, 2.4 - 0.1 * s, b))
    for r in recs:
        (tmp_path / "cells" / f"{r['condition']}_seed{r['seed']}.json").write_text(json.dumps(r))
    by = rep.load(tmp_path)
    assert rep.budgets_in(by) == [4, 8]
    n, mean, lo, hi = rep.paired(by, "got_d_b4", "random_b4", "target_ppl")
    assert n == 3 and mean == pytest.approx(-0.9) and hi < 0
    text = rep.write_report(tmp_path).read_text()
    assert "## Budget 4" in text and "## Budget 8" in text and "held-out tech perplexity" in text
    assert "B = 4: got_d - random -0.900" in text
    verdicts = [line for line in text.splitlines() if line.startswith("**Verdict")]
    assert verdicts[:2] == ["**Verdict: reproduced in direction.**"] * 2
    # against target-sim: perplexity worse in mean (0.1) -> at best inconclusive, never reproduced
    assert verdicts[2] in ("**Verdict: inconclusive.**", "**Verdict: not reproduced.**")
    assert "| got_d_b8 | 8.0 | 0.0 |" in text  # sources: bbc/tech, stdlib (sorted)
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + len(recs) and rows[0].startswith("condition,selector,budget,seed,target_ppl")


def test_the_one_pool_table_reads_the_prepared_files(gd, tmp_path):
    m, rep = gd
    data = _toy_data()
    (tmp_path / "gotd_pool.json").write_text(json.dumps(data["pool"]))
    (tmp_path / "el2n.json").write_text(json.dumps({"scores": data["el2n"]}))
    np.savez(tmp_path / "embeddings.npz", **data["emb"])
    rows = rep.one_pool_table(rep.read_prepared(tmp_path), 4, m.Options())
    assert rows[0] == "| source | pool (34) | random | el2n | target_sim | got_d |"
    assert rows[3].startswith("| bbc/tech | 0.12 |") and rows[3].endswith("| 1.00 | 1.00 |")  # sorted sources
    assert rows[-1].startswith("| OT cost to the target")
    assert asdict(m.Options())["budgets"] == "32,96"
