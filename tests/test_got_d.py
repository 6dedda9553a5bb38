"""GOT-D (Kang et al., ICLR 2024): the calibrated OT gradient, toy selections whose answer is
known, a finite-difference check of the gradient's direction, chunking, the recipe."""

from __future__ import annotations

import numpy as np
import ot
import pytest

from fedft.data.sft import SFTExample
from fedft.recipes.base import RECIPES, RecipeContext
from fedft.recipes.got_d import (
    GOTD,
    GotDOptions,
    GotDRecipe,
    TargetSimilarity,
    calibrate,
    calibrated_gradient,
    chunk_texts,
    entropic_ot,
    text_of,
)
from fedft.recipes.got_d_pool import _conversations, gotd_examples


def _lookup(points: dict[str, np.ndarray]):
    """A toy embedder: each text names its point."""
    return lambda texts: np.array([points[t] for t in texts], dtype=np.float64)


def _cloud(rng: np.random.Generator, prefix: str, centre: tuple[float, float], n: int, sd: float = 0.3):
    return {f"{prefix}{i}": np.asarray(centre) + sd * rng.normal(size=2) for i in range(n)}


@pytest.fixture
def toy():
    """Pre-training cluster at (0, 0), a few points near (5, 5) and (-5, 5); target near (5, 5)."""
    rng = np.random.default_rng(0)
    pool = {**_cloud(rng, "o", (0, 0), 30), **_cloud(rng, "a", (5, 5), 4), **_cloud(rng, "b", (-5, 5), 4)}
    target = _cloud(rng, "t", (5, 5), 6)
    return list(pool), list(target), _lookup({**pool, **target})


# --- the calibrated gradient -------------------------------------------------------------------

def test_calibration_sums_to_zero_and_ignores_shifts():
    # g_i = f_i - (S - f_i)/(n-1) = n/(n-1) (f_i - mean f): sum_i g_i = n/(n-1) (S - S) = 0
    f = np.random.default_rng(1).normal(size=9)
    g = calibrate(f)
    assert abs(g.sum()) < 1e-12
    np.testing.assert_allclose(calibrate(f + 3.7), g, atol=1e-12)
    np.testing.assert_allclose(g, 9 / 8 * (f - f.mean()), atol=1e-12)
    np.testing.assert_allclose(g[0], f[0] - f[1:].sum() / 8, atol=1e-12)
    assert calibrate(np.array([2.0])).tolist() == [0.0]


def test_gradient_matches_the_pot_dual_potentials():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(5, 3)) + 1.0
    g = calibrated_gradient(x, y, reg=0.1)
    cost = ot.dist(x, y)
    _, log = ot.sinkhorn(ot.unif(12), ot.unif(5), cost / cost.max(), 0.1, method="sinkhorn_log", log=True,
                         numItermax=2000, stopThr=1e-6)
    f = 0.1 * log["log_u"]
    np.testing.assert_allclose(g, f - (f.sum() - f) / 11, atol=1e-6)
    assert g.dtype == np.float64 and g.shape == (12,) and abs(g.sum()) < 1e-9
    # a positive rescaling of the embeddings leaves the normalised problem, hence g, unchanged
    np.testing.assert_allclose(calibrated_gradient(3 * x, 3 * y, reg=0.1), g, atol=1e-6)


def test_ot_cost_is_the_plans_transport_cost():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(4, 2))
    _, cost = entropic_ot(x, y, reg=0.05, normalise_cost=False)
    want = ot.sinkhorn2(ot.unif(6), ot.unif(4), ot.dist(x, y), 0.05, method="sinkhorn_log", numItermax=2000,
                        stopThr=1e-6)
    assert cost == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finite_differences_follow_the_gradient(seed):
    """Moving mass delta onto candidate i (a -> (a + delta e_i) / (1 + delta)) changes the entropic
    OT objective by delta (f_i - mean f) = delta (n-1)/n g_i, to first order."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(4, 2)) + 1.0
    reg, n = 0.05, 7
    m = ot.dist(x, y)
    m /= m.max()
    g = calibrated_gradient(x, y, reg=reg, num_iter=5000, stop_thr=1e-10)
    b, kw = ot.unif(4), {"method": "sinkhorn_log", "numItermax": 5000, "stopThr": 1e-10}

    def objective(a):  # <P, M> + reg sum P log P, the problem Sinkhorn solves
        p = ot.sinkhorn(a, b, m, reg, **kw)
        return float((p * m).sum() + reg * (p * np.log(p)).sum())

    a, delta = ot.unif(n), 1e-4
    for i in range(n):
        e = np.eye(n)[i] * delta
        plus, minus = (a + e) / (1 + delta), (a - e) / (1 - delta)
        fd = (objective(plus) - objective(minus)) / (2 * delta)
        assert fd == pytest.approx((n - 1) / n * g[i], abs=1e-5)
        if abs(g[i]) > 0.02:  # the linear transport cost (sinkhorn2) moves the same way, bar near-ties
            lin = float(ot.sinkhorn2(plus, b, m, reg, **kw)) - float(ot.sinkhorn2(minus, b, m, reg, **kw))
            assert np.sign(lin) == np.sign(g[i])


# --- selections --------------------------------------------------------------------------------

def test_gotd_and_target_similarity_pick_the_target_cluster(toy):
    pool, target, embed = toy
    want = [i for i, t in enumerate(pool) if t.startswith("a")]
    assert GOTD(embed, target).select(pool, 4) == want
    assert TargetSimilarity(embed, target, metric="sqeuclidean").select(pool, 4) == want


def test_gotd_prefers_the_under_represented_target_mode():
    """Target: 6 points at A = (5, 5), 4 at B = (-5, 5). Pool: 40 at A (more than A needs), 2 at
    B, 8 at the origin O. In the OT plan A's surplus ships to B at cost 100 and O's mass at 50, so
    f_B = f_A - 100 < f_O = f_A - 50: GOT-D takes the B points, while the mean target (1, 5) is
    nearest to A."""
    rng = np.random.default_rng(4)
    pool = {**_cloud(rng, "a", (5, 5), 40, 0.2), **_cloud(rng, "b", (-5, 5), 2, 0.2),
            **_cloud(rng, "o", (0, 0), 8, 0.2)}
    target = {**_cloud(rng, "ta", (5, 5), 6, 0.2), **_cloud(rng, "tb", (-5, 5), 4, 0.2)}
    embed, names = _lookup({**pool, **target}), list(pool)
    sel = GOTD(embed, list(target), reg=0.02)
    assert [names[i] for i in sel.select(names, 2)] == ["b0", "b1"]
    g = sel.last_gradient
    assert g[names.index("b0")] < g[names.index("o0")] < g[names.index("a0")]
    near = TargetSimilarity(embed, list(target), metric="sqeuclidean").select(names, 2)
    assert all(names[i].startswith("a") for i in near)


def test_cosine_and_sqeuclidean_agree_on_unit_embeddings():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(20, 4))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    embed = _lookup({f"p{i}": p for i, p in enumerate(pts)})
    pool, target = [f"p{i}" for i in range(15)], [f"p{i}" for i in range(15, 20)]
    cos = TargetSimilarity(embed, target).select(pool, 5)
    assert cos == TargetSimilarity(embed, target, metric="sqeuclidean").select(pool, 5)


def test_budgets(toy):
    pool, target, embed = toy
    assert GOTD(embed, target).select(pool, 1000) == list(range(len(pool)))
    assert TargetSimilarity(embed, target).select(pool, 1000) == list(range(len(pool)))
    assert GOTD(embed, target).select(pool, 0) == [] and GOTD(embed, target).select([], 3) == []
    for sel in (GOTD(embed, target), TargetSimilarity(embed, target)):
        with pytest.raises(ValueError, match="needs a budget"):
            sel.select(pool)
        with pytest.raises(ValueError, match=">= 0"):
            sel.select(pool, -1)


def test_target_embedded_once(toy):
    pool, target, embed = toy
    calls = []
    sel = GOTD(lambda texts: (calls.append(len(texts)), embed(texts))[1], target)
    sel.select(pool, 3)
    sel.select(pool[:10], 3)
    assert sorted(calls[:2]) == sorted([len(target), len(pool)]) and calls[2:] == [10]


def test_bad_embeddings_are_errors():
    with pytest.raises(ValueError, match="differ in width"):
        calibrated_gradient(np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        calibrated_gradient(np.zeros((3, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="reg"):
        calibrated_gradient(np.zeros((3, 2)), np.ones((2, 2)), reg=0)


# --- texts -------------------------------------------------------------------------------------

def test_chunk_texts_splits_long_and_joins_short():
    long = " ".join(["word"] * 600)  # 2,999 characters
    chunks = chunk_texts([long], size=1000)
    assert len(chunks) == 3 and all(900 <= len(c) <= 1000 for c in chunks)
    assert " ".join(chunks) == long  # cut at whitespace, nothing lost
    short = [f"sentence {i:03d}." for i in range(100)]  # 13 characters each
    joined = chunk_texts(short, size=100, sep=" ")
    assert all(len(c) <= 100 for c in joined) and min(len(c) for c in joined[:-1]) >= 85
    assert " ".join(joined) == " ".join(short)
    assert chunk_texts(["x" * 250], size=100) == ["x" * 100, "x" * 100, "x" * 50]  # no whitespace
    assert chunk_texts(["", "  ", "a"], size=10) == ["a"]
    with pytest.raises(ValueError):
        chunk_texts(["a"], size=0)


def test_text_of_and_conversations():
    assert text_of("plain") == "plain"
    assert text_of(SFTExample("Q?", "A.")) == "Q?\nA."
    assert text_of(SFTExample("", "A.")) == "A."
    pairs = [("hi", "hello"), ("hello", "how are you"), ("what?", "that")]
    assert _conversations(pairs) == ["hi\nhello\nhow are you", "what?\nthat"]


# --- options and the recipe --------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"budget": 0}, {"reg": 0.0}, {"num_iter": 0}, {"stop_thr": 0.0},
                                 {"chunk_chars": -1}, {"embedder": ""}, {"embed_batch_size": 0},
                                 {"target_size": 0}, {"heldout_size": -1}])
def test_options_validation(bad):
    with pytest.raises(ValueError, match="got_d"):
        GotDOptions(**bad)


def test_recipe_builds_the_selected_candidates(toy):
    pool, target, embed = toy
    examples = gotd_examples(pool, ["near" if t.startswith("a") else "far" for t in pool], target)
    assert RECIPES.get("got_d") is GotDRecipe and not GotDRecipe.federated and "Kang" in GotDRecipe.description
    out = GotDRecipe(GotDOptions(budget=4, chunk_chars=0), embed=embed).build(examples, RecipeContext(None, None))
    assert [e.response for e in out.examples] == [t for t in pool if t.startswith("a")]
    assert all(e.prompt == "" and e.task == "pretrain" and e.group == "near" for e in out.examples)
    rep = out.report
    assert (rep["selected"], rep["candidates"], rep["target"], rep["by_group"]) == (4, len(pool), len(target), {"near": 4})
    assert rep["ot_cost"] > 0
    with pytest.raises(ValueError, match="target"):
        GotDRecipe(GotDOptions(budget=4), embed=embed).build(examples[: len(pool)], RecipeContext(None, None))


def test_recipe_chunks_each_group():
    seen: list[str] = []

    def embed(texts):
        seen.extend(texts)
        return np.array([[len(t), t.count("b")] for t in texts], dtype=np.float64)

    pool = [SFTExample("", "a" * 40, "c", "g1"), SFTExample("", "b" * 40, "c", "g2"),
            SFTExample("", "a" * 40, "c", "g1"), SFTExample("", "b b", "target")]
    out = GotDRecipe(GotDOptions(budget=5, chunk_chars=100), embed=embed).build(pool, RecipeContext(None, None))
    assert sorted(e.response for e in out.examples) == ["a" * 40 + "\n\n" + "a" * 40, "b" * 40]
    assert out.report["by_group"] == {"g1": 1, "g2": 1}
