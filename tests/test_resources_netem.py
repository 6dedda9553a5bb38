"""The link emulator of experiments/resources_netem.py (the netem validation of the time model).

``departure`` is netem's rule (sch_netem.c with ``rate``), checked on hand-computed frames. With
root, a shaped test bed link must be at least as slow as its setting: the emulator never hands a
frame on before its arrival + delay, nor faster than the rate (lower bounds hold whatever the
machine's load), and stopping it leaves no TAP device or namespace behind.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


netem = _load("fedft_resources_netem", ROOT / "experiments/resources_netem.py")
netns = _load("fedft_netns", ROOT / "experiments/deploy/netns.py")


def test_departure_is_netems_delay_then_serialisation():
    d, r = 0.010, 8e6  # 10 ms; 8 Mbit/s: 1000 bytes take 1 ms
    first = netem.departure(0.0, 1000, 0.0, d, r)
    second = netem.departure(0.0, 1000, first, d, r)  # queued behind the first
    third = netem.departure(0.0005, 1000, second, d, r)
    late = netem.departure(1.0, 1000, 0.0, d, r)  # the queue had drained
    assert [round(x, 9) for x in (first, second, third, late)] == [0.011, 0.012, 0.013, 1.011]
    last = 0.0
    for _ in range(100):  # a burst leaves at the rate, after one delay
        last = netem.departure(0.0, 1500, last, d, r)
    assert last == pytest.approx(d + 100 * 1500 * 8 / r)


_why = netns.available()


@pytest.mark.slow
@pytest.mark.skipif(_why is not None, reason=f"no network namespaces: {_why}")
def test_shaped_link_is_no_faster_than_its_setting(tmp_path):
    netem.netns, netem.WORK = netns, tmp_path
    tb = netns.Testbed(f"ft{os.getpid() % 100000}", 1)
    try:
        tb.up()
        shaper = netem.Shaper(tb, 100.0, 8.0, tmp_path, kind="tap").start()
        try:
            check = netem.link_check(tb)
        finally:
            shaper.stop()
        assert check["rtt_ms"] >= 200.0  # 2 x 100 ms
        assert check["upload_1mib_s"] >= 8 * 2**20 / 8e6  # 1 MiB at 8 Mbit/s, headers not counted
        assert shaper.stats and sum(s["frames"] for s in shaper.stats) > 2**20 // 1500
        links = subprocess.run(["ip", "-n", tb.clients[0].ns, "link", "show"], capture_output=True, text=True).stdout
        assert "fl0" not in links and "bd0" not in links  # the TAP devices are gone
    finally:
        tb.down()
    assert tb.clients[0].ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
