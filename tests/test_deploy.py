"""`fedft deploy`: certificates, Flower command lines, the staged app, DeployConfig, and a body
service restarted in the middle of a round (in-process engine)."""

from __future__ import annotations

import argparse
import asyncio
import csv
import ipaddress
import sys
import tomllib
from pathlib import Path

import pytest

from fedft import deploy, keys
from fedft.config import ExperimentConfig
from fedft.deploy_config import DeployConfig, body_root_cert, body_service_args
from fedft.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
        "data.test_size=16", "partition.num_clients=3", "partition.scheme=iid", "partition.min_size=4",
        "train.batch_size=8", "method.prompt_len=4", "federation.rounds=2", "output.plots=false"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedft")
    deploy.add_deploy_parser(p.add_subparsers(dest="command"))
    return p


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    deploy.generate_certs(out, ["10.0.0.7", "server.example"], nodes=2)
    return out


def test_certs_chain_sans_and_key_modes(certs):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    srv.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.0.0.7"),
                                                             ipaddress.ip_address("127.0.0.1")}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "server.example"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("ca.key", "server.key", "supernode-0.key", "supernode-1.key"):
        assert (certs / name).stat().st_mode & 0o077 == 0, name
    for k in (0, 1):  # the formats flower-supernode and `flwr supernode register` load
        from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

        priv = load_ssh_private_key(deploy.node_key(certs, k).read_bytes(), None)
        pub = load_ssh_public_key(deploy.node_key(certs, k).with_suffix(".pub").read_bytes())
        assert isinstance(priv, ec.EllipticCurvePrivateKey) and priv.public_key() == pub
    assert not (certs / "supernode-2.key").exists()


def test_flower_accepts_the_node_public_key(certs):
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(certs / "supernode-0.pub")


def test_superlink_and_supernode_commands(certs):
    link = deploy.superlink_command(certs, port=9000, database="state.db")
    assert link[:3] == [sys.executable, "-m", "fedft.superlink_guard"] and "--insecure" not in link
    for flag, value in (("--ssl-ca-certfile", "ca.crt"), ("--ssl-certfile", "server.pem"),
                        ("--ssl-keyfile", "server.key"), ("--port", "9000"), ("--host", "0.0.0.0"),
                        ("--database", "state.db")):
        assert link[link.index(flag) + 1].endswith(value)
    assert "--enable-supernode-auth" in link and "--disable-runtime-dependency-installation" in link

    node = deploy.supernode_command(certs, "10.0.0.7:8000", 2, 3, port=9096)
    assert node[node.index("--superlink") + 1] == "10.0.0.7:8000"
    assert node[node.index("--root-certificates") + 1] == str(certs / "ca.crt")
    assert node[node.index("--auth-supernode-private-key") + 1] == str(certs / "supernode-2.key")
    assert node[node.index("--node-config") + 1] == "partition-id=2 num-partitions=3"
    assert node[node.index("--port") + 1] == "9096" and "--insecure" not in node
    assert "--allow-runtime-dependency-installation" not in node
    assert "--insecure" in deploy.superlink_command(certs, insecure=True)
    assert "--root-certificates" not in deploy.supernode_command(certs, "h:1", 0, 1, insecure=True)


def test_control_api_local_by_default_exposed_only_on_request(certs, capsys):
    """The SuperLink runs behind fedft.superlink_guard unless --expose-control-api (with a warning)."""
    exposed = deploy.superlink_command(certs, expose_control_api=True)
    assert exposed[0].endswith("flower-superlink") and "superlink_guard" not in " ".join(exposed)
    assert exposed[1:] == deploy.superlink_command(certs)[3:]  # the same Flower flags either way
    args = parser().parse_args(["deploy", "superlink", "--certs", str(certs), "--dry-run"])
    assert args.fn(args) == 0
    out = capsys.readouterr()
    assert "-m fedft.superlink_guard" in out.out and out.err == ""
    args = parser().parse_args(["deploy", "superlink", "--certs", str(certs), "--dry-run", "--expose-control-api"])
    assert args.fn(args) == 0
    out = capsys.readouterr()
    assert "superlink_guard" not in out.out and "--expose-control-api" in out.err


def test_control_guard_refuses_other_hosts_on_control_paths_only():
    from fedft.superlink_guard import CONTROL_PREFIX, ControlGuard, is_local

    def call(path: str, client: str, server: str = "10.0.0.7") -> int:
        sent, reached = [], []

        async def app(scope, receive, send):
            reached.append(scope["path"])
            await send({"type": "http.response.start", "status": 200, "headers": []})

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "path": path, "client": (client, 5555), "server": (server, 8000)}
        asyncio.run(ControlGuard(app)(scope, None, send))
        assert bool(reached) == (sent[0]["status"] == 200)
        return sent[0]["status"]

    assert call(f"{CONTROL_PREFIX}/start-run", "10.0.0.9") == 403  # another host
    assert call(f"{CONTROL_PREFIX}/start-run", "127.0.0.1") == 200  # loopback
    assert call(f"{CONTROL_PREFIX}/start-run", "::1", "::1") == 200
    assert call(f"{CONTROL_PREFIX}/start-run", "10.0.0.7") == 200  # this host dialling its own IP
    assert call("/v1/fleet/pull-messages", "10.0.0.9") == 200  # SuperNodes keep the Fleet API
    assert not is_local({"type": "http", "path": CONTROL_PREFIX})  # no peer: refused


def test_control_guard_installs_into_flowers_app_factory(monkeypatch):
    import flwr.superlink.main as link_main

    from fedft import superlink_guard

    monkeypatch.setattr(link_main, "create_app", link_main.create_app)  # restored after the test
    superlink_guard.install()
    superlink_guard.install()  # idempotent
    app = link_main.create_app()
    assert [m.cls for m in app.user_middleware][0] is superlink_guard.ControlGuard  # outermost


def test_insecure_only_with_a_warning(certs, capsys):
    args = parser().parse_args(["deploy", "superlink", "--certs", str(certs), "--dry-run", "--insecure"])
    assert args.fn(args) == 0
    out = capsys.readouterr()
    assert "WARNING" in out.err and "--insecure" in out.out
    args = parser().parse_args(["deploy", "supernode", "--certs", str(certs), "--superlink", "h:8000",
                                "--partition-id", "1", "--num-partitions", "3", "--dry-run"])
    assert args.fn(args) == 0
    out = capsys.readouterr()
    assert out.err == "" and "--auth-supernode-private-key" in out.out and "partition-id=1" in out.out


def test_register_writes_a_tls_connection_flower_reads(certs, tmp_path, capsys, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    home = tmp_path / "flwr-home"
    args = parser().parse_args(["deploy", "register", "--certs", str(certs), "--superlink", "10.0.0.7:8000",
                                "--nodes", "2", "--flwr-home", str(home), "--dry-run"])
    assert args.fn(args) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "supernode register" in x]
    assert len(lines) == 2 and lines[1].endswith("supernode-1.pub fedft")
    deploy.write_connection(home, "fedft", "10.0.0.7:8000", certs / "ca.crt")
    doc = tomllib.loads((home / "config.toml").read_text())
    assert doc["superlink"]["fedft"] == {"address": "10.0.0.7:8000", "root-certificates": str(certs / "ca.crt")}
    assert doc["superlink"]["local"] == {"address": ":local:"}

    monkeypatch.setenv("FLWR_HOME", str(home))
    conn = read_superlink_connection("fedft")
    assert conn.address == "10.0.0.7:8000" and not conn.insecure and conn.root_certificates == str(certs / "ca.crt")


def test_submit_stages_an_app_whose_server_reads_the_job(certs, tmp_path, capsys):
    from fedft.federated.apps import config_from_run_config

    stage = tmp_path / "stage"
    cfg_file = ROOT / "experiments/configs/sfprompt_mnist.toml"
    args = parser().parse_args(["deploy", "submit", "--certs", str(certs), "--superlink", "10.0.0.7:8000",
                                "-c", str(cfg_file), "--set", "federation.rounds=3", "--body-host", "10.0.0.7",
                                "--app", str(ROOT), "--stage", str(stage), "--out", "/srv/run1",
                                "--flwr-home", str(tmp_path / "h"), "--dry-run"])
    assert args.fn(args) == 0
    cmd = capsys.readouterr().out.splitlines()[-1]
    assert cmd.endswith(f"run {stage} fedft --run-config 'config-file=\"fedft-job.toml\" out=\"/srv/run1\"' --stream")
    assert {p.name for p in stage.iterdir()} == {"pyproject.toml", "server", "clients", deploy.JOB_FILE}
    declared = tomllib.loads((stage / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    from fedft.config import flatten

    run_config = dict(flatten(declared), **{"config-file": deploy.JOB_FILE, "out": "/srv/run1"})
    cfg, out = config_from_run_config(run_config, stage)
    assert out == "/srv/run1" and cfg.federation.rounds == 3 and cfg.method.name == "prompt_tuning"
    assert cfg.deploy == DeployConfig(body_host="10.0.0.7", body_tls=True, cert_dir=str(certs.resolve()))


def test_deploy_config_checks_and_tls_files(certs):
    with pytest.raises(ConfigError, match="deploy.cert_dir"):
        DeployConfig(body_tls=True)
    with pytest.raises(ConfigError, match="deploy.body_host"):
        DeployConfig(body_host="0.0.0.0")
    with pytest.raises(ConfigError, match="round_timeout_s"):
        ExperimentConfig.from_overrides(["deploy.round_timeout_s=0"])
    args = body_service_args(DeployConfig())
    assert {k: args[k] for k in ("host", "port", "tls")} == {"host": "127.0.0.1", "port": 0, "tls": None}
    d = DeployConfig(body_host="10.0.0.7", body_tls=True, cert_dir=str(certs))
    assert body_service_args(d)["tls"] == ((certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes())
    assert body_root_cert(d) == (certs / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match="cannot read"):
        body_root_cert(DeployConfig(body_tls=True, cert_dir=str(certs / "missing")))


def test_body_limits_from_the_deploy_section():
    from fedft.body.limits import BodyLimits
    from fedft.deploy_config import body_limits

    assert body_limits(DeployConfig()) == BodyLimits()  # the section's [D] defaults are the service's
    lim = body_limits(DeployConfig(body_max_sessions=9, body_memory_budget_gib=0.5))
    assert lim.max_sessions == 9 and lim.memory_budget_bytes == 2**29
    assert body_service_args(DeployConfig())["limits"] == BodyLimits()
    for bad in ({"body_max_sessions": 0}, {"body_max_requests_per_session": -1}, {"body_memory_budget_gib": 0}):
        with pytest.raises(ConfigError, match=f"deploy.{next(iter(bad))}"):
            DeployConfig(**bad)


def test_tls_body_service_with_generated_certs(certs, tmp_path):
    """Rounds over a TLS body service: clients get the CA in the round's config and verify the server."""
    from fedft.federated.engine import inprocess_dispatch
    from fedft.federated.loop import run_rounds
    from fedft.federated.server import ServerRuntime
    from fedft.outputs import RunDir

    cfg = ExperimentConfig.from_toml(ROOT / "experiments/configs/sfprompt_mnist.toml",
                                     [*TINY, "federation.rounds=1", "deploy.body_tls=true", f"deploy.cert_dir={certs}"])
    srv = ServerRuntime(cfg, RunDir(tmp_path / "run"))
    srv.start_body_service(**body_service_args(cfg.deploy))  # type: ignore[arg-type]
    try:
        assert srv.round_extra()[keys.BODY_ROOT_CERT] == (certs / "ca.crt").read_bytes()
        summary = run_rounds(srv, inprocess_dispatch(srv), progress=False)
    finally:
        srv.stop()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert int(rows[0]["clients"]) == 3 and summary["bytes_by_kind"]["activations_up"] > 0


def test_body_service_restart_mid_round_fails_those_clients_then_recovers(tmp_path):
    from fedft.federated.engine import inprocess_dispatch
    from fedft.federated.loop import run_rounds
    from fedft.federated.server import ServerRuntime
    from fedft.outputs import RunDir

    cfg = ExperimentConfig.from_toml(ROOT / "experiments/configs/sfprompt_mnist.toml", TINY)
    srv = ServerRuntime(cfg, RunDir(tmp_path / "run"))
    srv.start_body_service()
    base = inprocess_dispatch(srv)
    restarted = []

    def dispatch(rnd, pids, content):  # round 1: restart after the first client; the rest hold the old address
        if rnd != 1:
            return base(rnd, pids, content)
        first = base(rnd, pids[:1], content)
        srv.stop()
        srv.start_body_service()
        restarted.append(srv.service.address)
        return first + base(rnd, pids[1:], content)

    try:
        summary = run_rounds(srv, dispatch, progress=False)
    finally:
        srv.stop()
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert restarted and [(int(r["clients"]), int(r["failed"])) for r in rows] == [(1, 2), (3, 0)]
    assert summary["final_accuracy"] is not None
