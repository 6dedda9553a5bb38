"""The ``[resources]`` section of the experiment config (re-exported by :mod:`fedft.config`).

Profile assignments (``devices``, ``networks``) take one of three forms:

* ``"phone-mid"``: every client gets this profile;
* ``"phone-mid=0.6,rpi4=0.4"``: a seeded mixture with these proportions (exact counts, shuffled
  with the run's seed);
* ``"file:clients.json"``: a per-client file (fedft's JSON, or FedScale's
  ``client_device_capacity``; docs/resources.md).

``devices = ""`` (the default) turns the resource model off: no simulated time, no memory check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedft.errors import check as _check


@dataclass(frozen=True)
class ResourcesConfig:
    """Devices, links, the server, deadlines and availability of a simulated federation. [D] off."""

    devices: str = ""  # client device profiles: a name, name=p mixture, or file:<path>; "" = off
    networks: str = "wifi-home"  # [D] client links, same forms as devices
    server: str = "server-cpu"  # [D] the server's device profile (body compute)
    # [D] how many client requests the server computes at once when clients do not share one
    # trainable body (frozen body, SFL-V1 copies); 0 = unbounded. A shared body serves one at a time
    server_parallel: int = 0
    profiles: str = ""  # extra profiles: a TOML or JSON file of [device.<name>] / [network.<name>]
    deadline_s: float = 0.0  # round deadline in simulated seconds; 0 = none
    # [D] what happens to a client that would miss the deadline: dropped (its update is discarded),
    # or partial (it stops training when its own simulated clock reaches the deadline; FedScale-style)
    stragglers: Literal["drop", "partial"] = "drop"
    over_selection: float = 0.0  # [D] 0; sample ceil(K (1 + x)) clients, keep the first K to finish
    # client availability: "always", "cyclic:<online_s>,<offline_s>" (seeded phases), or
    # "file:<path>" (FedScale client_behave_trace, JSON or pickle of plain dicts)
    availability: str = "always"
    memory_check: bool = True  # refuse a run whose client part does not fit its device's memory
    # [D] 0; seconds the deployment adds to every round beyond the model (Flower's message pickup and
    # per-message process start-up); calibrate it on your deployment (experiments/reports/resources.md)
    round_overhead_s: float = 0.0
    # heterogeneous split points: "config" (split.head_blocks / tail_blocks for everyone),
    # "profile" (each device profile's own cut), or "file:<path>" (JSON {client id: [h, t]})
    cuts: str = "config"

    def __post_init__(self) -> None:
        _check(self.server_parallel >= 0, "resources.server_parallel", "an integer >= 0 (0 = unbounded)")
        _check(self.deadline_s >= 0, "resources.deadline_s", "a number of seconds >= 0 (0 = no deadline)")
        _check(self.over_selection >= 0, "resources.over_selection", "a float >= 0")
        _check(self.round_overhead_s >= 0, "resources.round_overhead_s", "a number of seconds >= 0")
        _check(self.cuts in ("config", "profile") or self.cuts.startswith("file:"), "resources.cuts",
               "config, profile or file:<path>")

    @property
    def enabled(self) -> bool:
        return bool(self.devices)
