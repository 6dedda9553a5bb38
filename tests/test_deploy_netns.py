"""A real multi-host deployment on network namespaces (experiments/deploy/netns.py).

A server namespace runs flower-superlink (TLS + SuperNode authentication) and, inside the
ServerApp, the body service (TLS) on its own network; three client namespaces run one
flower-supernode each. A 2-round SFPrompt job on tiny models is submitted with `flwr run`; its
ledger and final metrics must equal the in-process engine's. Needs root and iproute2; skipped
otherwise. Every process is stopped by PID and the namespaces are deleted at teardown.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

from fedft.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fedft_netns", ROOT / "experiments/deploy/netns.py")
netns = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["fedft_netns"] = netns
_spec.loader.exec_module(netns)  # type: ignore[union-attr]

_why = netns.available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why is not None, reason=f"no network namespaces: {_why}")]

TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
        "data.test_size=32", "partition.num_clients=3", "partition.scheme=iid", "partition.min_size=4",
        "train.batch_size=8", "method.prompt_len=4", "federation.rounds=2", "output.plots=false",
        # fp32: the metrics are compared exactly across processes, and bf16 kernels on a CPU with
        # native bf16 give last-bit differences between a fresh process and a shared one
        "train.precision=fp32"]
COMPARED = ("params_down", "params_up", "activations_up", "activations_down", "grads_up", "grads_down")


def job(*overrides: str) -> ExperimentConfig:
    return ExperimentConfig.from_toml(ROOT / "experiments/configs/sfprompt_mnist.toml", [*TINY, *overrides])


@pytest.fixture
def testbed():
    tb = netns.Testbed(f"fd{os.getpid() % 100000}", 3)
    try:
        yield tb.up()
    finally:
        tb.down()


def test_deployment_matches_inprocess_and_refuses_unknown_supernode(testbed, tmp_path):
    from fedft.runner import run

    cfg = job()
    d = netns.deploy_job(testbed, cfg, tmp_path / "deploy", tmp_path / "deploy-run", app_src=ROOT, rogue=True)
    ref = run(cfg.replace(federation=dataclasses.replace(cfg.federation, engine="inprocess")),
              tmp_path / "inprocess", show=False)

    got, want = d.summary["bytes_by_kind"], ref["bytes_by_kind"]
    assert {k: got.get(k) for k in COMPARED} == {k: want.get(k) for k in COMPARED}
    assert got["activations_up"] > 0 and got["params_up"] > 0
    assert abs(d.summary["final_accuracy"] - ref["final_accuracy"]) <= 1e-6
    # the same numbers up to float32 rounding: two processes' kernels need not sum in one order
    assert d.summary["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-5, abs=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "deploy-run" / "metrics.csv")))
    assert [int(r["clients"]) for r in rows] == [3, 3] and all(int(r["failed"]) == 0 for r in rows)

    # The unregistered SuperNode was refused by the SuperLink and exited; it never served a message.
    assert d.rogue is not None and d.rogue.poll() not in (None, 0)
    assert "Failed to activate SuperNode" in d.log("supernode-rogue").read_text()

    # What crossed the server's interfaces is at least what the ledger counts on each channel.
    srv = testbed.server.ns
    body_ledger = sum(got[k] for k in COMPARED if not k.startswith("params"))
    assert d.wire(srv, "bd0") >= body_ledger
    assert d.wire(srv, "fl0") >= got["params_up"] + got["params_down"]


def test_body_service_refuses_wrong_token_and_plaintext_across_hosts(testbed, tmp_path):
    from fedft.deploy import generate_certs

    certs = tmp_path / "certs"
    generate_certs(certs, [netns.SERVER_BODY_IP], nodes=0)
    probe = str(ROOT / "experiments/deploy/body_probe.py")
    env = dict(os.environ)
    server = testbed.popen(testbed.server, [sys.executable, probe, "serve", netns.SERVER_BODY_IP, str(certs), "s3cret"],
                           env, tmp_path / "serve.log")
    log = tmp_path / "serve.log"
    deadline = time.time() + 60
    while "PORT" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline and server.poll() is None, log.read_text()
        time.sleep(0.2)
    port = log.read_text().split("PORT")[1].split()[0]
    ca = str(certs / "ca.crt")
    p = testbed.run(testbed.clients[0], [sys.executable, probe, "call", f"{netns.SERVER_BODY_IP}:{port}",
                                         "s3cret", ca, "wrong", ca, "s3cret", "-"], env, timeout=120)
    assert p.stdout.split() == ["OK", "UNAUTHENTICATED", "UNAVAILABLE"], p.stdout + p.stderr


def _running(tb, host, name: bytes) -> bool:
    for pid in tb.pids(host.ns):
        try:
            if name in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


def test_run_completes_when_a_supernode_dies_mid_run(testbed, tmp_path):
    cfg = job("deploy.round_timeout_s=60")
    victim = testbed.clients[2]
    killed: list[float] = []

    def watch(tb, d) -> None:
        """SIGKILL client 2's whole host while it handles its round-1 train message: the body
        service listens (so the hello round is over) and a ClientApp process is running."""
        if killed:
            return
        body_up = netns.SERVER_BODY_IP in tb.run(tb.server, ["ss", "-ltnH"], dict(os.environ)).stdout
        if body_up and _running(tb, victim, b"flwr-clientapp"):
            tb.kill_host(victim)
            killed.append(time.time())

    d = netns.deploy_job(testbed, cfg, tmp_path / "deploy", tmp_path / "run", app_src=ROOT, watch=watch)
    assert killed, "client 2 never started its round"
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 2 and d.summary["final_accuracy"] is not None
    assert [(int(r["clients"]), int(r["failed"])) for r in rows] == [(2, 1), (2, 1)]
