"""The body service: a grpcio server that holds the server-side body and runs split steps.

The ServerApp starts it once per run, beside Flower, which carries only the per-round train
messages; the per-batch split traffic goes here. Each client's train handler opens a
:class:`~fedft.body.client.GrpcTransport` to it. Service ``fedft.Body`` has four unary methods
with raw bytes in and out (generic handlers, no protobuf):

* ``Open``: JSON ``{client, round, phase, wire, T, D, max_batch[, grad_wire, feedback, cut]}`` ->
  JSON ``{session, mode, ttl_s}``
  (``cut = [h, t]``: run blocks ``[h, L - t)`` for this client; a cut that does not fit is refused)
* ``Forward``: codec frames ``h (B, T, D)`` [+ ``mask (B, T)``] -> frame ``z``
* ``Backward``: frame ``grad_z`` -> frame ``grad_h``
* ``Close``: empty -> JSON ``{steps}``

The token and the session id travel in gRPC metadata (:mod:`fedft.keys`); requests are checked
against the negotiated :class:`~fedft.body.spec.SessionSpec`. A bad request fails for
its caller only: ``UNAUTHENTICATED`` (token), ``NOT_FOUND`` (session), ``INVALID_ARGUMENT``
(payload), ``FAILED_PRECONDITION`` (Backward before Forward), ``UNAVAILABLE`` (a shared body
busy for too long), ``RESOURCE_EXHAUSTED`` (a limit of :mod:`fedft.body.limits`: sessions, calls per
session, memory, failed calls of one host; oversized messages), ``INTERNAL`` (anything else,
logged). Sessions idle for longer than the TTL
are reaped, so a vanished client frees its state. The wire formats are negotiated at Open
(activations and gradients separately, :mod:`fedft.body.codec`): tensors arrive in them, the body
computes in float32 and replies are encoded back in them. Both sides record
the bytes of every completed call, so the two ledgers can be cross-checked.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import torch
from torch import nn

from fedft import keys
from fedft.accounting import Direction, Kind, Phase
from fedft.body import codec
from fedft.body.limits import BodyLimits, Gate
from fedft.body.spec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    CutBodies,
    ServiceError,
    SessionSpec,
    check_forward,
    check_grad,
    invalid,
)
from fedft.body.state import THREAD_PREFIX, BodyMode, BodyState, MakeOptimizer, Session

log = logging.getLogger(__name__)


def new_token() -> str:
    """A fresh per-run secret for the body service."""
    return secrets.token_urlsafe(32)


class BodyService(BodyState):
    """Holds the body once and runs the split steps of many client sessions (thread-safe).

    The four calls take and return the message bytes; the gRPC layer only adds the token check
    and maps :class:`ServiceError` to status codes.
    """

    def open(self, payload: bytes) -> bytes:
        """Start a session for one client; return the JSON reply holding the session id."""
        spec = SessionSpec.from_json(payload, self.max_message_bytes)
        sid = self._new_session(spec)
        reply = json.dumps({keys.BODY_OPEN_SESSION: sid, keys.BODY_OPEN_MODE: self.mode.value,
                            keys.BODY_OPEN_TTL: self.session_ttl_s}).encode()
        self._record(spec, Kind.CONTROL, len(payload), Direction.UP)
        self._record(spec, Kind.CONTROL, len(reply), Direction.DOWN)
        log.debug("opened session %s for client %s (round %d)", sid, spec.client, spec.round)
        return reply

    def forward(
        self, sid: str, payload: bytes, is_active: Callable[[], bool] = lambda: True
    ) -> bytes:
        """Run the body on one batch; keep the graph (training phases) until Backward."""
        s = self._enter(sid)
        try:
            with s.lock:
                spec = s.spec
                if len(payload) > spec.max_request_bytes:
                    raise invalid(f"Forward request of {len(payload)} bytes exceeds the session "
                                  f"cap of {spec.max_request_bytes} bytes")
                h, mask = check_forward(_decode(payload, spec.max_request_bytes), spec)
                h = h.to(self._device)  # stays in the wire dtype; BodySession casts to float32
                mask = None if mask is None else mask.to(self._device)
                if spec.phase == Phase.EVAL:
                    z = self._eval_forward(s, h, mask, is_active)
                else:
                    z = self._train_forward(s, h, mask, is_active)
                reply = codec.encode(z, spec.formats.act_format)
        finally:
            self._leave(s)
        self._record(spec, Kind.ACTIVATIONS_UP, len(payload))
        self._record(spec, Kind.ACTIVATIONS_DOWN, len(reply))
        return reply

    def _eval_forward(self, s: Session, h: torch.Tensor, mask: torch.Tensor | None,
                      is_active: Callable[[], bool]) -> torch.Tensor:
        s.replica.acquire(s.id, self.busy_timeout_s, is_active)
        try:
            with torch.no_grad():
                return s.replica.module(h.float(), mask)
        finally:
            s.replica.release(s.id)

    def _train_forward(self, s: Session, h: torch.Tensor, mask: torch.Tensor | None,
                       is_active: Callable[[], bool]) -> torch.Tensor:
        s.begin_step(is_active, self.busy_timeout_s)  # a repeated Forward keeps the body
        try:
            z = s.body.forward(h, mask)
        except BaseException:
            s.end_step()
            raise
        s.out_shape = tuple(z.shape)
        return z

    def backward(self, sid: str, payload: bytes) -> bytes:
        """Back-propagate the gradient at the body output; step the optimizer when training."""
        s = self._enter(sid)
        try:
            with s.lock:
                spec = s.spec
                if not s.pending:
                    raise ServiceError("FAILED_PRECONDITION",
                                       f"Backward before Forward in session {sid}")
                cap = codec.frame_nbytes(s.out_shape, torch.float32)  # decoded size: any format
                wire_cap = max(cap, spec.formats.grad_format.frame_nbytes(s.out_shape))  # int4/top-k may be longer
                if len(payload) > wire_cap:
                    raise invalid(f"Backward request of {len(payload)} bytes exceeds {wire_cap} bytes")
                g = check_grad(_decode(payload, cap), spec, s.out_shape)
                try:
                    g_h = s.body.backward(g.to(self._device, torch.float32))
                    s.steps += 1
                    s.replica.examples += s.out_shape[0]
                finally:
                    s.end_step()
                reply = s.grads.encode(g_h)
        finally:
            self._leave(s)
        self._record(spec, Kind.GRADS_UP, len(payload))
        self._record(spec, Kind.GRADS_DOWN, len(reply))
        return reply

    def close_session(self, sid: str, payload: bytes = b"") -> bytes:
        """End a session and free its state; return the JSON reply ``{steps}``."""
        s = self._enter(sid, count=False)
        try:
            with s.lock:
                with self._lock:
                    self._sessions.pop(sid, None)
                s.free()
        finally:
            self._leave(s)
        reply = json.dumps({keys.BODY_CLOSE_STEPS: s.steps}).encode()
        self._record(s.spec, Kind.CONTROL, len(payload), Direction.UP)
        self._record(s.spec, Kind.CONTROL, len(reply), Direction.DOWN)
        return reply


def _decode(payload: bytes, cap: int) -> list[codec.Frame]:
    try:
        return codec.decode_frames(payload, max_bytes=cap)
    except codec.CodecError as e:
        raise invalid(f"malformed payload: {e}") from None


# ---- gRPC layer --------------------------------------------------------------------------------

Call = Callable[[bytes, str, grpc.ServicerContext], bytes]


def _rpc(name: str, call: Call, gate: Gate) -> grpc.RpcMethodHandler:
    """A raw-bytes unary handler: the gate (token, expiry, per-host failures), then ``call``;
    errors become status codes for this caller only."""

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        peer = context.peer()
        try:
            md = dict(context.invocation_metadata())
            gate.check(md, peer)
            return call(request, str(md.get(keys.BODY_MD_SESSION, "")), context)
        except ServiceError as e:
            gate.record(name, e.status, peer)
            log.info("body service %s refused %s: %s %s", name, peer, e.status, e.message)
            context.set_code(grpc.StatusCode[e.status])
            context.set_details(e.message)
        except Exception as e:
            log.exception("body service %s failed", name)
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details(" ".join(f"{name} failed: {type(e).__name__}: {e}".split())[:500])
        return b""

    return grpc.unary_unary_rpc_method_handler(handler)  # no (de)serializers: raw bytes


def generic_handler(service: BodyService, token: str, gate: Gate | None = None) -> grpc.GenericRpcHandler:
    """The ``fedft.Body`` service for ``grpc.Server.add_generic_rpc_handlers`` (``gate``: the token
    check; by default one over ``token`` and the service's limits)."""
    g = gate or Gate(token, service.limits)
    return grpc.method_handlers_generic_handler(keys.BODY_SERVICE, {
        keys.BODY_OPEN: _rpc(keys.BODY_OPEN, lambda r, sid, c: service.open(r), g),
        keys.BODY_FORWARD: _rpc(keys.BODY_FORWARD,
                                lambda r, sid, c: service.forward(sid, r, c.is_active), g),
        keys.BODY_BACKWARD: _rpc(keys.BODY_BACKWARD, lambda r, sid, c: service.backward(sid, r), g),
        keys.BODY_CLOSE: _rpc(keys.BODY_CLOSE, lambda r, sid, c: service.close_session(sid, r), g),
    })


class BodyServiceHandle:
    """A running body service: its address, token, state and gate; :meth:`stop` shuts it down.

    The token dies with the service: once stopped, the port is closed, and a later service (a new
    run, or a restart) has a new token (:func:`new_token`), so an old token is refused there.
    """

    def __init__(self, address: str, port: int, token: str, service: BodyService,
                 server: grpc.Server, executor: ThreadPoolExecutor, gate: Gate | None = None) -> None:
        self.address, self.port, self.token, self.service = address, port, token, service
        self._server, self._executor, self.gate = server, executor, gate
        self.stopped = False

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds), join every thread, free state.
        Idempotent; every step runs even when an earlier one fails."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self._server.stop(grace).wait()
        finally:
            try:
                self._executor.shutdown(wait=True)
            finally:
                self.service.stop_reaper()
                self.service.reset()

    def __enter__(self) -> BodyServiceHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_body_service(
    body: nn.Module, *, token: str, mode: BodyMode | str, host: str = "127.0.0.1", port: int = 0,
    make_optimizer: MakeOptimizer | None = None, max_workers: int = 8,
    tls: tuple[bytes, bytes] | None = None, session_ttl_s: float = 60.0,
    busy_timeout_s: float = 300.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    cuts: CutBodies | None = None, limits: BodyLimits | None = None,
) -> BodyServiceHandle:
    """Serve ``body`` on ``host:port`` (port 0 picks a free one) and return its handle.

    Args:
        tls: ``(cert_pem, key_pem)`` to serve over TLS; plaintext when ``None``.
        session_ttl_s: idle time after which a session (a vanished client) is freed.
        busy_timeout_s: how long a Forward waits for a ``shared`` body owned by another client.
        cuts: serve each client from the cut its Open names (``body`` is the one at
            ``cuts.default``); without it, an Open naming a cut is refused.
        limits: sessions, calls, memory, failed calls per host, token expiry
            (:class:`~fedft.body.limits.BodyLimits`; its [D] defaults when ``None``).
    """
    if not token:
        raise ValueError("the body service needs a token; create one with new_token()")
    limits = limits or BodyLimits()
    service = BodyService(body, mode, make_optimizer, session_ttl_s=session_ttl_s, busy_timeout_s=busy_timeout_s,
                          max_message_bytes=max_message_bytes, cuts=cuts, limits=limits)
    gate = Gate(token, limits)
    executor = ThreadPoolExecutor(max_workers, thread_name_prefix=THREAD_PREFIX)
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.so_reuseport", 0), *limits.server_options()]
    server = grpc.server(executor, handlers=[generic_handler(service, token, gate)], options=options,
                         maximum_concurrent_rpcs=limits.max_concurrent_rpcs)
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(hostport)
        else:
            cert_pem, key_pem = tls
            creds = grpc.ssl_server_credentials([(key_pem, cert_pem)])
            bound = server.add_secure_port(hostport, creds)
        if not bound:
            raise OSError(f"body service could not bind {hostport}")
        server.start()
    except BaseException:
        server.stop(None)
        executor.shutdown(wait=True)
        raise
    service.start_reaper()
    address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    log.info("body service (%s) listening on %s%s", service.mode.value, address,
             " with TLS" if tls else "")
    return BodyServiceHandle(address, bound, token, service, server, executor, gate)
