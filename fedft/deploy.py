"""``fedft deploy``: certificates and the exact Flower command lines of a multi-machine run.

One server host runs the SuperLink and (inside the ServerApp) the body service; each client host
runs one SuperNode serving one partition. TLS and SuperNode authentication are on by default::

    fedft deploy certs --out certs --hosts 10.0.0.1 --nodes 3          # once, on the server
    fedft deploy superlink --certs certs                               # server
    fedft deploy register --certs certs --superlink 127.0.0.1:8000     # server: allow the 3 keys
    fedft deploy supernode --certs certs --superlink 10.0.0.1:8000 --partition-id 0 --num-partitions 3
    fedft deploy submit --certs certs --superlink 127.0.0.1:8000 --body-host 10.0.0.1 -c job.toml

The SuperLink's Control API (register, submit, ``flwr ls/stop``) answers only on the server host
unless ``--expose-control-api`` (:mod:`fedft.superlink_guard`); the Fleet API on the same port
serves every host. Every subcommand prints the command it runs; ``--dry-run`` only prints. See
``experiments/deploy/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import shlex
import shutil
import sys
from pathlib import Path

from fedft.deploy_config import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY

FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
JOB_FILE = "fedft-job.toml"  # the resolved experiment config inside the staged app
INSECURE_WARNING = ("fedft deploy: WARNING: --insecure turns TLS off; model updates, the body-service "
                    "token and every activation travel in clear text. Use it only on a trusted network.")


def node_key(cert_dir: Path, pid: int) -> Path:
    """The SuperNode private key of partition ``pid`` (OpenSSH format); ``.pub`` is its public key."""
    return cert_dir / f"supernode-{pid}.key"


# ---- certificates ------------------------------------------------------------------------------

def generate_certs(out: Path, hosts: list[str], nodes: int, days: int = 365) -> list[Path]:
    """A CA, a server certificate for ``hosts`` (plus localhost), and ``nodes`` SuperNode key pairs.

    The server certificate serves the SuperLink (all its APIs) and the body service. Returns the
    written paths; private keys are created with mode 0600.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, srv_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedft deployment CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = [_san(h) for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts])]
    cn = hosts[0] if hosts else "localhost"
    srv = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .sign(ca_key, hashes.SHA256()))
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    nokey = serialization.NoEncryption()
    written = [_write(out / CA_CERT, ca.public_bytes(pem)),
               _write(out / CA_KEY, ca_key.private_bytes(pem, pkcs8, nokey), secret=True),
               _write(out / SERVER_CERT, srv.public_bytes(pem)),
               _write(out / SERVER_KEY, srv_key.private_bytes(pem, pkcs8, nokey), secret=True)]
    for pid in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        priv = key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, nokey)
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        path = node_key(out, pid)
        written += [_write(path, priv, secret=True), _write(path.with_suffix(".pub"), pub + b"\n")]
    return written


def _san(host: str):  # -> x509.GeneralName
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, secret: bool = False) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


# ---- command lines -----------------------------------------------------------------------------

def tool(name: str) -> str:
    """A Flower executable: the one next to this Python if there is one, else the bare name (PATH)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def superlink_command(cert_dir: Path, host: str = "0.0.0.0", port: int = 8000, database: str = "",
                      insecure: bool = False, expose_control_api: bool = False) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication and no runtime dependency installation;
    run by :mod:`fedft.superlink_guard` (Control API for this host only) unless ``expose_control_api``."""
    cmd = [tool("flower-superlink")] if expose_control_api else [sys.executable, "-m", "fedft.superlink_guard"]
    cmd += ["--insecure"] if insecure else ["--ssl-ca-certfile", str(cert_dir / CA_CERT),
                                            "--ssl-certfile", str(cert_dir / SERVER_CERT),
                                            "--ssl-keyfile", str(cert_dir / SERVER_KEY)]
    cmd += ["--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", host, "--port", str(port)]
    return cmd + (["--database", database] if database else [])


def supernode_command(cert_dir: Path, superlink: str, partition_id: int, num_partitions: int,
                      port: int = 9094, key: Path | None = None, insecure: bool = False,
                      max_retries: int | None = None) -> list[str]:
    """``flower-supernode`` serving partition ``partition_id`` with its authentication key."""
    cmd = [tool("flower-supernode"), "--superlink", superlink]
    cmd += ["--insecure"] if insecure else ["--root-certificates", str(cert_dir / CA_CERT)]
    cmd += ["--auth-supernode-private-key", str(key or node_key(cert_dir, partition_id)),
            "--node-config", f"partition-id={partition_id} num-partitions={num_partitions}",
            "--port", str(port)]
    return cmd + ([] if max_retries is None else ["--max-retries", str(max_retries)])


def register_command(public_key: Path, connection: str) -> list[str]:
    """``flwr supernode register``: allow one SuperNode key on the SuperLink of ``connection``."""
    return [tool("flwr"), "supernode", "register", str(public_key), connection]


def submit_command(app_dir: Path, connection: str, out: str = "", stream: bool = True) -> list[str]:
    """``flwr run`` of a staged app (:func:`stage_app`) whose config file is :data:`JOB_FILE`."""
    run_config = f'config-file="{JOB_FILE}"' + (f' out="{out}"' if out else "")
    return [tool("flwr"), "run", str(app_dir), connection, "--run-config", run_config] + (
        ["--stream"] if stream else [])


def write_connection(flwr_home: Path, name: str, address: str, root_cert: Path | None) -> Path:
    """Add (or replace) connection ``name`` in ``$FLWR_HOME/config.toml``; TLS unless no ``root_cert``."""
    import tomllib

    import tomli_w

    path = flwr_home / "config.toml"
    doc = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = doc.setdefault("superlink", {})
    links.setdefault("default", "local")
    links.setdefault("local", {"address": ":local:"})
    links[name] = ({"address": address, "root-certificates": str(root_cert.resolve())} if root_cert
                   else {"address": address, "insecure": True})
    flwr_home.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    return path


def stage_app(cfg_text: str, app_src: Path, dest: Path) -> Path:
    """A minimal Flower app (pyproject.toml, server/, clients/) plus the job config as :data:`JOB_FILE`.

    The FAB then holds only the app and the config; fedft itself must be installed on every host.
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(app_src / "pyproject.toml", dest / "pyproject.toml")
    for pkg in ("server", "clients"):
        shutil.rmtree(dest / pkg, ignore_errors=True)
        shutil.copytree(app_src / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / JOB_FILE).write_text(cfg_text)
    return dest


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The process environment for Flower commands: ``FLOWER_ENV`` (telemetry and update check
    off, no runtime dependency installation), this interpreter first on PATH, and FLWR_HOME."""
    env = dict(os.environ, **FLOWER_ENV)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


# ---- the subcommands ---------------------------------------------------------------------------

def _run(cmds: list[list[str]], args: argparse.Namespace, exec_last: bool = False) -> int:
    import subprocess

    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    env = flower_env(Path(args.flwr_home) if getattr(args, "flwr_home", None) else None)
    for i, cmd in enumerate(cmds):
        if exec_last and i == len(cmds) - 1:
            os.execvpe(cmd[0], cmd, env)
        rc = subprocess.run(cmd, env=env).returncode
        if rc:
            return rc
    return 0


def _warn_insecure(args: argparse.Namespace) -> None:
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr)


def cmd_certs(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in (args.hosts or "").split(",") if h.strip()]
    for path in generate_certs(Path(args.out), hosts, args.nodes, args.days):
        print(path)
    return 0


def cmd_superlink(args: argparse.Namespace) -> int:
    _warn_insecure(args)
    if args.expose_control_api:
        print("fedft deploy: WARNING: --expose-control-api lets every host that reaches the port submit "
              "runs and register SuperNode keys; restrict it with a firewall", file=sys.stderr)
    return _run([superlink_command(Path(args.certs), args.host, args.port, args.database, args.insecure,
                                   args.expose_control_api)], args, exec_last=True)


def cmd_supernode(args: argparse.Namespace) -> int:
    _warn_insecure(args)
    key = Path(args.key) if args.key else None
    return _run([supernode_command(Path(args.certs), args.superlink, args.partition_id, args.num_partitions,
                                   args.port, key, args.insecure)], args, exec_last=True)


def _connection(args: argparse.Namespace) -> None:
    home = Path(args.flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    root = None if args.insecure else Path(args.certs) / CA_CERT
    if not args.dry_run:
        write_connection(home, args.connection, args.superlink, root)
    print(f"# connection [superlink.{args.connection}] -> {home / 'config.toml'}", flush=True)


def cmd_register(args: argparse.Namespace) -> int:
    _warn_insecure(args)
    _connection(args)
    keys = [Path(k) for k in args.key] or [node_key(Path(args.certs), i).with_suffix(".pub")
                                           for i in range(args.nodes)]
    return _run([register_command(k, args.connection) for k in keys], args)


def cmd_submit(args: argparse.Namespace) -> int:
    from fedft.config import ExperimentConfig, to_toml

    _warn_insecure(args)
    sets = list(args.set or [])
    if args.body_host:
        sets.append(f"deploy.body_host={args.body_host}")
        if not args.insecure:
            sets += ["deploy.body_tls=true", f"deploy.cert_dir={Path(args.certs).resolve()}"]
    cfg = ExperimentConfig.from_toml(args.config, sets)
    if cfg.deploy.body_host in ("127.0.0.1", "localhost", "::1"):
        print("fedft deploy: note: deploy.body_host is a loopback address; SuperNodes on other hosts "
              "cannot reach the body service (pass --body-host SERVER_IP)", file=sys.stderr)
    stage = Path(args.stage)
    stage_app(to_toml(cfg), Path(args.app), stage)
    _connection(args)
    return _run([submit_command(stage, args.connection, args.out or "", stream=not args.no_stream)], args)


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``fedft deploy {certs,superlink,register,supernode,submit}`` to the ``fedft`` parser."""
    d = sub.add_parser("deploy", help="certificates and Flower command lines for a multi-machine run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ds = d.add_subparsers(dest="deploy_command", metavar="STEP", required=True)

    def common(p: argparse.ArgumentParser, link: bool = True) -> None:
        p.add_argument("--certs", default="certs", metavar="DIR", help="output of `fedft deploy certs`")
        if link:
            p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink address")
        p.add_argument("--insecure", action="store_true", help="no TLS (prints a warning; trusted networks only)")
        p.add_argument("--dry-run", action="store_true", help="print the command lines, run nothing")

    c = ds.add_parser("certs", help="CA, server certificate and SuperNode key pairs")
    c.add_argument("--out", required=True, metavar="DIR")
    c.add_argument("--hosts", default="", help="comma-separated IPs/hostnames of the server (certificate SANs)")
    c.add_argument("--nodes", type=int, default=0, help="number of SuperNode key pairs (one per partition)")
    c.add_argument("--days", type=int, default=365, help="validity of the certificates")
    c.set_defaults(fn=cmd_certs)

    s = ds.add_parser("superlink", help="run flower-superlink (TLS, SuperNode auth)")
    common(s, link=False)
    s.add_argument("--host", default="0.0.0.0", help="listen address (default all interfaces)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--database", default="", help="SQLite state file (default in memory)")
    s.add_argument("--expose-control-api", action="store_true",
                   help="serve the Control API (submit, register keys) to every host, not only this one")
    s.set_defaults(fn=cmd_superlink)

    for name, fn, hlp in (("register", cmd_register, "allow SuperNode public keys (flwr supernode register)"),
                          ("submit", cmd_submit, "submit an experiment config (flwr run)")):
        r = ds.add_parser(name, help=hlp)
        common(r)
        r.add_argument("--connection", default="fedft", help="connection name in $FLWR_HOME/config.toml")
        r.add_argument("--flwr-home", default="", help="Flower home of this CLI (default $FLWR_HOME or ~/.flwr)")
        r.set_defaults(fn=fn)
        if name == "register":
            r.add_argument("--nodes", type=int, default=0, help="register DIR/supernode-{0..N-1}.pub")
            r.add_argument("--key", action="append", default=[], metavar="PUB", help="a public key (repeatable)")
        else:
            r.add_argument("--config", "-c", required=True, type=Path, help="experiment TOML")
            r.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config value")
            r.add_argument("--body-host", default="", help="server IP the clients reach the body service at "
                                                           "(sets deploy.body_host, and TLS unless --insecure)")
            r.add_argument("--out", "-o", default="", metavar="RUN_DIR", help="run directory on the server host")
            r.add_argument("--app", default=".", help="the fedft source tree (pyproject.toml, server/, clients/)")
            r.add_argument("--stage", default="fedft-deploy-app", help="where the submitted app is staged")
            r.add_argument("--no-stream", action="store_true", help="return after submitting")

    n = ds.add_parser("supernode", help="run flower-supernode for one partition")
    common(n)
    n.add_argument("--partition-id", type=int, required=True)
    n.add_argument("--num-partitions", type=int, required=True)
    n.add_argument("--port", type=int, default=9094, help="local ClientApp API port (differs per node on one host)")
    n.add_argument("--key", default="", help="private key (default DIR/supernode-<partition-id>.key)")
    n.set_defaults(fn=cmd_supernode)

