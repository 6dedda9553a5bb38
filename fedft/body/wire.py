"""What one split session puts on the wire: the activations' and the gradients' formats, and
error feedback on sparsified gradients.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD") keeps, on the sender, what a
top-k frame left out and adds it to the next tensor it sends in the same direction, so nothing is
dropped for good, only delayed. Here a residual is carried while consecutive tensors have the
same shape (every batch but a short last one; a language model's batches of another length start
afresh). It applies to gradients only (activations feed a forward pass, where a delayed value is
wrong rather than late) and only to ``topk`` frames: int8 and int4 are unbiased to within their
rounding step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from fedft.body import codec
from fedft.body.codec import WireFormat, check_wire_dtype, wire_format

__all__ = ["ErrorFeedback", "Wire"]


@dataclass(frozen=True)
class Wire:
    """The formats one session negotiates: ``act`` for activations (both ways), ``grad`` for
    gradients (both ways; ``None`` = ``act``), and whether top-k gradients carry their error."""

    act: str = "fp32"
    grad: str | None = None
    feedback: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "act", check_wire_dtype(self.act))
        if self.grad is not None:
            object.__setattr__(self, "grad", check_wire_dtype(self.grad))

    @classmethod
    def of(cls, split: Any) -> Wire:
        """The wire of a ``[split]`` config (``wire_dtype``, ``grad_wire_dtype``, ``error_feedback``)."""
        return cls(split.wire_dtype, split.grad_wire_dtype or None, bool(split.error_feedback))

    @functools.cached_property
    def act_format(self) -> WireFormat:
        return wire_format(self.act)

    @functools.cached_property
    def grad_format(self) -> WireFormat:
        return wire_format(self.act if self.grad is None else self.grad)

    def grad_encoder(self) -> ErrorFeedback:
        """A fresh encoder of one sender's gradients (with its own residual)."""
        return ErrorFeedback(self.grad_format, self.feedback and self.grad_format.kind == "topk")


class ErrorFeedback:
    """Encodes a sender's successive tensors in ``fmt``, carrying what each frame lost into the
    next one of the same shape when ``enabled``."""

    def __init__(self, fmt: WireFormat | str, enabled: bool = True) -> None:
        self.fmt = wire_format(fmt)
        self.enabled = enabled and self.fmt.lossy
        self.residual: torch.Tensor | None = None

    def encode(self, t: torch.Tensor) -> bytes:
        """The frame of ``t`` (plus the carried residual)."""
        if not self.enabled:
            return codec.encode(t, self.fmt)
        x = t.detach().float().cpu()
        if self.residual is not None and self.residual.shape == x.shape:
            x = x + self.residual
        frame = codec.encode(x, self.fmt)
        self.residual = x - codec.decode(frame)
        return frame

    def reset(self) -> None:
        self.residual = None
