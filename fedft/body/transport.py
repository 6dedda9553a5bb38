"""Transports carry the per-batch split traffic between a client's head/tail and the server's body.

A transport has two calls, mirroring the four messages of a U-split::

    z   = transport.forward(h, mask)   # activations up, activations down
    g_h = transport.backward(g_z)      # gradients up, gradients down

Every tensor goes through the wire codec (:mod:`fedft.body.codec`), and the transport records
``len()`` of each encoded message in the ledger, so the bytes counted are the bytes sent. The
server half of a step is a :class:`BodySession`, shared by the in-process transport below and by
the gRPC body service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from fedft.accounting import CommLedger, Kind, Phase
from fedft.body import codec
from fedft.body.wire import Wire


class Transport(Protocol):
    """The client's view of the server-side body."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Send the head output (and the (B, T) mask for text); return the body output."""
        ...

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        """Send the gradient at the body output; return the gradient at the body input."""
        ...


class BodySession:
    """Server half of split steps for one client: keeps the body graph between the two calls.

    With a frozen body, the backward forms only the gradient with respect to the body input.
    With a trainable body, weight gradients accumulate too and ``after_backward`` (for example
    an optimizer step) runs after each backward. ``inputs_only`` forms the input gradient alone
    whatever the blocks' ``requires_grad`` (a frozen body over blocks that other clients train
    in their tails: heterogeneous split points).
    """

    def __init__(
        self, body: nn.Module, after_backward: Callable[[], None] | None = None,
        inputs_only: bool = False,
    ) -> None:
        self.body = body
        self.after_backward = after_backward
        self.inputs_only = inputs_only
        self._inp: torch.Tensor | None = None
        self._out: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Run the body on received activations; keep the graph for :meth:`backward`."""
        self._inp = h.detach().float().requires_grad_(True)
        with torch.enable_grad():
            self._out = self.body(self._inp, mask)
        return self._out.detach()

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        """Back-propagate the received gradient; return the gradient at the body input."""
        if self._inp is None or self._out is None:
            raise RuntimeError("backward called before forward in this session")
        if self.inputs_only:
            (g,) = torch.autograd.grad(self._out, self._inp, grad.to(self._out.dtype))
        else:
            self._out.backward(grad.to(self._out.dtype))
            g = self._inp.grad
        self._inp = self._out = None
        if self.after_backward is not None:
            self.after_backward()
        assert g is not None
        return g

    def reset(self) -> None:
        """Drop any graph kept from an unfinished step."""
        self._inp = self._out = None


class LoopbackTransport:
    """In-process transport: encodes, records and decodes every message, then calls the body."""

    def __init__(
        self,
        session: BodySession,
        ledger: CommLedger,
        round: int = 0,
        client: str = "0",
        phase: str = Phase.SPLIT,
        wire: Wire | str = "fp32",
    ) -> None:
        self.session, self.ledger = session, ledger
        self.round, self.client, self.phase = round, client, phase
        self.wire = wire if isinstance(wire, Wire) else Wire(wire)
        self._grads_up, self._grads_down = self.wire.grad_encoder(), self.wire.grad_encoder()

    def _send(self, kind: Kind, msg: bytes) -> list[torch.Tensor]:
        self.ledger.add(self.round, self.client, self.phase, kind, len(msg))
        return codec.decode_many(msg)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        msg = codec.encode_many([h] if mask is None else [h, mask], self.wire.act_format)
        recv = self._send(Kind.ACTIVATIONS_UP, msg)
        z = self.session.forward(recv[0], recv[1] if len(recv) > 1 else None)
        return self._send(Kind.ACTIVATIONS_DOWN, codec.encode(z, self.wire.act_format))[0].to(h.dtype)

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        (g_z,) = self._send(Kind.GRADS_UP, self._grads_up.encode(grad))
        g_h = self.session.backward(g_z.float())
        return self._send(Kind.GRADS_DOWN, self._grads_down.encode(g_h))[0].to(grad.dtype)
