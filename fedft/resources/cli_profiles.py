"""``fedft profiles``: list the device and network profiles (built-ins plus a user's file)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fedft.resources.profiles import Catalog, DeviceProfile, NetworkProfile, load_catalog

DESCRIPTION = ("List the device and network profiles that resources.devices, resources.networks and "
               "resources.server can name: sustained fp32 training FLOP/s, memory for the client "
               "process, energy, the suggested split cut, link bandwidths and round-trip time, and each "
               "number's source (full citations in docs/resources.md). --file adds a user's TOML or JSON "
               "file of [device.<name>] / [network.<name>] tables (as resources.profiles does).")


def add_profiles_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedft profiles [--file F] [--json]`` to the ``fedft`` parser."""
    p = sub.add_parser("profiles", help="list the device and network profiles (resources.devices/networks)",
                       description=DESCRIPTION)
    p.add_argument("--file", "-f", default="", metavar="F",
                   help="also load this user catalogue (TOML or JSON; its profiles replace same-named ones)")
    p.add_argument("--json", action="store_true", help="print JSON (SI units: FLOP/s, bytes, bit/s, s)")
    p.set_defaults(fn=cmd_profiles)


def cmd_profiles(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.file)
    if args.json:
        print(json.dumps(catalog_dict(catalog), indent=1))
    else:
        print_tables(catalog)
    return 0


def catalog_dict(catalog: Catalog) -> dict[str, Any]:
    """The catalogue as JSON-ready dicts, in SI units."""
    def plain(p: DeviceProfile | NetworkProfile) -> dict[str, Any]:
        d = dict(vars(p))
        if "trace" in d:
            d["trace"] = [list(seg) for seg in d["trace"]]
        return d

    return {"devices": {k: plain(v) for k, v in catalog.devices.items()},
            "networks": {k: plain(v) for k, v in catalog.networks.items()}}


def _rate(flops: float) -> str:
    return f"{flops / 1e12:.3g} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.3g} GFLOP/s"


def _mbps(bps: float) -> str:
    mbps = bps / 1e6
    return f"{mbps:.4g}" if mbps < 1000 else f"{mbps:,.0f}"


def print_tables(catalog: Catalog) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    devices = Table(title="device profiles (resources.devices, resources.server)", header_style="bold")
    for col, just in (("name", "left"), ("training rate", "right"), ("% of peak", "right"),
                      ("memory GiB", "right"), ("J/GFLOP", "right"), ("J/MB", "right"), ("cut h/t", "right"),
                      ("description", "left"), ("source", "left")):
        devices.add_column(col, justify=just, no_wrap=col == "name", overflow="fold")  # type: ignore[arg-type]
    for d in catalog.devices.values():
        cut = "-" if d.head_blocks is None else f"{d.head_blocks}/{d.tail_blocks}"
        peak = f"{100 * d.flops / d.peak_flops:.0f}" if d.peak_flops else "-"
        devices.add_row(d.name, _rate(d.flops), peak, f"{d.memory_bytes / 2**30:.3g}",
                        f"{d.joules_per_flop * 1e9:.3g}" if d.joules_per_flop else "-",
                        f"{d.joules_per_byte * 1e6:.3g}" if d.joules_per_byte else "-", cut, d.description, d.source)
    networks = Table(title="network profiles (resources.networks)", header_style="bold")
    for col, just in (("name", "left"), ("up Mbit/s", "right"), ("down Mbit/s", "right"), ("RTT ms", "right"),
                      ("trace", "left"), ("description", "left"), ("source", "left")):
        networks.add_column(col, justify=just, no_wrap=col == "name", overflow="fold")  # type: ignore[arg-type]
    for n in catalog.networks.values():
        trace = (f"{len(n.trace)} segments / {n.trace_period_s:g} s (mean shown)" if n.trace else "-")
        networks.add_row(n.name, _mbps(n.up_bps), _mbps(n.down_bps), f"{n.rtt_s * 1e3:.3g}", trace,
                         n.description, n.source)
    console.print(devices)
    console.print(networks)
