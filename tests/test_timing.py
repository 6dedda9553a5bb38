"""The time model on hand-computed cases, queueing for a shared body, the round clock's deadline,
over-selection and availability decisions, and a run that writes simulated time."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fedft.accounting import CommEvent
from fedft.config import ExperimentConfig
from fedft.resources.clock import STATUS_LATE, STATUS_OFFLINE, STATUS_OK, STATUS_OVER, BodyCost, RoundClock
from fedft.resources.profiles import DeviceProfile, NetworkProfile
from fedft.resources.timeline import ClientClock, Timeline, TimelineLedger
from fedft.resources.timing import ClientPlan, Exchange, round_seconds, simulate

DEV = DeviceProfile("d", flops=1e9, memory_bytes=2**30, joules_per_flop=1e-9, joules_per_byte=1e-6)
NET = NetworkProfile("n", up_bps=8e6, down_bps=16e6, rtt_s=0.1)  # 1 MB/s up, 2 MB/s down
SERVER = DeviceProfile("s", flops=1e10, memory_bytes=2**34)


def _split_plan(pid: int, steps: int = 3) -> ClientPlan:
    """Fetch 2 MB, then per step 1e8 FLOPs and a 1 MB / 1 MB exchange with 1e9 server FLOPs,
    then 2e8 FLOPs and push 1 MB."""
    ex = [Exchange(0, 2_000_000)] + [Exchange(1_000_000, 1_000_000, 1e9)] * steps + [Exchange(1_000_000, 0)]
    compute = [0.0] + [1e8] * steps + [2e8, 0.0]
    return ClientPlan(pid, DEV, NET, tuple(compute), tuple(ex))


def test_one_client_by_hand():
    times = simulate([_split_plan(0)], SERVER, capacity=None)
    t = times[0]
    # fetch: 2 MB / 2 MB/s + RTT; 3 steps of 0.1 s compute + 1 s up + 0.1 s server + 0.5 s down + RTT;
    # 0.2 s compute; push 1 s + RTT
    expect = (1.0 + 0.1) + 3 * (0.1 + 1.0 + 0.1 + 0.5 + 0.1) + 0.2 + (1.0 + 0.1)
    assert t.finish == pytest.approx(expect)
    assert t.compute_s == pytest.approx(0.5)
    assert t.server_s == pytest.approx(0.3)
    assert t.rtt_s == pytest.approx(0.5)
    assert t.transfer_s == pytest.approx(1.0 + 3 * 1.5 + 1.0)
    assert t.queue_s == 0
    assert t.energy_j == pytest.approx(1e-9 * 5e8 + 1e-6 * (4_000_000 + 5_000_000))


def test_fedavg_client_by_hand():
    plan = ClientPlan(0, DEV, NET, (0.0, 3e9, 0.0), (Exchange(0, 4_000_000), Exchange(4_000_000, 0)))
    t = simulate([plan], SERVER, None)[0]
    assert t.finish == pytest.approx(2.0 + 0.1 + 3.0 + 4.0 + 0.1)


def test_shared_body_queues_and_frozen_body_does_not():
    plans = [_split_plan(0), _split_plan(1)]
    free = simulate(plans, SERVER, capacity=None)
    shared = simulate(plans, SERVER, capacity=1)
    assert free[0].finish == pytest.approx(free[1].finish)
    assert free[0].queue_s == free[1].queue_s == 0
    # both arrive together at the first step: the second waits for the first's 0.1 s of body
    # work, and from then on arrives 0.1 s later, just as the body is free again
    assert sorted([shared[0].queue_s, shared[1].queue_s]) == pytest.approx([0.0, 0.1])
    assert max(s.finish for s in shared.values()) == pytest.approx(free[0].finish + 0.1)
    slow = simulate(plans, DeviceProfile("slow", flops=1e10 / 3, memory_bytes=1), capacity=1)
    # with 0.3 s of body work per request the second client waits 0.3 s at the first step, then
    # arrives every step while the first's next request (0.2 s of its own compute + transfers) is
    # not yet there: 0.3 s in all
    assert sorted([slow[0].queue_s, slow[1].queue_s]) == pytest.approx([0.0, 0.3])


def test_server_capacity_bounds_parallel_requests():
    plans = [_split_plan(p, steps=1) for p in range(4)]
    two = simulate(plans, SERVER, capacity=2)
    waits = sorted(t.queue_s for t in two.values())
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.1])
    with pytest.raises(ValueError, match="capacity"):
        simulate(plans, SERVER, capacity=0)


def test_plan_needs_one_more_compute_segment():
    with pytest.raises(ValueError, match="one more segment"):
        ClientPlan(0, DEV, NET, (1.0,), (Exchange(0, 1),))


def test_round_seconds_waits_for_the_deadline_only_when_someone_was_late():
    times = simulate([_split_plan(0)], SERVER, None)
    assert round_seconds(times, [0], 0.0) == pytest.approx(times[0].finish)
    assert round_seconds(times, [], 0.0, deadline=10.0, dropped_late=True) == 10.0


def test_timeline_ledger_pairs_requests_and_replies():
    class Meter:
        n = 0.0

        def total(self, party: str | None = None) -> float:
            return self.n

    meter = Meter()
    led = TimelineLedger(meter)  # type: ignore[arg-type]
    led.add(1, "0", "split", "control", 10, "up")
    led.add(1, "0", "split", "control", 20, "down")
    meter.n = 5.0
    led.add(1, "0", "split", "activations_up", 100, None)
    led.add(1, "0", "split", "activations_down", 90, None)
    meter.n = 7.0
    led.add(1, "0", "split", "grads_up", 80, None)
    led.add(1, "0", "split", "grads_down", 70, None)
    t = Timeline.from_record(led.record_for_reply())
    assert t == Timeline((0.0, 5.0, 7.0), (10, 100, 80), (20, 90, 70), (0, 1, 2))
    assert led.total() == 370  # still an ordinary ledger


def test_timeline_rejects_garbage():
    from flwr.app import MetricRecord

    with pytest.raises(ValueError):
        Timeline.from_record(MetricRecord({"flops": [1.0, 0.5], "up": [1, 1], "down": [1, 1], "kind": [0, 0]}))
    with pytest.raises(ValueError):
        Timeline.from_record(MetricRecord({"flops": [1.0], "up": [1, 2], "down": [1], "kind": [0]}))


def _clock(*sets: str) -> RoundClock:
    cfg = ExperimentConfig.from_overrides(["partition.num_clients=4", "resources.devices=laptop",
                                           "resources.networks=4g", *sets])
    return RoundClock(cfg, "frozen")


def _plans(clock: RoundClock, flops: list[float]) -> list[ClientPlan]:
    sync = [CommEvent(1, str(p), "sync", d, k, 1000) for p in range(4)
            for d, k in (("down", "params_down"), ("up", "params_up"))]
    return [clock.plan(p, Timeline(), f, [e for e in sync if e.client == str(p)], 0, BodyCost())
            for p, f in enumerate(flops)]


def test_clock_plan_uses_the_ledger_bytes_and_the_profiles():
    clock = _clock()
    plan = _plans(clock, [1e9, 0, 0, 0])[0]
    assert plan.device.name == "laptop" and plan.network.name == "4g"
    assert [e.down_bytes for e in plan.exchanges] == [1000, 0]
    assert [e.up_bytes for e in plan.exchanges] == [0, 1000]
    assert plan.compute == (0.0, 1e9, 0.0)


def test_deadline_drops_the_late_client_and_the_round_waits_for_the_deadline():
    clock = _clock("resources.deadline_s=5")
    rate = clock.devices.of(0).flops
    out = clock.judge(_plans(clock, [rate * 1, rate * 2, rate * 9, rate * 3]), 100.0, keep=0)
    assert out.status == {0: STATUS_OK, 1: STATUS_OK, 2: STATUS_LATE, 3: STATUS_OK}
    assert out.end == pytest.approx(105.0)


def test_over_selection_keeps_the_first_k_to_finish():
    clock = _clock("resources.over_selection=1.0")
    rate = clock.devices.of(0).flops
    out = clock.judge(_plans(clock, [rate * 4, rate * 1, rate * 3, rate * 2]), 0.0, keep=2)
    assert out.status == {0: STATUS_OVER, 1: STATUS_OK, 2: STATUS_OVER, 3: STATUS_OK}
    assert out.end == pytest.approx(out.times[3].finish)
    assert clock.sample(2, np.random.default_rng(0)).__len__() == 4  # ceil(2 x 2) sampled


def test_a_client_that_goes_offline_mid_round_is_dropped():
    clock = _clock("resources.availability=cyclic:10,10")
    rate = clock.devices.of(0).flops
    online = clock.availability.online(0.0)
    pids = np.flatnonzero(online)
    until = clock.availability.online_until(pids, 0.0)
    p = int(pids[0])
    flops = [0.0] * 4
    flops[p] = rate * (float(until[0]) + 1.0)  # still computing when it goes offline
    out = clock.judge([pl for pl in _plans(clock, flops) if pl.pid == p], 0.0, keep=0)
    assert out.status[p] == STATUS_OFFLINE
    assert set(clock.sample(0, np.random.default_rng(0))) == set(pids.tolist())


def test_client_clock_counts_download_compute_exchanges_and_upload():
    class Meter:
        def total(self, party: str | None = None) -> float:
            return 2e9

    led = TimelineLedger()
    led.add(1, "0", "split", "activations_up", 1_000_000, None)
    led.add(1, "0", "split", "activations_down", 2_000_000, None)
    c = ClientClock(DEV, NET, deadline_s=10.0, server_flops=1e10, body_flops_per_token=1e6, download_bytes=2_000_000,
                    upload_bytes=1_000_000, ledger=led, meter=Meter(), split_tokens=1000)  # type: ignore[arg-type]
    expect = (1.0 + 0.1) + 2.0 + (1.0 + 1.0 + 0.1) + 0.1 + (1.0 + 0.1)
    assert c.elapsed() == pytest.approx(expect)
    assert not c.out_of_time()
    c.deadline_s = c.elapsed()
    assert c.out_of_time()
    c2 = ClientClock(DEV, NET, deadline_s=expect + 1.5, server_flops=1e10, body_flops_per_token=0, download_bytes=0,
                     upload_bytes=0, meter=Meter())  # type: ignore[arg-type]
    c2.deadline_s, c2.last_check = c2.elapsed() + 1.5, c2.elapsed() - 1.0  # the last batch took 1 s
    assert not c2.out_of_time()  # one more 1 s batch fits in 1.5 s
    c2.last_check = c2.elapsed() - 2.0
    assert c2.out_of_time()  # a 2 s batch would not


TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
        "data.test_size=32", "partition.scheme=iid", "partition.num_clients=3", "partition.min_size=4",
        "federation.rounds=2", "federation.engine=inprocess", "train.batch_size=8", "output.plots=false",
        "resources.networks=4g"]


def _run(tmp_path, name: str, *sets: str) -> tuple[dict, list[dict], list[dict]]:
    from fedft.cli import main

    out = tmp_path / name
    argv = ["run", "--out", str(out)]
    for s in [*TINY, *sets]:
        argv += ["--set", s]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    clients = list(csv.DictReader(open(out / "sim_clients.csv")))
    return json.loads((out / "summary.json").read_text()), rows, clients


@pytest.mark.parametrize("strategy", ["sfprompt", "sfl_v2", "fl_full"])
def test_a_run_writes_simulated_time(tmp_path, strategy):
    summary, rows, clients = _run(tmp_path, strategy, f"federation.strategy={strategy}",
                                  "resources.devices=phone-mid=0.67,laptop=0.33")
    sims = [float(r["sim_seconds"]) for r in rows]
    assert all(s > 0 for s in sims)
    assert float(rows[-1]["sim_cumulative"]) == pytest.approx(sum(sims), rel=1e-4)  # CSV keeps 6 digits
    assert summary["sim_seconds_total"] == pytest.approx(sum(sims), rel=1e-4)
    assert len(clients) == 6 and {c["device"] for c in clients} == {"phone-mid", "laptop"}
    for c in clients:  # each client's seconds are the sum of its parts
        parts = sum(float(c[k]) for k in ("compute_s", "transfer_s", "rtt_s", "server_s", "queue_s"))
        assert float(c["seconds"]) == pytest.approx(parts, rel=1e-4)
    # the round ends when its slowest client does
    r1 = [float(c["seconds"]) for c in clients if c["round"] == "1"]
    assert sims[0] == pytest.approx(max(r1), rel=1e-4)
    split = strategy != "fl_full"
    assert (float(clients[0]["server_s"]) > 0) == split


def test_faster_devices_compute_proportionally_faster(tmp_path):
    _, _, slow = _run(tmp_path, "slow", "federation.strategy=sfprompt", "resources.devices=phone-low")
    _, _, fast = _run(tmp_path, "fast", "federation.strategy=sfprompt", "resources.devices=laptop")
    from fedft.resources.profiles import builtin_catalog

    cat = builtin_catalog().devices
    ratio = cat["laptop"].flops / cat["phone-low"].flops
    for s, f in zip(slow, fast, strict=True):  # same FLOPs and bytes, another device
        assert float(s["compute_s"]) == pytest.approx(float(f["compute_s"]) * ratio, rel=1e-3)
        assert float(s["transfer_s"]) == pytest.approx(float(f["transfer_s"]), rel=1e-3)  # control bytes may differ by a few


def test_deadline_drop_and_partial_work(tmp_path):
    slow = ["federation.strategy=fl_full", "resources.devices=phone-low", "resources.networks=ethernet-dc"]
    _, free, _ = _run(tmp_path, "free", *slow)  # compute-bound: a slow device on a fast link
    full = float(free[0]["sim_seconds"])
    _, rows, clients = _run(tmp_path, "drop", *slow, f"resources.deadline_s={full / 2}")
    assert all(c["status"] == STATUS_LATE for c in clients)
    assert [int(r["stragglers"]) for r in rows] == [3, 3] and [int(r["clients"]) for r in rows] == [0, 0]
    assert float(rows[0]["sim_seconds"]) == pytest.approx(full / 2, rel=1e-4)
    _, rows, clients = _run(tmp_path, "partial", *slow, f"resources.deadline_s={full * 0.7}",
                            "resources.stragglers=partial")
    done = [float(c["seconds"]) for c in clients]
    assert all(c["status"] == STATUS_OK for c in clients)
    assert max(done) < full  # stopped early: fewer batches than the full round
    assert int(rows[0]["clients"]) == 3


def test_retime_reproduces_the_run_and_moves_with_the_profiles(tmp_path):
    from fedft.errors import FedftError
    from fedft.resources.retime import retime, time_to

    _, rows, _ = _run(tmp_path, "r", "federation.strategy=sfl_v2", "resources.devices=phone-mid")
    same = retime(tmp_path / "r", "phone-mid", "4g")
    assert [r["sim_cumulative"] for r in same] == pytest.approx([float(r["sim_cumulative"]) for r in rows], rel=1e-4)
    faster = retime(tmp_path / "r", "laptop", "ethernet-dc")
    assert all(f["sim_seconds"] < s["sim_seconds"] for f, s in zip(faster, same, strict=True))
    first = next(r for r in same if r["val_accuracy"])  # the main job evaluates every 2nd round
    assert time_to(same, 2.0) is None and time_to(same, 0.0) == first["sim_cumulative"]
    _run(tmp_path, "d", "federation.strategy=fl_full", "resources.devices=laptop", "resources.deadline_s=100")
    with pytest.raises(FedftError, match="deadline_s"):
        retime(tmp_path / "d", "phone-mid", "4g")


def test_compare_mixes_write_time_to_accuracy(tmp_path):
    from fedft.cli import main
    from fedft.errors import ConfigError

    argv = ["compare", "--strategies", "sfprompt,fl_full", "--out", str(tmp_path / "c"), "--target", "0.0",
            "--mix", "phones=phone-mid=0.5,phone-low=0.5@4g", "--mix", "lan=laptop@ethernet-dc"]
    for s in TINY:
        argv += ["--set", s]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "c" / "time_to_accuracy.csv")))
    assert [(r["mix"], r["entry"]) for r in rows] == [("phones", "sfprompt"), ("phones", "fl_full"),
                                                      ("lan", "sfprompt"), ("lan", "fl_full")]
    t = {(r["mix"], r["entry"]): float(r["time_to_target_s"]) for r in rows}
    assert t[("lan", "sfprompt")] < t[("phones", "sfprompt")]
    assert (tmp_path / "c" / "accuracy_vs_time_phones.png").is_file()
    from fedft.compare import parse_mixes

    with pytest.raises(ConfigError, match="LABEL=DEVICES@NETWORKS"):
        parse_mixes(["phones=phone-mid"])


def test_round_overhead_is_added_to_every_group():
    base, extra = _clock(), _clock("resources.round_overhead_s=2.5")
    rate = base.devices.of(0).flops
    a = base.judge(_plans(base, [rate, rate, 0, 0]), 10.0, keep=0)
    b = extra.judge(_plans(extra, [rate, rate, 0, 0]), 10.0, keep=0)
    assert b.end == pytest.approx(a.end + 2.5)
    assert {p: t.finish for p, t in b.times.items()} == {p: t.finish for p, t in a.times.items()}
