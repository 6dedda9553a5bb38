"""A multi-host test bed out of Linux network namespaces, and one fedft deployment on it.

Topology (all inside namespaces this module creates; needs root and ``ip``)::

    <p>-srv  fl0 10.77.0.1/25   ──┐ bridge brf ┌── fl0 10.77.0.11+K/25   <p>-cK   (Flower)
             bd0 10.77.0.129/25 ──┘ bridge brb └── bd0 10.77.0.139+K/25           (body service)
                                   (both bridges in <p>-sw)

Flower (SuperLink <-> SuperNodes) and the body service use separate networks, so the byte
counters of the server's ``fl0`` and ``bd0`` separate the two channels without packet filters.
The SuperLink runs with TLS and SuperNode authentication, the body service with TLS, and each
client namespace runs one SuperNode; the job is submitted with ``flwr run`` from the server host.
Everything is started through the command builders of :mod:`fedft.deploy`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedft import deploy
from fedft.config import ExperimentConfig, to_toml

SERVER_FLOWER_IP, SERVER_BODY_IP = "10.77.0.1", "10.77.0.129"
LINK_PORT = 8000


def available() -> str | None:
    """Why a test bed cannot be built here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"fdprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` failed (no CAP_SYS_ADMIN or no netns support)"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


TC = shutil.which("tc") or "/usr/sbin/tc"


def netem_available() -> bool:
    """Whether ``tc qdisc ... netem`` works here (minimal kernels lack ``sch_netem``)."""
    probe = f"fdnetem{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return False
    try:
        return all(subprocess.run(cmd, capture_output=True).returncode == 0 for cmd in (
            ["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"],
            [TC, "-n", probe, "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms", "rate", "1mbit"]))
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


def shape(tb: Testbed, delay_ms: float, rate_mbit: float, limit: int = 1000) -> None:
    """``tc netem delay <delay_ms> rate <rate_mbit>`` on both ends of every client's two links: the
    client's ``fl0``/``bd0`` (its uplink) and their switch-side ends (its downlink). Each client
    then has its own link, the RTT to the server is 2 x ``delay_ms``, the server's side is unshaped."""
    for k, h in enumerate(tb.clients):
        for dev in ("fl0", "bd0"):
            for ns, name in ((h.ns, dev), (tb.switch, f"h{k + 1}-{dev}")):
                p = subprocess.run([TC, "-n", ns, "qdisc", "replace", "dev", name, "root", "netem", "delay",
                                    f"{delay_ms}ms", "rate", f"{rate_mbit}mbit", "limit", str(limit)],
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    raise RuntimeError(f"tc netem on {ns}/{name}: {p.stderr.strip()}")


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {p.stderr.strip()}")


@dataclass
class Host:
    ns: str
    flower_ip: str
    body_ip: str


class Testbed:
    """Namespaces ``<prefix>-srv``, ``<prefix>-c0..``, ``<prefix>-sw``; :meth:`down` removes them and
    ends every process still running inside them."""

    def __init__(self, prefix: str, n_clients: int) -> None:
        self.prefix = prefix
        self.server = Host(f"{prefix}-srv", SERVER_FLOWER_IP, SERVER_BODY_IP)
        self.clients = [Host(f"{prefix}-c{k}", f"10.77.0.{11 + k}", f"10.77.0.{139 + k}") for k in range(n_clients)]
        self.switch = f"{prefix}-sw"
        self.procs: list[subprocess.Popen] = []

    def up(self) -> Testbed:
        self.down()  # leftovers of an interrupted run with the same prefix
        _ip("netns", "add", self.switch)
        for br in ("brf", "brb"):
            _ip("-n", self.switch, "link", "add", br, "type", "bridge")
            _ip("-n", self.switch, "link", "set", br, "up")
        for i, h in enumerate([self.server, *self.clients]):
            _ip("netns", "add", h.ns)
            _ip("-n", h.ns, "link", "set", "lo", "up")
            for dev, br, addr in (("fl0", "brf", h.flower_ip), ("bd0", "brb", h.body_ip)):
                peer = f"h{i}-{dev}"
                _ip("link", "add", dev, "netns", h.ns, "type", "veth", "peer", "name", peer, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", peer, "master", br, "up")
                _ip("-n", h.ns, "addr", "add", f"{addr}/25", "dev", dev)
                _ip("-n", h.ns, "link", "set", dev, "up")
        return self

    def namespaces(self) -> list[str]:
        return [self.server.ns, *(c.ns for c in self.clients), self.switch]

    def down(self) -> None:
        """Stop what this test bed started (TERM, then KILL), then delete its namespaces."""
        for p in self.procs:
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        names = {line.split()[0] for line in existing.splitlines() if line.strip()}
        for ns in self.namespaces():
            if ns in names:
                for pid in self.pids(ns):  # detached Flower children (superexec, apps) in our namespace
                    _kill(pid, signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def pids(self, ns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def popen(self, host: Host, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """Start ``cmd`` inside ``host``'s namespace (own process group), output to ``log``."""
        with open(log, "ab") as f:
            p = subprocess.Popen(["ip", "netns", "exec", host.ns, *cmd], env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, host: Host, cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", host.ns, *cmd], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def kill_host(self, host: Host) -> None:
        """SIGKILL every process in ``host``'s namespace (a machine losing power)."""
        for pid in self.pids(host.ns):
            _kill(pid, signal.SIGKILL)

    def counters(self) -> dict[str, int]:
        """rx/tx bytes of every host interface: ``{"<ns>/<dev>/rx": n, ...}``."""
        out: dict[str, int] = {}
        for h in [self.server, *self.clients]:
            for dev in ("fl0", "bd0"):
                stats = json.loads(subprocess.run(["ip", "-n", h.ns, "-j", "-s", "link", "show", "dev", dev],
                                                  capture_output=True, text=True, check=True).stdout)[0]["stats64"]
                out[f"{h.ns}/{dev}/rx"], out[f"{h.ns}/{dev}/tx"] = stats["rx"]["bytes"], stats["tx"]["bytes"]
        return out

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group this module created with start_new_session
    except ProcessLookupError:
        pass


# ---- one deployment ----------------------------------------------------------------------------

@dataclass
class Deployment:
    """Where a deployment keeps its files, and what it measured."""

    work: Path
    certs: Path = field(init=False)
    cli_home: Path = field(init=False)
    summary: dict | None = None
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rogue: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.certs, self.cli_home = self.work / "certs", self.work / "cli-home"

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"

    def wire(self, ns: str, dev: str) -> int:
        """Bytes both ways on ``ns``'s ``dev`` during the run."""
        return sum(self.counters_after[f"{ns}/{dev}/{d}"] - self.counters_before[f"{ns}/{dev}/{d}"]
                   for d in ("rx", "tx"))


def deploy_job(tb: Testbed, cfg: ExperimentConfig, work: Path, out: Path, *, app_src: Path,
               rogue: bool = False, timeout: float = 300.0,
               watch: Callable[[Testbed, Deployment], None] | None = None) -> Deployment:
    """Run ``cfg`` on the test bed: SuperLink + body service on the server, one SuperNode per client.

    ``rogue`` also starts a SuperNode whose key was never registered (it must be refused).
    ``watch`` is called about once a second while the run is in progress (fault injection).
    """
    d = Deployment(work)
    work.mkdir(parents=True, exist_ok=True)
    n = len(tb.clients)
    deploy.generate_certs(d.certs, [SERVER_FLOWER_IP, SERVER_BODY_IP], nodes=n + 1)
    link = f"{SERVER_FLOWER_IP}:{LINK_PORT}"
    tb.popen(tb.server, deploy.superlink_command(d.certs, port=LINK_PORT),
             deploy.flower_env(work / "link-home"), d.log("superlink"))
    deploy.write_connection(d.cli_home, "fedft", link, d.certs / "ca.crt")
    cli_env = deploy.flower_env(d.cli_home)
    for k in range(n):  # registering also waits for the SuperLink to come up
        _retry(lambda k=k: tb.run(tb.server, deploy.register_command(
            deploy.node_key(d.certs, k).with_suffix(".pub"), "fedft"), cli_env), f"register key {k}")
    for k, h in enumerate(tb.clients):
        tb.popen(h, deploy.supernode_command(d.certs, link, k, n), deploy.flower_env(work / f"node-{k}"),
                 d.log(f"supernode-{k}"))
    if rogue:
        d.rogue = tb.popen(tb.clients[0], deploy.supernode_command(d.certs, link, 0, n, port=9095, max_retries=0,
                                                         key=deploy.node_key(d.certs, n)),
                 deploy.flower_env(work / "node-rogue"), d.log("supernode-rogue"))
    body = cfg.deploy.__class__(body_host=SERVER_BODY_IP, body_tls=True, cert_dir=str(d.certs),
                                round_timeout_s=cfg.deploy.round_timeout_s)
    stage = deploy.stage_app(to_toml(cfg.replace(deploy=body)), app_src, work / "app")
    d.counters_before = tb.counters()
    t0 = time.time()
    p = tb.run(tb.server, deploy.submit_command(stage, "fedft", str(out), stream=False), cli_env, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"flwr run failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
    (work / "submit.log").write_text(p.stdout + p.stderr)
    summary_path = out / "summary.json"
    while not summary_path.is_file():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"no {summary_path} after {timeout:.0f} s; logs in {work}")
        if watch is not None:
            watch(tb, d)
        time.sleep(1.0)
    d.seconds = time.time() - t0
    d.counters_after = tb.counters()
    d.summary = json.loads(summary_path.read_text())
    return d


def _retry(fn: Callable[[], subprocess.CompletedProcess], what: str, tries: int = 40) -> None:
    for _ in range(tries):
        p = fn()
        if p.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} failed: {p.stdout[-1500:]} {p.stderr[-1500:]}")
