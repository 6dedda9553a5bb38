"""gRPC transport: the client side of the body service (:mod:`fedft.body.service`).

One persistent channel per transport, opened inside a client's train handler so its autograd
graph stays in memory between the Forward and Backward of a batch (Flower messages cannot
carry it: in deployment each message runs in a new process)::

    with GrpcTransport(address, token, ledger, round=r, client=cid, T=75, D=384, max_batch=16) as tr:
        z = tr.forward(h, None)       # activations up, activations down
        g_h = tr.backward(g_z)        # gradients up, gradients down

Messages are the same codec frames as :class:`~fedft.body.transport.LoopbackTransport` sends,
and the ledger gets ``len()`` of each request and reply of every completed call, so a step
records the same bytes over both transports. Open and Close payloads are recorded as ``control``;
the Open payload is built by :meth:`fedft.body.spec.SessionSpec.to_json`, the definition the
service parses it with.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import torch

from fedft import keys
from fedft.accounting import CommLedger, Direction, Kind, Phase
from fedft.body import codec
from fedft.body.spec import DEFAULT_MAX_MESSAGE_BYTES, SessionSpec
from fedft.body.wire import Wire
from fedft.errors import FedftError

log = logging.getLogger(__name__)


class BodyServiceError(FedftError):
    """A body-service call failed; ``code`` is the gRPC status code."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"body service {method} failed: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details


def _decode_like(reply: bytes, sent: torch.Tensor) -> torch.Tensor:
    """The reply's one frame, which must decode to ``sent``'s shape (the body keeps shapes): the
    cap is ``sent``'s float32 size, so even a reply from a rogue service cannot claim more."""
    t = codec.decode(reply, max_bytes=codec.frame_nbytes(sent.shape, torch.float32))
    if t.shape != sent.shape:
        raise codec.CodecError(f"the body service replied with shape {tuple(t.shape)} to {tuple(sent.shape)}")
    return t.to(device=sent.device, dtype=sent.dtype)


def method_path(name: str) -> str:
    """Full gRPC path of a body-service method, e.g. ``/fedft.Body/Forward``."""
    return f"/{keys.BODY_SERVICE}/{name}"


class GrpcTransport:
    """Client of the body service implementing the :class:`~fedft.body.transport.Transport` protocol.

    Args:
        address: ``host:port`` of the body service.
        token: the per-run secret the ServerApp handed out.
        T, D, max_batch: the shapes negotiated at Open; the server refuses other shapes.
        wire: the wire formats of activations and gradients (:class:`~fedft.body.wire.Wire`,
            or one format name for both).
        root_certificates: PEM bytes of the CA that signed the server certificate (TLS);
            plaintext when ``None``.
        timeout_s: deadline of each call (a ``shared`` body may make a Forward wait).
        cut: this client's ``(head_blocks, tail_blocks)``, sent at Open so the service runs
            blocks ``[h, L - t)`` for it; ``None`` uses the service's own body.
    """

    def __init__(
        self, address: str, token: str, ledger: CommLedger, *, round: int = 0, client: str = "0",
        phase: str = Phase.SPLIT, wire: Wire | str = "fp32", T: int, D: int, max_batch: int,
        root_certificates: bytes | None = None, timeout_s: float | None = 300.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, cut: tuple[int, int] | None = None,
    ) -> None:
        self.address, self.ledger, self.cut = address, ledger, cut
        self.round, self.client, self.phase = round, str(client), str(phase)
        self.wire = wire if isinstance(wire, Wire) else Wire(wire)
        self._grads = self.wire.grad_encoder()  # carries top-k's dropped gradient between batches
        self.T, self.D, self.max_batch = T, D, max_batch
        self.timeout_s = timeout_s
        self._token, self._roots, self._max = token, root_certificates, max_message_bytes
        self._channel: grpc.Channel | None = None
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._metadata: tuple[tuple[str, str], ...] = ((keys.BODY_MD_TOKEN, token),)
        self.session: str | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def open(self) -> str:
        """Open the channel and a session on the server; return the session id."""
        if self.session is not None:
            return self.session
        if self._channel is None:
            options = [("grpc.max_receive_message_length", self._max),
                       ("grpc.max_send_message_length", self._max)]
            if self._roots is None:
                self._channel = grpc.insecure_channel(self.address, options=options)
            else:
                creds = grpc.ssl_channel_credentials(root_certificates=self._roots)
                self._channel = grpc.secure_channel(self.address, creds, options=options)
            self._calls = {
                name: self._channel.unary_unary(method_path(name))  # raw bytes both ways
                for name in (keys.BODY_OPEN, keys.BODY_FORWARD, keys.BODY_BACKWARD, keys.BODY_CLOSE)
            }
        request = self.open_request()
        reply = self._call(keys.BODY_OPEN, request)
        self.ledger.add(self.round, self.client, self.phase, Kind.CONTROL, len(request), Direction.UP)
        self.ledger.add(self.round, self.client, self.phase, Kind.CONTROL, len(reply), Direction.DOWN)
        self.session = str(json.loads(reply)[keys.BODY_OPEN_SESSION])
        self._metadata = ((keys.BODY_MD_TOKEN, self._token), (keys.BODY_MD_SESSION, self.session))
        return self.session

    @property
    def spec(self) -> SessionSpec:
        """What this transport negotiates at Open: who this client is and the shapes."""
        return SessionSpec(self.client, self.round, self.phase, self.wire.act, self.T, self.D,
                           self.max_batch, self.cut, self.wire.grad, self._grads.enabled)

    def open_request(self) -> bytes:
        """The JSON control payload of Open (:meth:`SessionSpec.to_json`)."""
        return self.spec.to_json()

    def close(self) -> None:
        """Close the session (tolerating one the server already reaped) and the channel."""
        try:
            if self.session is not None and self._channel is not None:
                request = b""
                try:
                    reply = self._call(keys.BODY_CLOSE, request)
                except BodyServiceError as e:
                    if e.code is not grpc.StatusCode.NOT_FOUND:
                        raise
                else:
                    for n, d in ((len(request), Direction.UP), (len(reply), Direction.DOWN)):
                        self.ledger.add(self.round, self.client, self.phase, Kind.CONTROL, n, d)
        finally:
            self.session = None
            self._metadata = ((keys.BODY_MD_TOKEN, self._token),)
            if self._channel is not None:
                self._channel.close()
                self._channel, self._calls = None, {}

    def __enter__(self) -> GrpcTransport:
        self.open()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self.close()
        except BodyServiceError as e:
            if exc_type is None:
                raise
            log.warning("closing the body-service session failed too: %s", e)  # keep the first error

    # ---- the Transport protocol ------------------------------------------------------------------

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Send the head output (and the (B, T) mask); return the body output."""
        request = codec.encode_many([h] if mask is None else [h, mask], self.wire.act_format)
        reply = self._step(keys.BODY_FORWARD, request, Kind.ACTIVATIONS_UP, Kind.ACTIVATIONS_DOWN)
        return _decode_like(reply, h)

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        """Send the gradient at the body output; return the gradient at the body input."""
        request = self._grads.encode(grad)
        reply = self._step(keys.BODY_BACKWARD, request, Kind.GRADS_UP, Kind.GRADS_DOWN)
        return _decode_like(reply, grad)

    # ---- helpers -------------------------------------------------------------------------------

    def _step(self, name: str, request: bytes, up: Kind, down: Kind) -> bytes:
        if self.session is None:
            self.open()
        try:
            reply = self._call(name, request)
        except BodyServiceError as e:
            # A session idle for longer than the server's TTL (a long local phase between
            # batches) was reaped; no graph was pending before a Forward, so start a new one.
            if name != keys.BODY_FORWARD or e.code is not grpc.StatusCode.NOT_FOUND:
                raise
            log.warning("body-service session of client %s expired; opening a new one", self.client)
            self.session = None
            self.open()
            reply = self._call(name, request)
        self.ledger.add(self.round, self.client, self.phase, up, len(request))
        self.ledger.add(self.round, self.client, self.phase, down, len(reply))
        return reply

    def _call(self, name: str, request: bytes) -> bytes:
        try:
            return self._calls[name](request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            details = e.details() if hasattr(e, "details") else str(e)
            raise BodyServiceError(name, code, details or "") from e
