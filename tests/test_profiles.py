"""Device/network profiles: the catalogue, exact transfer times over traces (seeded property
checks; hypothesis is not installed), user files, per-client assignment, FedScale's capacity
files and ``fedft profiles``.

tests/data/fedscale_device_capacity.{pkl,json} were written by hand in FedScale's format
(ids 3, 1, 2, 5, 4 in that insertion order; computation ms/sample, communication kbit/s)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedft.cli import main
from fedft.errors import ConfigError
from fedft.resources import fedscale
from fedft.resources.profiles import (
    NetworkProfile,
    assign,
    builtin_catalog,
    largest_remainder,
    load_catalog,
)

DATA = Path(__file__).parent / "data"
DEVICES = ("rpi4", "jetson-orin-nano", "phone-low", "phone-mid", "phone-high", "laptop", "server-cpu", "server-gpu")
NETWORKS = ("3g", "4g", "5g", "wifi-home", "ethernet-dc", "4g-trace")


def test_builtin_catalogue_has_the_named_profiles_with_sane_numbers():
    cat = builtin_catalog()
    assert set(DEVICES) <= set(cat.devices) and set(NETWORKS) <= set(cat.networks)
    for d in cat.devices.values():
        assert 0 < d.flops < d.peak_flops, d.name  # sustained training is below the chip's peak
        assert d.source and d.description and d.memory_bytes > 0
    for name in ("rpi4", "phone-low", "phone-mid"):
        assert (cat.devices[name].head_blocks, cat.devices[name].tail_blocks) == (0, 0)
    assert cat.devices["laptop"].head_blocks >= 1 and cat.devices["laptop"].tail_blocks >= 1
    assert cat.devices["phone-low"].memory_bytes < cat.devices["phone-high"].memory_bytes < 8 * 2**30
    assert cat.devices["server-gpu"].flops > cat.devices["server-cpu"].flops > cat.devices["laptop"].flops
    assert cat.networks["3g"].down_bps < cat.networks["4g"].down_bps < cat.networks["5g"].down_bps
    assert cat.networks["4g-trace"].trace and not cat.networks["4g"].trace


def test_transfer_seconds_without_a_trace_is_bits_over_bandwidth():
    net = builtin_catalog().networks["4g"]
    assert net.transfer_seconds(1_000_000, "up") == pytest.approx(8e6 / 6e6)
    assert net.transfer_seconds(1_000_000, "down", start_s=123.0) == pytest.approx(8e6 / 20e6)
    assert net.transfer_seconds(0, "up") == 0.0
    with pytest.raises(ValueError):
        net.transfer_seconds(1, "sideways")  # type: ignore[arg-type]


def test_transfer_over_the_4g_trace_by_hand():
    net = builtin_catalog().networks["4g-trace"]  # down: 30 Mbit/s on [0, 40), 3 Mbit/s on [40, 60)
    assert net.transfer_seconds(10**6, "down", 0.0) == pytest.approx(8e6 / 30e6)
    assert net.transfer_seconds(10**6, "down", 45.0) == pytest.approx(8e6 / 3e6)
    # 8e8 bits from t = 30: 3e8 by 40, 6e7 more by 60, the last 4.4e8 at 30 Mbit/s -> 74.667
    assert net.transfer_seconds(10**8, "down", 30.0) == pytest.approx(44.0 + 2 / 3)
    # from t = 59: 1 s of 3 Mbit/s then good; exactly k periods' worth of bits takes k periods from 0
    assert net.transfer_seconds(10**6, "down", 59.0) == pytest.approx(1 + (8e6 - 3e6) / 30e6)
    per_period_bytes = (40 * 30e6 + 20 * 3e6) / 8
    assert net.transfer_seconds(int(5 * per_period_bytes), "down", 0.0) == pytest.approx(5 * 60)
    # a link that is down (0 bit/s) for the last 20 s of each minute: 5 minutes' bits end at 4:40
    dark = NetworkProfile("dark", 1.0, 1.0, 0.0, trace=((0.0, 8e6, 8e6), (40.0, 0.0, 8e6)), trace_period_s=60.0)
    assert dark.transfer_seconds(5 * 40 * 10**6, "up", 0.0) == pytest.approx(280.0)
    assert dark.transfer_seconds(10**6, "up", 50.0) == pytest.approx(11.0)  # waits for the link to return
    assert net.mean_bps("down") == pytest.approx((40 * 30e6 + 20 * 3e6) / 60)


def _random_trace(rng: np.random.Generator) -> NetworkProfile:
    k = int(rng.integers(1, 5))
    starts = np.sort(rng.choice(np.arange(1, 50), size=k - 1, replace=False)).tolist()
    segs = [(float(s), float(rng.choice([0.0, rng.uniform(1e5, 5e7)])), float(rng.uniform(1e5, 5e7)))
            for s in [0, *starts]]
    segs[0] = (0.0, max(segs[0][1], 1e6), segs[0][2])  # some uplink in every period
    return NetworkProfile("r", 1.0, 1.0, 0.0, trace=tuple(segs), trace_period_s=float(rng.integers(51, 120)))


@pytest.mark.parametrize("seed", range(4))
def test_trace_transfer_properties(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        net = _random_trace(rng)
        direction = "up" if rng.random() < 0.5 else "down"
        s = float(rng.uniform(0, 500))
        a, b = (int(x) for x in rng.integers(0, 3 * 10**8, size=2))
        ta = net.transfer_seconds(a, direction, s)
        # additivity: sending a then b back to back takes as long as sending a + b at once
        both = net.transfer_seconds(a + b, direction, s)
        assert both == pytest.approx(ta + net.transfer_seconds(b, direction, s + ta), rel=1e-9, abs=1e-9)
        assert net.transfer_seconds(a + b, direction, s) >= ta  # monotone in bytes
        # the trace repeats: starting one period later takes as long
        shifted = net.transfer_seconds(a, direction, s + net.trace_period_s)
        assert shifted == pytest.approx(ta, rel=1e-9, abs=1e-9)
        # never faster than the best segment, and integrating the trace gives back the bits
        best = max(seg[1 if direction == "up" else 2] for seg in net.trace)
        assert ta >= a * 8 / best * (1 - 1e-12)
        assert _integrate(net, direction, s, s + ta) == pytest.approx(a * 8, rel=1e-9, abs=1e-3)


def _integrate(net: NetworkProfile, direction: str, t0: float, t1: float) -> float:
    """The bits a trace carries over [t0, t1], summed piece by piece over every segment boundary."""
    col = 1 if direction == "up" else 2
    period = net.trace_period_s
    cycles = np.arange(math.floor(t0 / period), math.floor(t1 / period) + 1)
    starts = (cycles[:, None] * period + np.array([seg[0] for seg in net.trace])[None, :]).ravel()
    rates = np.tile([seg[col] for seg in net.trace], len(cycles))
    ends = np.append(starts[1:], (cycles[-1] + 1) * period)
    return float(np.sum(rates * np.clip(np.minimum(ends, t1) - np.maximum(starts, t0), 0, None)))


@pytest.mark.parametrize("seed", range(3))
def test_a_constant_trace_equals_no_trace(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        up, down = rng.uniform(1e5, 1e9, size=2)
        starts = [0.0, *np.sort(rng.uniform(1, 30, size=int(rng.integers(0, 4)))).tolist()]
        traced = NetworkProfile("c", 1.0, 1.0, 0.0, trace=tuple((s, up, down) for s in starts), trace_period_s=31.0)
        plain = NetworkProfile("p", up, down, 0.0)
        nbytes, start = int(rng.integers(0, 10**10)), float(rng.uniform(0, 1000))
        for d in ("up", "down"):
            assert traced.transfer_seconds(nbytes, d, start) == pytest.approx(plain.transfer_seconds(nbytes, d),
                                                                              rel=1e-9)


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_user_toml_and_json_files_add_and_replace_profiles(tmp_path):
    toml = _write(tmp_path, "p.toml", '[device.mybox]\ngflops = 50\nmemory_gib = 2\nhead_blocks = 1\n'
                  'tail_blocks = 1\n[network.4g]\nup_kbps = 500\ndown_mbps = 2\nrtt_ms = 300\n'
                  '[network.flaky]\ntrace_mbps = [[0, 1, 10], [5, 0, 1]]\ntrace_period_s = 10\nrtt_s = 0.1\n')
    cat = load_catalog(toml)
    assert cat.devices["mybox"].flops == 50e9 and cat.devices["mybox"].memory_bytes == 2 * 2**30
    assert cat.networks["4g"].up_bps == 5e5 and cat.networks["4g"].rtt_s == pytest.approx(0.3)
    assert cat.networks["flaky"].down_bps == pytest.approx(5.5e6)  # a trace's table value is its mean
    assert "rpi4" in cat.devices  # built-ins stay
    data = {"device": {"j": {"tflops": 0.5, "memory_bytes": 1000, "joules_per_gflop": 0.1}}}
    cat = load_catalog(_write(tmp_path, "p.json", json.dumps(data)))
    assert cat.devices["j"].flops == 5e11 and cat.devices["j"].joules_per_flop == pytest.approx(1e-10)


@pytest.mark.parametrize("text, needle", [
    ("[device.x]\ngflops = 5\nmemory_gib = 1\nspeed = 3\n", "device.x: unknown key 'speed'"),
    ("[device.x]\ngflops = -5\nmemory_gib = 1\n", "device.x.gflops"),
    ("[device.x]\ngflops = 'fast'\nmemory_gib = 1\n", "device.x.gflops"),
    ("[device.x]\nmemory_gib = 1\n", "device.x: missing flops or gflops or tflops"),
    ("[device.x]\ngflops = 1\ntflops = 1\nmemory_gib = 1\n", "device.x: 'tflops' and 'gflops'"),
    ("[device.x]\ngflops = 1\nmemory_gib = 1\nhead_blocks = 1.5\n", "device.x.head_blocks"),
    ("[network.n]\nup_mbps = 1\ndown_mbps = 1\n", "network.n: missing rtt_s or rtt_ms"),
    ("[network.n]\nrtt_ms = 1\ntrace_mbps = [[0, 1]]\ntrace_period_s = 5\n", "network.n.trace_mbps"),
    ("[network.n]\nrtt_ms = 1\ntrace_mbps = [[1, 1, 1]]\ntrace_period_s = 5\n", "profile 'n': bad trace"),
    ("[gadget.x]\nflops = 1\n", "unknown table 'gadget'"),
    ("[device.x\n", "not valid TOML"),
])
def test_bad_user_files_raise_one_line_naming_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_catalog(_write(tmp_path, "bad.toml", text))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_assign_one_name_and_unknown_names():
    cat = builtin_catalog()
    a = assign("phone-mid", "device", 7, 0, cat)
    assert a.profiles == (cat.devices["phone-mid"],) and a.index.tolist() == [0] * 7
    assert a.of(6).name == "phone-mid"
    with pytest.raises(ConfigError, match="unknown network profile 'wifi'; known: 3g, 4g, 4g-trace"):
        assign("wifi", "network", 3, 0, cat)
    with pytest.raises(ConfigError, match="unknown device profile 'toaster'"):
        assign("phone-mid=0.5,toaster=0.5", "device", 3, 0, cat)
    assert cat.profile("device", "server-gpu") is cat.devices["server-gpu"]
    with pytest.raises(ConfigError, match="unknown device profile 'cray'; known: jetson-orin-nano, laptop"):
        cat.profile("device", "cray")


def test_mixture_counts_are_exact_and_seeded():
    cat = builtin_catalog()
    a = assign("phone-low=0.25, phone-high=0.75", "device", 10, 3, cat)
    assert [p.name for p in a.profiles] == ["phone-low", "phone-high"]
    assert np.bincount(a.index).tolist() == [3, 7]  # 2.5 / 7.5: the tie goes to the first entry
    assert a.index.tolist() == assign("phone-low=0.25,phone-high=0.75", "device", 10, 3, cat).index.tolist()
    other = [assign("phone-low=0.25,phone-high=0.75", "device", 10, s, cat).index.tolist() for s in range(4, 9)]
    assert any(o != a.index.tolist() for o in other)
    net = assign("3g=0.25,4g=0.75", "network", 10, 3, cat)  # another kind draws another permutation
    devices = assign("phone-low=0.25,phone-high=0.75", "device", 40, 3, cat)
    networks = assign("3g=0.25,4g=0.75", "network", 40, 3, cat)
    assert np.bincount(net.index).tolist() == [3, 7] and devices.index.tolist() != networks.index.tolist()
    assert largest_remainder(np.array([1 / 3, 1 / 3, 1 / 3]), 100).tolist() == [34, 33, 33]
    assert largest_remainder(np.array([0.6, 0.4, 0.0]), 0).tolist() == [0, 0, 0]


@pytest.mark.parametrize("spec, needle", [
    ("phone-low=0.5,phone-mid=0.4", "sum to 0.9"),
    ("phone-low=0.5,phone-mid=half", "must be name=proportion"),
    ("phone-low=-0.5,phone-mid=1.5", "must be name=proportion"),
    ("phone-low=0.5,phone-low=0.5", "listed twice"),
])
def test_bad_mixtures_raise_one_line(spec, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        assign(spec, "device", 10, 0, builtin_catalog())
    assert "\n" not in str(e.value)


def test_assigning_100k_clients_keeps_one_profile_per_distinct_name():
    a = assign("phone-low=0.3,phone-mid=0.5,phone-high=0.2", "device", 100_000, 0, builtin_catalog())
    assert len(a.profiles) == 3 and a.index.dtype == np.int32 and a.index.shape == (100_000,)
    assert np.bincount(a.index).tolist() == [30_000, 50_000, 20_000]
    flops = a.column("flops")
    assert flops.shape == (100_000,) and set(np.unique(flops)) == {3e9, 10e9, 20e9}
    assert np.isnan(assign("server-cpu", "device", 2, 0, builtin_catalog()).column("head_blocks")).all()


def test_fedscale_capacity_pickle_and_json_agree_and_convert_units():
    cat = builtin_catalog()
    pkl, js = f"file:{DATA / 'fedscale_device_capacity.pkl'}", f"file:{DATA / 'fedscale_device_capacity.json'}"
    dev = assign(pkl, "device", 7, 0, cat)
    assert len(dev.profiles) == 5 and dev.index.tolist() == [0, 1, 2, 3, 4, 0, 1]
    # sorted ids 1..5 have computation 30, 60, 120, 60, 240 ms per sample
    ms = np.array([30.0, 60.0, 120.0, 60.0, 240.0, 30.0, 60.0])
    assert dev.column("flops") == pytest.approx(fedscale.REFERENCE_FLOPS_PER_SAMPLE / (ms / 1000))
    assert dev.of(0).name == "fedscale-1" and dev.of(4).flops == pytest.approx(0.6e9 / 0.24)
    assert assign(js, "device", 7, 0, cat).column("flops") == pytest.approx(dev.column("flops"))
    net = assign(pkl, "network", 5, 0, cat)
    kbps = np.array([10240.0, 5120.0, 2048.0, 5120.0, 1024.0])
    assert net.column("up_bps") == pytest.approx(kbps * 1024) and net.column("down_bps") == pytest.approx(kbps * 1024)
    assert net.of(2).up_bps == net.of(2).down_bps == 2048 * 1024
    assert net.column("rtt_s").tolist() == [0.0] * 5 and np.isnan(dev.column("head_blocks")).all()
    doubled = assign(pkl, "device", 2, 0, cat, fedscale_reference_flops=1.2e9)
    assert doubled.column("flops") == pytest.approx(2 * dev.column("flops")[:2])


def test_fedft_json_list_assigns_names_cyclically(tmp_path):
    path = _write(tmp_path, "clients.json", json.dumps(["rpi4", "laptop", "rpi4"]))
    a = assign(f"file:{path}", "device", 5, 0, builtin_catalog())
    assert [a.of(i).name for i in range(5)] == ["rpi4", "laptop", "rpi4", "rpi4", "laptop"]
    assert len(a.profiles) == 2
    with pytest.raises(ConfigError, match="unknown device profile 'toaster'"):
        assign(f"file:{_write(tmp_path, 'b.json', json.dumps(['toaster']))}", "device", 2, 0, builtin_catalog())


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload", [Evil(), {1: {"computation": np.float64(3.0), "communication": 1.0}},
                                     {1: {3, 4}}, {1: b"raw"}])
def test_the_unpickler_refuses_anything_but_plain_data(tmp_path, payload, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ConfigError) as e:
        assign(f"file:{path}", "device", 2, 0, builtin_catalog())
    assert "\n" not in str(e.value) and "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("data, needle", [({"1": {"computation": 0, "communication": 5}}, "'computation' must be"),
                                          ({"1": {"computation": 5}}, "'communication' must be"),
                                          ({}, "non-empty dict")])
def test_bad_fedscale_entries_name_the_client(tmp_path, data, needle):
    path = _write(tmp_path, "cap.json", json.dumps(data))
    with pytest.raises(ConfigError, match=needle):
        assign(f"file:{path}", "network", 2, 0, builtin_catalog())


def test_fedft_profiles_command(tmp_path, capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DEVICES + NETWORKS) and "GFLOP/s" in out and "Mbit/s" in out
    user = _write(tmp_path, "u.toml", "[device.mybox]\ngflops = 42\nmemory_gib = 1\n")
    assert main(["profiles", "--json", "--file", user]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["devices"]["mybox"]["flops"] == 42e9 and data["networks"]["4g-trace"]["trace"][1][0] == 40.0
    assert set(DEVICES) <= set(data["devices"]) and set(NETWORKS) <= set(data["networks"])
    assert main(["profiles", "--file", str(tmp_path / "missing.toml")]) == 2
    assert "resources.profiles: no file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["profiles", "--help"])
    assert e.value.code == 0 and "--json" in capsys.readouterr().out
