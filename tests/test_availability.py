"""Client availability: always, seeded duty cycles and FedScale's client_behave_trace.

tests/data/fedscale_behave_trace.pkl was written by hand in FedScale's format, ids in insertion
order 2, 1, 3: id 1 is FedScale's own unit-test case (active [1, 3, 6, 9], inactive [1, 4, 7, 10],
finish_time 10); id 2 is online on [10, 30] and [60, 80] of 100 s; id 3 on [0, 10] and [40, 50]
of 50 s (online across its period's wrap)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedft.errors import ConfigError
from fedft.resources.availability import Availability

TRACE = f"file:{Path(__file__).parent / 'data' / 'fedscale_behave_trace.pkl'}"


def test_always_is_online_forever():
    av = Availability.from_spec("always", 5, 0)
    assert av.online(123.0).all() and av.online(123.0).shape == (5,)
    assert np.isinf(av.online_until(np.arange(5), 7.0)).all()
    assert Availability.from_spec("cyclic:10,0", 3, 0).kind == "always"


def test_cyclic_is_seeded_and_its_duty_cycle_is_online_over_period():
    a, b = Availability.from_spec("cyclic:30,90", 100_000, 1), Availability.from_spec("cyclic:30,90", 100_000, 1)
    assert np.array_equal(a.phase, b.phase) and not np.array_equal(a.phase, Availability.from_spec(
        "cyclic:30,90", 100_000, 2).phase)
    assert a.phase.min() >= 0 and a.phase.max() < 120
    for t in (0.0, 17.5, 1e5 + 3.25):  # uniform phases: a quarter of the clients is online at any time
        assert a.online(t).mean() == pytest.approx(0.25, abs=0.01)
    # each client over whole periods, on a grid of 1/8 s: exactly 30 of every 120 s online
    few = Availability.from_spec("cyclic:30,90", 8, 5)
    grid = np.arange(0.0, 10 * 120.0, 0.125)
    frac = np.mean([few.online(t) for t in grid], axis=0)
    assert frac == pytest.approx(np.full(8, 0.25), abs=1 / 960 + 1e-12)
    assert few.online_fraction() == pytest.approx(np.full(8, 0.25))


@pytest.mark.parametrize("spec", ["cyclic:30,90", "cyclic:5,1", TRACE])
def test_online_until_agrees_with_online(spec):
    av = Availability.from_spec(spec, 50, 3)
    rng = np.random.default_rng(0)
    pids = np.arange(50)
    for t in rng.uniform(0, 1000, size=40):
        up, until = av.online(t), av.online_until(pids, t)
        assert np.all(until[~up] == t)  # offline now: "goes offline" now
        assert np.all(until >= t)
        for pid in np.flatnonzero(up & (until > t)):
            end = until[pid] if np.isfinite(until[pid]) else t + 1e4
            for u in (0.0, 0.3, 0.999):  # online throughout [t, until)
                assert av.online(float(t + u * (end - t)))[pid]
            if np.isfinite(until[pid]):
                assert not av.online(float(until[pid]) + 1e-6)[pid]  # and offline just after


def test_fedscale_trace_mirrors_fedscale_is_active():
    av = Availability.from_spec(TRACE, 6, 0)  # pids 0, 3 -> id 1; 1, 4 -> id 2; 2, 5 -> id 3 (sorted ids)
    # FedScale's tests/cloud/internal/test_client_metadata.py::test_is_active on the same trace
    expected = {2: False, 6: True, 8: False, 9: True, 10: False, 15: False}
    for t, want in expected.items():
        assert av.online(float(t))[[0, 3]].tolist() == [want, want]
    assert av.online(1.0)[0] and av.online(3.5)[0] and not av.online(0.5)[0]  # closed [1, 1], [3, 4]
    assert av.online(130.0)[1] and not av.online(150.0)[1] and av.online(80.0)[1]
    assert av.online_until(np.array([1, 1, 1]), 20.0).tolist() == [30.0, 30.0, 30.0]
    assert av.online_until(np.array([1]), 245.0).tolist() == [245.0]  # offline at 45 of 100
    # id 3 is online on [40, 50] and then [0, 10] of the next period: one stretch to 60
    assert av.online_until(np.array([2, 5]), 45.0).tolist() == [60.0, 60.0]
    assert av.online_until(np.array([2]), 105.0).tolist() == [110.0]
    assert av.online_fraction().tolist() == pytest.approx([0.3, 0.4, 0.4, 0.3, 0.4, 0.4])  # 3 of 10 s; 40 of 100; 20 of 50


def _fedscale_is_active(trace: dict, times: list[float]) -> list[bool]:
    """FedScale's ClientMetadata.is_active, stateful pointer and all (fedscale/cloud/internal/client_metadata.py)."""
    index, out = 0, []
    for cur_time in times:
        norm_time = cur_time % trace["finish_time"]
        if norm_time > trace["inactive"][index]:
            index += 1
        index %= len(trace["active"])
        out.append(trace["active"][index] <= norm_time <= trace["inactive"][index])
    return out


def test_agrees_with_fedscales_own_code_on_increasing_times(tmp_path):
    rng = np.random.default_rng(1)
    traces = {}
    for cid in range(20):
        cuts = np.sort(rng.choice(np.arange(1, 1000), size=2 * int(rng.integers(1, 6)), replace=False))
        traces[cid] = {"active": cuts[0::2].tolist(), "inactive": cuts[1::2].tolist(), "finish_time": 1000}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(traces))
    av = Availability.from_spec(f"file:{path}", 20, 0)
    times = np.arange(0.0, 1000.0, 0.5).tolist()  # within a period, steps shorter than any gap
    ours = np.array([av.online(t) for t in times])
    for cid in range(20):
        assert ours[:, cid].tolist() == _fedscale_is_active(traces[cid], times)


def test_a_trace_that_covers_the_whole_period_never_goes_offline(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"7": {"active": [0, 30], "inactive": [40, 100], "finish_time": 100}}))
    av = Availability.from_spec(f"file:{path}", 3, 0)
    assert av.online(1e6 + 0.5).all() and np.isinf(av.online_until(np.arange(3), 55.0)).all()


@pytest.mark.parametrize("spec, needle", [
    ("sometimes", "must be always, cyclic"),
    ("cyclic:10", "cyclic:<online_s>,<offline_s>"),
    ("cyclic:0,10", "online_s > 0"),
    ("cyclic:a,b", "cyclic:<online_s>,<offline_s>"),
])
def test_bad_specs_raise_one_line(spec, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        Availability.from_spec(spec, 3, 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("entry, needle", [
    ({"active": [1], "inactive": [2]}, "needs 'active', 'inactive' and 'finish_time'"),
    ({"active": [1, 2], "inactive": [3], "finish_time": 5}, "same length"),
    ({"active": [3], "inactive": [2], "finish_time": 5}, "active[k] <= inactive[k]"),
    ({"active": [1], "inactive": [2], "finish_time": 0}, "'finish_time' must be a number > 0"),
])
def test_bad_trace_entries_name_the_client(tmp_path, entry, needle):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"42": entry}))
    with pytest.raises(ConfigError) as e:
        Availability.from_spec(f"file:{path}", 2, 0)
    assert "client 42" in str(e.value) and needle in str(e.value)
