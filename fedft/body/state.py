"""Server-side state of the body service: body modes, sessions, body copies, reaper and FedAvg.

Nothing here imports gRPC. A refused request raises :class:`~fedft.body.spec.ServiceError`
carrying the name of a gRPC status code (``"INVALID_ARGUMENT"``, ``"NOT_FOUND"`` ...), which the
service maps onto the wire. The three body modes follow the SplitFed definitions
(Thapa et al., AAAI 2022; docs/sfprompt.md §8):

* ``frozen``: one body, eval mode, no weight gradients; clients run concurrently (SFPrompt,
  SFL-Prompt).
* ``shared``: one trainable body; a client owns it from its Forward to its Backward, so batches
  run in sequence, and the optimizer steps after every Backward (SL, SFL-V2).
* ``per_client``: a deep copy of the body, with its own optimizer, per client; the copies are
  FedAvg-averaged into the shared body at round end (SFL-V1).

With :class:`~fedft.body.spec.CutBodies`, a frozen service runs each client from its own cut (an
Open carrying ``cut``): one frozen body per distinct cut, over the server model's own blocks.
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum

import torch
from torch import nn

from fedft.accounting import CommLedger, Direction, Kind, Phase
from fedft.body.limits import BodyLimits
from fedft.body.spec import DEFAULT_MAX_MESSAGE_BYTES, CutBodies, ServiceError, SessionSpec
from fedft.body.transport import BodySession
from fedft.body.wire import ErrorFeedback

log = logging.getLogger(__name__)

MakeOptimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
THREAD_PREFIX = "fedft-body"  # names of the service threads (executor and reaper)


class BodyMode(StrEnum):
    """How the service holds the body (see the module docstring)."""

    FROZEN = "frozen"
    SHARED = "shared"
    PER_CLIENT = "per_client"


class Replica:
    """One body with its optimizer; an exclusive replica is owned by one session per batch."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer | None, exclusive: bool) -> None:
        self.module, self.optimizer, self.exclusive = module, optimizer, exclusive
        self.examples = 0  # samples back-propagated: the default FedAvg weight
        self._cond = threading.Condition()
        self._owner: str | None = None

    def acquire(self, sid: str, timeout_s: float, is_active: Callable[[], bool]) -> None:
        """Wait until no other session holds the body (no-op when not exclusive)."""
        if not self.exclusive:
            return
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._owner not in (None, sid):
                left = deadline - time.monotonic()
                if left <= 0 or not is_active():
                    raise ServiceError("UNAVAILABLE", f"body busy with another client's batch "
                                                      f"for more than {timeout_s:g} s")
                self._cond.wait(min(left, 0.5))
            self._owner = sid

    def release(self, sid: str) -> None:
        """Let the next session in (if ``sid`` holds the body)."""
        if not self.exclusive:
            return
        with self._cond:
            if self._owner == sid:
                self._owner = None
                self._cond.notify_all()

    def step(self) -> None:
        """Optimizer step after a backward, then clear the weight gradients."""
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


class Session:
    """One client's open session: its spec, its replica and the graph kept between two calls."""

    def __init__(self, sid: str, spec: SessionSpec, replica: Replica) -> None:
        self.id, self.spec, self.replica = sid, spec, replica
        trains = replica.optimizer is not None
        self.body = BodySession(replica.module, replica.step if trains else None, inputs_only=not trains)
        self.lock = threading.Lock()  # one call at a time per session
        self.busy = 0  # calls in progress; guarded by the service lock
        self.last_used = time.monotonic()
        self.out_shape: tuple[int, ...] = ()
        self.steps = 0
        self.requests = 0  # Forward + Backward calls, capped by BodyLimits.max_requests_per_session
        self.grads = ErrorFeedback(spec.formats.grad_format, spec.feedback)  # encodes the gradients sent down
        self._state = threading.Lock()  # makes begin_step / end_step / free atomic
        self._pending = False  # a Forward whose Backward has not come yet; owns the replica
        self._closed = False

    @property
    def pending(self) -> bool:
        return self._pending

    def begin_step(self, is_active: Callable[[], bool], timeout_s: float) -> None:
        """Take the replica for one Forward..Backward step (unless this session already has it)."""
        if self._pending:
            return
        self.replica.acquire(self.id, timeout_s, is_active)
        with self._state:
            if not self._closed:
                self._pending = True
                return
        self.replica.release(self.id)  # closed by an admin call while waiting for the body
        raise ServiceError("NOT_FOUND", f"session {self.id} was closed")

    def end_step(self) -> None:
        """Drop the kept graph and let go of the replica."""
        with self._state:
            was, self._pending = self._pending, False
        self.body.reset()
        if was:
            self.replica.release(self.id)

    def free(self) -> None:
        """Close the session: no step can start any more, and the replica is let go."""
        with self._state:
            self._closed = True
        self.end_step()


@torch.no_grad()
def fedavg_into(target: nn.Module, sources: Sequence[nn.Module], weights: Sequence[float]) -> None:
    """Set ``target``'s floating state to the weighted mean of the sources' (weights normalised).

    Integer buffers (counters) are taken from the first source.
    """
    total = float(sum(weights))
    if not sources or len(sources) != len(weights) or total <= 0:
        raise ValueError(f"need sources with positive total weight, got weights {list(weights)}")
    states = [s.state_dict() for s in sources]
    for name, t in target.state_dict().items():
        if t.is_floating_point():
            acc = torch.zeros_like(t, dtype=torch.float64)
            for st, w in zip(states, weights, strict=True):
                acc.add_(st[name].to(torch.float64), alpha=w / total)
            t.copy_(acc)
        else:
            t.copy_(states[0][name])


def _device(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


class BodyState:
    """The body, its per-client copies and the open sessions; the calls live in the service."""

    def __init__(
        self, body: nn.Module, mode: BodyMode | str, make_optimizer: MakeOptimizer | None = None,
        *, session_ttl_s: float = 60.0, busy_timeout_s: float = 300.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, cuts: CutBodies | None = None,
        limits: BodyLimits | None = None,
    ) -> None:
        self.mode = BodyMode(mode)
        self.limits = limits or BodyLimits()  # session table, request and memory caps
        self.cuts = cuts  # per-client cuts: a frozen body per cut (heterogeneous split points)
        self._cut_replicas: dict[tuple[int, int], Replica] = {}
        if self.mode is not BodyMode.FROZEN and make_optimizer is None:
            raise ValueError(f"body mode {self.mode.value!r} trains the body: pass make_optimizer")
        self.body, self.make_optimizer = body, make_optimizer
        self.session_ttl_s, self.busy_timeout_s = session_ttl_s, busy_timeout_s
        self.max_message_bytes = max_message_bytes
        self.ledger = CommLedger()  # bytes received and sent, per (round, client, kind)
        self._device = _device(body)
        self._lock = threading.Lock()  # guards the dicts below, the ledger and Session.busy
        self._sessions: dict[str, Session] = {}
        self._copies: dict[str, Replica] = {}  # per_client: client id -> its body copy
        if self.mode is BodyMode.FROZEN:
            body.eval().requires_grad_(False)
            self._global = Replica(body, None, exclusive=False)
        elif self.mode is BodyMode.SHARED:
            self._global = Replica(body, self._optimizer(body), exclusive=True)
        else:  # per_client: the shared body only serves eval sessions between aggregations
            self._global = Replica(body, None, exclusive=True)
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        assert self.make_optimizer is not None
        return self.make_optimizer([p for p in module.parameters() if p.requires_grad])

    def _new_session(self, spec: SessionSpec) -> str:
        """Register a session on the replica that trains for ``spec.client``; return its id
        (``RESOURCE_EXHAUSTED`` when the session table or the memory budget is full)."""
        sid = secrets.token_urlsafe(16)
        with self._lock:
            copies = self._copies if self.mode is BodyMode.PER_CLIENT and spec.phase != Phase.EVAL else None
            self.limits.admit(spec, (s.spec for s in self._sessions.values()), copies)
            replica = self._global if spec.cut is None else self._cut_replica(spec.cut)
            if self.mode is BodyMode.PER_CLIENT and spec.phase != Phase.EVAL:
                replica = self._copies.get(spec.client)
                if replica is None:
                    module = copy.deepcopy(self.body)
                    replica = Replica(module, self._optimizer(module), exclusive=True)
                    self._copies[spec.client] = replica
            self._sessions[sid] = Session(sid, spec, replica)
        return sid

    def _cut_replica(self, cut: tuple[int, int]) -> Replica:
        """The frozen body of blocks [h, L - t) for a client at ``cut`` (the service's own body
        at its own cut); a cut the model cannot take is refused for this client only."""
        if self.cuts is None:
            raise ServiceError("INVALID_ARGUMENT", f"this body service serves one cut; got cut {cut}")
        self.cuts.check(cut, self.mode is BodyMode.FROZEN)
        if cut == self.cuts.default:
            return self._global
        if cut not in self._cut_replicas:
            self._cut_replicas[cut] = Replica(self.cuts.make(*cut).eval(), None, exclusive=False)
        return self._cut_replicas[cut]

    def _enter(self, sid: str, count: bool = True) -> Session:
        """The session of a call (``count``: a Forward/Backward; past the cap it is closed)."""
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                raise ServiceError("NOT_FOUND", f"unknown session {sid[:64]!r} (closed or expired)")
            s.requests += count
            over = s.requests > self.limits.max_requests_per_session
            if over:
                del self._sessions[sid]
            else:
                s.busy += 1
                s.last_used = time.monotonic()
        if over:
            with s.lock:  # after a call still inside it
                s.free()
            self.limits.check_requests(sid, s.requests)
        return s

    def _leave(self, s: Session) -> None:
        with self._lock:
            s.busy -= 1
            s.last_used = time.monotonic()

    def _record(self, spec: SessionSpec, kind: Kind, nbytes: int,
                direction: Direction | None = None) -> None:
        with self._lock:
            self.ledger.add(spec.round, spec.client, spec.phase, kind, nbytes, direction)

    # ---- administration (called by the ServerApp and tests) ------------------------------------

    def session_count(self) -> int:
        """Number of open sessions."""
        with self._lock:
            return len(self._sessions)

    def reap_expired(self, now: float | None = None) -> int:
        """Free the sessions idle for longer than the TTL, or twice the TTL between a Forward and
        its Backward (the client computes its tail; a slow one must not lose its step)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            dead = [s for s in self._sessions.values()
                    if s.busy == 0 and now - s.last_used > self.session_ttl_s * (2 if s.pending else 1)]
            for s in dead:
                del self._sessions[s.id]
        for s in dead:  # no call is inside these sessions and none can enter any more
            s.free()
            log.warning("reaped session %s of client %s after %.1f s idle",
                        s.id, s.spec.client, now - s.last_used)
        return len(dead)

    def body_for(self, client: str) -> nn.Module:
        """The module that trains for ``client``: its copy in ``per_client`` mode, else the body."""
        with self._lock:
            return self._copies[client].module if client in self._copies else self.body

    def aggregate(self, weights: Mapping[str, float] | None = None) -> None:
        """``per_client`` mode: FedAvg the copies into the shared body, then drop them.

        ``weights`` maps client id to weight (for example its number of examples); by default,
        the samples each copy back-propagated. Open sessions are closed. No-op in other modes.
        """
        if self.mode is not BodyMode.PER_CLIENT:
            return
        with self._lock:
            unknown = sorted(set(weights or ()) - set(self._copies))
            if unknown:
                raise ValueError(f"no body copy for clients {unknown}; "
                                 f"copies exist for {sorted(self._copies)}")
            copies, self._copies = self._copies, {}
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.free()
        if sessions:
            log.warning("aggregate closed %d open session(s)", len(sessions))
        if weights is None:
            weights = {c: float(r.examples) for c, r in copies.items()}
        names = [c for c in weights if weights[c] > 0]
        if names:
            fedavg_into(self.body, [copies[c].module for c in names], [weights[c] for c in names])

    def optimizer_state(self) -> dict | None:
        """State of the shared body's optimizer (``shared`` mode), for checkpoints."""
        opt = self._global.optimizer
        return None if opt is None else opt.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        """Restore the shared body's optimizer from :meth:`optimizer_state` (resume)."""
        if self._global.optimizer is None:
            raise ValueError(f"body mode {self.mode.value!r} has no shared optimizer to restore")
        self._global.optimizer.load_state_dict(state)

    def reset(self) -> None:
        """Close every session and drop the per-client copies (the body itself is kept)."""
        with self._lock:
            sessions, self._sessions, self._copies = list(self._sessions.values()), {}, {}
        for s in sessions:
            s.free()

    def start_reaper(self, interval_s: float | None = None) -> None:
        """Reap expired sessions in a background thread until :meth:`stop_reaper`."""
        interval = interval_s or min(1.0, max(self.session_ttl_s / 4, 0.01))

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reap_expired()
                except Exception:
                    log.exception("session reaper failed")

        self._reaper = threading.Thread(target=loop, name=f"{THREAD_PREFIX}-reaper", daemon=True)
        self._reaper.start()

    def stop_reaper(self) -> None:
        """Stop and join the reaper thread."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
            self._reaper = None
