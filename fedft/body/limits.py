"""Abuse limits of the body service: how much one caller, one client and all of them may hold.

The body service (:mod:`fedft.body.service`) admits a caller with the per-run token and then trusts
the JSON it sends; these limits bound what any caller, with or without the token, can make the
server hold:

* open sessions, in total and per client id (:meth:`BodyLimits.admit`: one client cannot fill the
  table), and the decoded-tensor memory the open sessions may claim (each session reserves its
  :attr:`~fedft.body.spec.SessionSpec.max_request_bytes` at Open);
* Forward + Backward calls per session (a session past the cap is closed);
* concurrent RPCs (gRPC refuses the rest) and idle connections (closed after a while);
* failed calls per peer host (:class:`Gate`: wrong or missing token, refused Opens); a host past
  the cap is refused outright until its window ends;
* an optional wall-clock expiry of the token (``expires_at``).

Every refusal is a :class:`~fedft.body.spec.ServiceError` for that caller only, mostly
``RESOURCE_EXHAUSTED`` with one line naming the limit and the setting that raises it.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fedft import keys
from fedft.body.spec import ServiceError, SessionSpec

LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class BodyLimits:
    """Limits of one body service; every default is fedft's own [D]."""

    max_sessions: int = 256  # [D] open sessions, all clients together
    max_sessions_per_client: int = 8  # [D] open sessions of one client id (a client opens one per phase)
    max_requests_per_session: int = 100_000  # [D] Forward + Backward calls (50,000 split steps)
    memory_budget_bytes: int = 16 * 2**30  # [D] sum of max_request_bytes over the open sessions
    max_concurrent_rpcs: int = 1024  # [D] calls in progress or queued; gRPC refuses the rest
    max_failures_per_peer: int = 256  # [D] failed calls of one peer host per window
    failure_window_s: float = 60.0  # [D]
    exempt_peers: tuple[str, ...] = LOOPBACK  # [D] hosts never blocked (processes on this machine)
    idle_connection_s: float = 600.0  # [D] a connection without calls is closed (clients reconnect)
    expires_at: float | None = None  # wall-clock time (time.time()) after which the token is refused

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_sessions_per_client", "max_requests_per_session",
                     "memory_budget_bytes", "max_concurrent_rpcs", "max_failures_per_peer"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"body limit {name} must be an integer >= 1, got {value!r}")
        for name in ("failure_window_s", "idle_connection_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"body limit {name} must be a number > 0, got {getattr(self, name)!r}")

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC server channel options that enforce the connection limits."""
        return [("grpc.max_connection_idle_ms", int(self.idle_connection_s * 1000))]

    def admit(self, spec: SessionSpec, open_specs: Iterable[SessionSpec],
              copies: Mapping[str, object] | None = None) -> None:
        """Refuse (``RESOURCE_EXHAUSTED``) an Open that would exceed a session limit.

        ``open_specs``: the specs of the open sessions; ``copies``: the per-client body copies
        (``per_client`` mode), a new client id adding one.
        """
        specs = list(open_specs)
        if len(specs) >= self.max_sessions:
            raise exhausted(f"{len(specs)} sessions open, the most the service allows "
                            f"(body limit max_sessions = {self.max_sessions})")
        mine = sum(s.client == spec.client for s in specs)
        if mine >= self.max_sessions_per_client:
            raise exhausted(f"client {spec.client[:64]!r} already has {mine} open sessions "
                            f"(body limit max_sessions_per_client = {self.max_sessions_per_client}); "
                            f"close one first")
        held = sum(s.max_request_bytes for s in specs)
        if held + spec.max_request_bytes > self.memory_budget_bytes:
            raise exhausted(f"the open sessions claim {held} bytes of decoded tensors and this one "
                            f"{spec.max_request_bytes} more (body limit memory_budget_bytes = "
                            f"{self.memory_budget_bytes}); use a smaller max_batch x T x D")
        if copies is not None and spec.client not in copies and len(copies) >= self.max_sessions:
            raise exhausted(f"{len(copies)} per-client body copies exist this round "
                            f"(body limit max_sessions = {self.max_sessions})")

    def check_requests(self, sid: str, requests: int) -> None:
        """Refuse the call that makes a session's ``requests``-th Forward/Backward past the cap."""
        if requests > self.max_requests_per_session:
            raise exhausted(f"session {sid[:64]} made {self.max_requests_per_session} Forward/"
                            f"Backward calls, the most one session may (body limit "
                            f"max_requests_per_session); it is closed, open a new one")


def exhausted(message: str) -> ServiceError:
    """A ``RESOURCE_EXHAUSTED`` error."""
    return ServiceError("RESOURCE_EXHAUSTED", message)


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string: ``ipv4:1.2.3.4:5`` -> ``1.2.3.4``, ``ipv6:[::1]:5`` -> ``::1``."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return peer  # unix sockets and the like: the whole string


class Gate:
    """The token check of every call, with per-peer failure counting and the token's expiry.

    A call with a missing, wrong or expired token, and an Open refused as ``INVALID_ARGUMENT``,
    count as failures of the caller's host; a host with ``max_failures_per_peer`` failures in the
    current window is refused (``RESOURCE_EXHAUSTED``) until the window ends, whatever it sends.
    """

    MAX_HOSTS = 4096  # [D] hosts remembered; older windows are dropped first when full

    def __init__(self, token: str, limits: BodyLimits, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._token, self.limits = token.encode(), limits
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[float, int]] = {}  # host -> (window start, failures)
        self.refused: dict[str, int] = {}  # status code -> calls refused (all callers), for tests

    def check(self, metadata: Mapping[str, str | bytes], peer: str) -> None:
        """Raise a :class:`ServiceError` unless this call may go on to the service."""
        host = peer_host(peer)
        self._check_blocked(host)
        got = metadata.get(keys.BODY_MD_TOKEN)
        if got is None:
            raise ServiceError("UNAUTHENTICATED", f"missing {keys.BODY_MD_TOKEN} metadata")
        got_b = got if isinstance(got, bytes) else str(got).encode()
        if not hmac.compare_digest(got_b, self._token):
            raise ServiceError("UNAUTHENTICATED", "wrong token")
        if self.limits.expires_at is not None and self._wall() >= self.limits.expires_at:
            raise ServiceError("UNAUTHENTICATED", "the token expired with its run; use the current run's token")

    def record(self, method: str, status: str, peer: str) -> None:
        """Count a refused call (a failure of its host when it was unauthenticated or a bad Open)."""
        with self._lock:
            self.refused[status] = self.refused.get(status, 0) + 1
        if status == "UNAUTHENTICATED" or (method == keys.BODY_OPEN and status == "INVALID_ARGUMENT"):
            self._fail(peer_host(peer))

    def _window(self, host: str, now: float) -> tuple[float, int]:
        start, n = self._failures.get(host, (now, 0))
        return (now, 0) if now - start >= self.limits.failure_window_s else (start, n)

    def _check_blocked(self, host: str) -> None:
        if host in self.limits.exempt_peers:
            return
        with self._lock:
            start, n = self._window(host, self._clock())
        if n >= self.limits.max_failures_per_peer:
            raise exhausted(f"{n} failed calls from {host} in {self.limits.failure_window_s:g} s "
                            f"(body limit max_failures_per_peer); retry after the window")

    def _fail(self, host: str) -> None:
        if host in self.limits.exempt_peers:
            return
        now = self._clock()
        with self._lock:
            if host not in self._failures and len(self._failures) >= self.MAX_HOSTS:
                for h in sorted(self._failures, key=lambda h: self._failures[h][0])[: self.MAX_HOSTS // 4]:
                    del self._failures[h]
            start, n = self._window(host, now)
            self._failures[host] = (start, n + 1)
