"""CoBa's task weights (fedft.losses.coba) on hand-made validation-loss curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedft.losses.coba import CoBa, coba_weights, slope


def feed(coba: CoBa, curves: dict[int, list[float]], steps: list[int]) -> list[dict[int, float]]:
    """Observe the curves at the steps; the weights after each observation."""
    out = []
    for k, s in enumerate(steps):
        coba.observe(s, {t: c[k] for t, c in curves.items()})
        out.append(coba.weights)
    return out


def test_slope_is_the_least_squares_slope():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    assert slope(x, 3 - 0.5 * x) == pytest.approx(-0.5)
    assert slope(x, np.stack([x, -2 * x + 1])).tolist() == pytest.approx([1.0, -2.0])
    assert slope(np.array([1.0]), np.array([2.0])) == 0.0


def test_uniform_during_the_warm_up():
    coba = CoBa(warmup=10, history=20)
    steps = list(range(0, 10, 2))
    ws = feed(coba, {0: [2.0 * 0.5 ** k for k in range(5)], 1: [1.0] * 5, 2: [3.0] * 5}, steps)
    assert all(w == {0: pytest.approx(1 / 3), 1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3)} for w in ws)
    assert CoBa().weights == {}  # nothing observed: no task known (the loss then weighs tasks equally)


def test_first_update_by_hand():
    """At the first update there is one slope per task, DF = 1, so weights = softmax(N RCS)."""
    coba = CoBa(warmup=10, history=100)
    coba.observe(0, {0: 4.0, 1: 2.0})
    coba.observe(10, {0: 2.0, 1: 1.8})  # normalised: task 0 1 -> 0.5, task 1 1 -> 0.9
    s = [-0.05, -0.01]
    rcs = [math.exp(2 * v / 0.06) for v in s]
    rcs = [v / sum(rcs) for v in rcs]
    w = [math.exp(2 * v) for v in rcs]
    w = [v / sum(w) for v in w]
    assert coba.last["df"] == pytest.approx(1.0)
    assert coba.last["rcs"].tolist() == pytest.approx(rcs)
    assert [coba.weights[0], coba.weights[1]] == pytest.approx(w)
    assert coba.weights[1] > coba.weights[0]  # the slower-converging task gets more weight


def test_the_slower_task_gets_more_weight_and_the_weights_are_a_distribution():
    coba = CoBa(warmup=4, history=8)
    steps = list(range(0, 30, 2))
    # normalised losses falling at constant rates (a task's scale does not matter: 3.0, 1.0, 2.0)
    curves = {0: [3.0 * (1 - 0.030 * s) for s in steps],   # fast
              1: [1.0 * (1 - 0.005 * s) for s in steps],   # slow
              2: [2.0 * (1 - 0.015 * s) for s in steps]}   # in between
    ws = feed(coba, curves, steps)
    for w in ws[3:]:
        assert sum(w.values()) == pytest.approx(1.0) and min(w.values()) >= 1 / 30
        assert w[1] > w[2] > w[0]


def test_the_floor_of_one_tenth_of_uniform():
    """Ten tasks, one diverging fast: softmax alone would starve the others (~1e-4 each); the floor
    1 / (10 N) = 0.01 holds and the weights still sum to 1."""
    raw = coba_weights(np.array([[0.5] + [-1e-4] * 9]), np.array([0.5]), tau=5.0)
    assert min(raw["weights"]) >= 0.01 and min(raw["weights"]) < 0.0101
    assert raw["weights"].sum() == pytest.approx(1.0) and raw["weights"][0] > 0.9
    z = np.zeros(10)
    z[0] = 1.0
    unfloored = np.exp(10 * z) / np.exp(10 * z).sum()
    assert unfloored.min() < 0.001  # what the floor prevented


def test_divergence_lowers_the_divergence_factor():
    """While the worst task keeps converging DF stays 1 (RCS rules); when it turns upwards DF
    drops and ACS takes over, which moves weight away from the diverging task."""
    coba = CoBa(warmup=2, history=6, tau=5.0)
    down = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    feed(coba, {0: down, 1: [1.0, 0.95, 0.9, 0.85, 0.8, 0.75]}, [0, 1, 2, 3, 4, 5])
    assert coba.last["df"] == pytest.approx(1.0)
    for k, v in enumerate([0.9, 1.3, 1.8]):  # task 1 diverges
        coba.observe(6 + k, {0: 0.45 - 0.05 * k, 1: v})
    assert coba.last["df"] < 0.5
    assert coba.last["acs"][1] < coba.last["acs"][0]


def test_bad_observations():
    coba = CoBa(warmup=0, history=4)
    coba.observe(0, {0: 1.0, 1: 2.0})
    with pytest.raises(ValueError, match="expected"):
        coba.observe(1, {0: 1.0})
    with pytest.raises(ValueError, match="after step"):
        coba.observe(0, {0: 1.0, 1: 2.0})
    with pytest.raises(ValueError, match="positive"):
        CoBa().observe(0, {0: 0.0})
    with pytest.raises(ValueError, match="history"):
        CoBa(history=0)
