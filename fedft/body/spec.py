"""The negotiated session spec of the body service: the one place where requests are checked.

A client opens a session with a JSON Open payload ``{client, round, phase, wire, T, D,
max_batch[, grad_wire][, cut]}`` (``wire``: the activations' wire format, ``grad_wire``: the
gradients', ``wire`` when absent; ``cut = [head_blocks, tail_blocks]``: the client's split point,
checked against the model by :class:`CutBodies`); :class:`SessionSpec` both builds it (:meth:`SessionSpec.to_json`, client side) and
parses and checks it (:meth:`SessionSpec.from_json`, server side), from one table of fields.
:func:`check_forward` and :func:`check_grad` check the tensors of each later call against it,
and :func:`check_wire_dtype` is the one check of a wire dtype name. A refused request raises
:class:`ServiceError` naming a gRPC status code, which the service maps onto the wire.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedft import keys
from fedft.accounting import Phase
from fedft.body import codec
from fedft.body.codec import Frame, WireDtype, WireFormat, check_wire_dtype
from fedft.body.wire import Wire

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "CutBodies",
    "MASK_DTYPES",
    "MAX_OPEN_BYTES",
    "OPEN_FIELDS",
    "ServiceError",
    "SessionSpec",
    "check_forward",
    "check_grad",
    "check_wire_dtype",
    "invalid",
]

DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20  # gRPC message cap of both the client and the service
MASK_DTYPES = (torch.bool, torch.int64, torch.int32, torch.uint8)
MAX_OPEN_BYTES = 4096

#: SessionSpec attribute -> key of the Open payload, in field (and payload) order
OPEN_FIELDS: dict[str, str] = {
    "client": keys.BODY_OPEN_CLIENT, "round": keys.BODY_OPEN_ROUND,
    "phase": keys.BODY_OPEN_PHASE, "wire": keys.BODY_OPEN_WIRE, "T": keys.BODY_OPEN_T,
    "D": keys.BODY_OPEN_D, "max_batch": keys.BODY_OPEN_MAX_BATCH,
}
_POSITIVE = (keys.BODY_OPEN_T, keys.BODY_OPEN_D, keys.BODY_OPEN_MAX_BATCH)


class ServiceError(Exception):
    """A request refused for one client: ``status`` names the gRPC status code."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, " ".join(message.split())


def invalid(message: str) -> ServiceError:
    """An ``INVALID_ARGUMENT`` error."""
    return ServiceError("INVALID_ARGUMENT", message)


@dataclass(frozen=True)
class SessionSpec:
    """What a client negotiated at Open: who it is and the shape and precision of its tensors."""

    client: str
    round: int
    phase: str
    wire: WireDtype
    T: int  # the longest sequence a Forward may carry (batches may be shorter)
    D: int
    max_batch: int
    cut: tuple[int, int] | None = None  # (head_blocks, tail_blocks); None: the service's own body
    grad_wire: WireDtype | None = None  # the gradients' wire format; None: the same as ``wire``
    feedback: bool = False  # error feedback on top-k gradient frames (both senders)

    def to_json(self) -> bytes:
        """The Open payload a client sends (no checks here: the service checks it)."""
        d: dict = {key: getattr(self, attr) for attr, key in OPEN_FIELDS.items()}
        if self.grad_wire is not None and self.grad_wire != self.wire:
            d[keys.BODY_OPEN_GRAD_WIRE] = self.grad_wire
        if self.feedback:
            d[keys.BODY_OPEN_FEEDBACK] = True
        if self.cut is not None:
            d[keys.BODY_OPEN_CUT] = list(self.cut)
        return json.dumps(d).encode()

    @classmethod
    def from_json(cls, payload: bytes, max_message_bytes: int) -> SessionSpec:
        """Parse and check an Open payload; raise ``INVALID_ARGUMENT`` naming the bad field."""
        if len(payload) > MAX_OPEN_BYTES:
            raise invalid(f"Open payload of {len(payload)} bytes exceeds {MAX_OPEN_BYTES} bytes")
        try:
            d = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # deep nesting: RecursionError
            raise invalid(f"Open payload is not JSON: {str(e)[:200]}") from None
        if not isinstance(d, dict):
            raise invalid("Open payload must be a JSON object")
        missing = [k for k in OPEN_FIELDS.values() if k not in d]
        if missing:
            raise invalid(f"Open payload lacks {missing}")
        for k in _POSITIVE:
            if type(d[k]) is not int or d[k] < 1:
                raise invalid(f"Open field {k!r} must be a positive integer, got {d[k]!r}")
        if type(d[keys.BODY_OPEN_ROUND]) is not int or d[keys.BODY_OPEN_ROUND] < 0:
            raise invalid(f"Open field 'round' must be an integer >= 0, got {d['round']!r}")
        try:
            wire = check_wire_dtype(d[keys.BODY_OPEN_WIRE])
            grad_wire = check_wire_dtype(d.get(keys.BODY_OPEN_GRAD_WIRE, wire))
        except ValueError as e:
            raise invalid(str(e)) from None
        phase = d[keys.BODY_OPEN_PHASE]
        if not isinstance(phase, str) or phase not in {p.value for p in Phase}:
            raise invalid(f"phase {phase!r} unknown; use {sorted(Phase)}")
        client = d[keys.BODY_OPEN_CLIENT]
        if isinstance(client, bool) or not isinstance(client, str | int) or not 0 < len(str(client)) <= 256:
            raise invalid(f"Open field 'client' must be a short non-empty string, got {client!r}")
        feedback = d.get(keys.BODY_OPEN_FEEDBACK, False)
        if not isinstance(feedback, bool):
            raise invalid(f"Open field 'feedback' must be true or false, got {feedback!r}")
        cut = d.get(keys.BODY_OPEN_CUT)
        if cut is not None and (not isinstance(cut, list) or len(cut) != 2
                                or any(type(c) is not int or c < 0 for c in cut)):
            raise invalid(f"Open field 'cut' must be [head_blocks, tail_blocks], two integers >= 0, got {cut!r}")
        spec = cls(**{**{attr: d[key] for attr, key in OPEN_FIELDS.items()}, "client": str(client),
                      "wire": wire}, cut=None if cut is None else (cut[0], cut[1]), grad_wire=grad_wire, feedback=feedback)
        if spec.max_request_bytes > max_message_bytes:
            raise invalid(f"max_batch x T x D = {spec.max_batch} x {spec.T} x {spec.D} needs "
                          f"{spec.max_request_bytes} bytes per message; the service allows "
                          f"{max_message_bytes}")
        return spec

    @functools.cached_property
    def formats(self) -> Wire:
        """The negotiated formats (parsed once per session: every Forward and Backward checks them)."""
        return Wire(self.wire, self.grad_wire, self.feedback)

    @property
    def max_request_bytes(self) -> int:
        """Largest valid Forward request, and the most any of its frames may decode to: a
        (max_batch, T, D) frame, float32 or in the session's format, whichever is longer (int4
        with groups wider than ``D`` and top-k keeping most of a row outgrow float32 on the
        wire, never once decoded), plus an int64 mask frame."""
        shape = (self.max_batch, self.T, self.D)
        return (max(codec.frame_nbytes(shape, torch.float32), self.formats.act_format.frame_nbytes(shape))
                + codec.frame_nbytes((self.max_batch, self.T), torch.int64))


@dataclass(frozen=True)
class CutBodies:
    """What a service needs to run each client from its own cut: the model's number of blocks,
    the cut of the service's own body, and ``make(h, t)``, the body of blocks ``[h, L - t)``
    (the server's model's blocks, by reference)."""

    n_layers: int
    default: tuple[int, int]
    make: Callable[[int, int], nn.Module]

    def check(self, cut: tuple[int, int], frozen: bool) -> None:
        """Refuse (``INVALID_ARGUMENT``) a cut that does not fit the model, or another cut than
        the service's own when the body trains (one trainable body has one cut)."""
        h, t = cut
        if h + t > self.n_layers:
            raise invalid(f"cut (head_blocks, tail_blocks) = ({h}, {t}) does not fit the model's "
                          f"{self.n_layers} blocks; use head_blocks + tail_blocks <= {self.n_layers}")
        if not frozen and cut != self.default:
            raise invalid(f"cut ({h}, {t}) differs from the trainable body's cut {self.default}; a "
                          "trainable body serves one cut")


def _finite(t: torch.Tensor) -> bool:
    """True if no NaN or infinity: min and max propagate NaN, and one reduction is much faster
    than ``isfinite(t).all()``, which allocates a boolean tensor."""
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _check_format(frame: Frame, fmt: WireFormat, what: str) -> torch.Tensor:
    """The frame's tensor if it travelled in the negotiated format (and parameter)."""
    t = frame.tensor
    D = int(t.shape[-1]) if t.dim() else 1
    if frame.kind != fmt.kind or frame.param != fmt.expected_param(D):
        got = frame.kind + (f" (parameter {frame.param})" if frame.param else "")
        raise invalid(f"{what} arrived as {got}, the session negotiated {fmt.name}")
    return t


def check_forward(
    frames: Sequence[Frame], spec: SessionSpec
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check a Forward request, frames ``h (B, T', D)`` and optional ``mask (B, T')``: ``T'`` may
    be shorter than the negotiated ``T`` (language-model batches are padded per batch)."""
    if len(frames) not in (1, 2):
        raise invalid(f"Forward takes 1 or 2 frames (h [, mask]), got {len(frames)}")
    h = _check_format(frames[0], spec.formats.act_format, "h")
    shape = tuple(h.shape)
    if len(shape) != 3 or not (1 <= shape[0] <= spec.max_batch and 1 <= shape[1] <= spec.T) or shape[2] != spec.D:
        raise invalid(f"h has shape {shape}, expected (B <= {spec.max_batch}, T <= {spec.T}, {spec.D})")
    if not _finite(h):
        raise invalid("h contains NaN or infinite values")
    if len(frames) == 1:
        return h, None
    mask = frames[1].tensor
    if mask.dtype not in MASK_DTYPES:
        raise invalid(f"mask has dtype {mask.dtype}, expected bool or an integer type")
    if tuple(mask.shape) != shape[:2]:
        raise invalid(f"mask has shape {tuple(mask.shape)}, expected {shape[:2]}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise invalid("mask values must be 0 or 1")
    return h, mask


def check_grad(
    frames: Sequence[Frame], spec: SessionSpec, out_shape: tuple[int, ...]
) -> torch.Tensor:
    """Check a Backward request: one frame shaped like the last Forward output."""
    if len(frames) != 1:
        raise invalid(f"Backward takes 1 frame (grad), got {len(frames)}")
    g = _check_format(frames[0], spec.formats.grad_format, "grad")
    if tuple(g.shape) != out_shape:
        raise invalid(f"grad has shape {tuple(g.shape)}, the last Forward output was {out_shape}")
    if not _finite(g):
        raise invalid("grad contains NaN or infinite values")
    return g
