"""Deployment settings: where the body service listens, its TLS files, the per-round timeout.

Only a multi-machine deployment (``fedft deploy``, ``experiments/deploy/README.md``) changes
them. The defaults keep the body service on 127.0.0.1 without TLS, as in simulation. The file
names inside ``cert_dir`` are the ones ``fedft deploy certs`` writes. The ``body_max_*`` and
``body_memory_budget_gib`` settings are the body service's abuse limits
(:class:`fedft.body.limits.BodyLimits`, same [D] defaults; docs/wire.md "Limits and abuse").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedft.errors import ConfigError

if TYPE_CHECKING:  # imported late at run time: it brings torch and grpc
    from fedft.body.limits import BodyLimits

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"


@dataclass(frozen=True)
class DeployConfig:
    """The ``[deploy]`` section of an experiment config."""

    # address the body service binds and hands to clients: the server's IP (or name) that the
    # SuperNodes can reach; 127.0.0.1 works only when every SuperNode runs on the server host
    body_host: str = "127.0.0.1"
    body_port: int = 0  # 0 = a free port chosen at start
    body_tls: bool = False  # serve the body over TLS with cert_dir/server.pem (clients get ca.crt)
    cert_dir: str = ""  # directory written by `fedft deploy certs`, on the server host
    round_timeout_s: float = 3600.0  # a client without a reply after this long counts as failed
    body_max_sessions: int = 256  # [D] open body-service sessions, all clients together
    body_max_sessions_per_client: int = 8  # [D] open sessions of one client id
    body_max_requests_per_session: int = 100_000  # [D] Forward + Backward calls of one session
    body_memory_budget_gib: float = 16.0  # [D] decoded tensors the open sessions may claim
    body_max_failures_per_peer: int = 256  # [D] failed calls (bad token, bad Open) of one host per minute

    def __post_init__(self) -> None:
        if not self.body_host or self.body_host in ("0.0.0.0", "::"):
            raise ConfigError("bad value for deploy.body_host: must be an address the clients can dial "
                              f"(it is sent to them as is), got {self.body_host!r}")
        if not 0 <= self.body_port <= 65535:
            raise ConfigError("bad value for deploy.body_port: must be an integer in 0..65535")
        if self.body_tls and not self.cert_dir:
            raise ConfigError("bad value for deploy.cert_dir: deploy.body_tls = true needs the directory "
                              "written by `fedft deploy certs`")
        if not self.round_timeout_s > 0:
            raise ConfigError("bad value for deploy.round_timeout_s: must be a number > 0")
        for name in ("body_max_sessions", "body_max_sessions_per_client", "body_max_requests_per_session",
                     "body_max_failures_per_peer"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ConfigError(f"bad value for deploy.{name}: must be an integer >= 1")
        if not self.body_memory_budget_gib > 0:
            raise ConfigError("bad value for deploy.body_memory_budget_gib: must be a number > 0")


def _read(cfg: DeployConfig, name: str) -> bytes:
    path = Path(cfg.cert_dir).expanduser() / name
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"deploy.cert_dir: cannot read {path}: {e.strerror}") from None


def body_tls(cfg: DeployConfig) -> tuple[bytes, bytes] | None:
    """``(cert_pem, key_pem)`` of the body service's TLS server, or ``None`` without TLS."""
    return (_read(cfg, SERVER_CERT), _read(cfg, SERVER_KEY)) if cfg.body_tls else None


def body_root_cert(cfg: DeployConfig) -> bytes | None:
    """The CA certificate clients verify the body service with, or ``None`` without TLS."""
    return _read(cfg, CA_CERT) if cfg.body_tls else None


def body_limits(cfg: DeployConfig) -> BodyLimits:
    """The body service's abuse limits of this deployment."""
    from fedft.body.limits import BodyLimits

    return BodyLimits(max_sessions=cfg.body_max_sessions, max_sessions_per_client=cfg.body_max_sessions_per_client,
                      max_requests_per_session=cfg.body_max_requests_per_session,
                      memory_budget_bytes=int(cfg.body_memory_budget_gib * 2**30),
                      max_failures_per_peer=cfg.body_max_failures_per_peer)


def body_service_args(cfg: DeployConfig) -> dict[str, object]:
    """Keyword arguments of ``ServerRuntime.start_body_service`` for this deployment."""
    return {"host": cfg.body_host, "port": cfg.body_port, "tls": body_tls(cfg), "limits": body_limits(cfg)}
