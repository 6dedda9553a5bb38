"""The split training step, the body-free local step and EL2N scoring, shared by every strategy.

``split_step`` runs one step over a :class:`~fedft.body.transport.Transport`, with the autograd
graph cut at both boundaries so every tensor that crosses is explicit::

    h, mask = head(batch)                 # client
    z = transport.forward(h, mask)        # activations up, body on the server, activations down
    z_c = z.detach().requires_grad_()     # cut: the client's graph starts again here
    loss = model_loss(tail(z_c, mask), batch); loss.backward()   # tail grads and z_c.grad
    g_h = transport.backward(z_c.grad)    # gradients up, body vector-Jacobian product, down
    h.backward(g_h)                       # prompts / trainable head, if any

No optimizer is stepped here; the caller owns optimizers and schedules. With a
:class:`~fedft.flops.FlopsMeter`, FLOPs are recorded per party and part. Server FLOPs are
measured around the transport calls, so they are counted when the body runs in this process
(``LoopbackTransport``); a remote body service meters its own and reports them with ``add``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedft.accounting import Phase
from fedft.body.transport import Transport
from fedft.flops import FlopsMeter
from fedft.split.defence import distance_correlation, raw_input
from fedft.split.parts import SplitParts

Batch = Mapping[str, Any]
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


@dataclass
class StepResult:
    """Loss value, detached logits and number of samples of one step."""

    loss: float
    logits: torch.Tensor
    n: int


def _shapes(batch: Batch) -> tuple[Any, ...]:
    return tuple(
        (k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()) if isinstance(v, torch.Tensor)
    )


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _meter(
    flops: FlopsMeter | None, party: str, phase: str, part: str, direction: str,
    key: Hashable | None,
) -> Any:
    return nullcontext() if flops is None else flops.measure(party, phase, part, direction, key)


def split_step(
    parts: SplitParts, batch: Batch, transport: Transport, model_loss: LossFn,
    flops: FlopsMeter | None = None, phase: str = Phase.SPLIT, nopeek: float = 0.0,
) -> StepResult:
    """One split forward/backward through head -> transport (body) -> tail; no optimizer step.

    ``nopeek > 0`` adds ``nopeek`` x the distance correlation of the batch's inputs and the sent
    activations to what the head minimises (:mod:`fedft.split.defence`)."""
    key: Hashable | None = None
    if flops is not None:  # what fixes the work: shapes and which parameters train
        key = (_shapes(batch), _trainable(parts.head), _trainable(parts.body), _trainable(parts.tail))
    with _meter(flops, "client", phase, "head", "fwd", key):
        h, mask = parts.head(batch)  # (B, T, D), (B, T) | None
    with _meter(flops, "server", phase, "body", "fwd", key):
        z = transport.forward(h, mask)  # (B, T, D)
    z_c = z.detach().requires_grad_(True)
    with _meter(flops, "client", phase, "tail", "fwd", key):
        logits = parts.tail(z_c, mask)
        loss = model_loss(logits, batch)
    with _meter(flops, "client", phase, "tail", "bwd", key):
        loss.backward()
    assert z_c.grad is not None
    with _meter(flops, "server", phase, "body", "bwd", key):
        g_h = transport.backward(z_c.grad)  # (B, T, D)
    if h.requires_grad:
        with _meter(flops, "client", phase, "head", "bwd", key):
            if nopeek:
                penalty = nopeek * distance_correlation(raw_input(parts.model, batch), h)
                torch.autograd.backward([h, penalty], [g_h.to(h.dtype), None])
            else:
                h.backward(g_h.to(h.dtype))
    return StepResult(float(loss.detach()), logits.detach(), int(logits.shape[0]))


def local_step(
    parts: SplitParts, batch: Batch, model_loss: LossFn, flops: FlopsMeter | None = None,
    phase: str = Phase.LOCAL,
) -> StepResult:
    """Head -> tail directly (body skipped), loss and backward; no optimizer step."""
    key = None if flops is None else (_shapes(batch), _trainable(parts.head), _trainable(parts.tail))
    with _meter(flops, "client", phase, "head", "fwd", key):
        h, mask = parts.head(batch)
    with _meter(flops, "client", phase, "tail", "fwd", key):
        logits = parts.tail(h, mask)
        loss = model_loss(logits, batch)
    # one backward through tail and head; attributed to the tail (the head's share is the
    # prompt concatenation when h = 0, which costs no FLOPs)
    with _meter(flops, "client", phase, "tail", "bwd", key):
        loss.backward()
    return StepResult(float(loss.detach()), logits.detach(), int(logits.shape[0]))


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode and restore every submodule's own flag afterwards."""
    saved = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def el2n_scores(
    parts: SplitParts, batch: Batch, flops: FlopsMeter | None = None, phase: str = Phase.PRUNING,
    batch_norm_stats: bool = False,
) -> torch.Tensor:
    """EL2N per sample, ``||softmax(tail(head(x))) - onehot(y)||_2``: (B,), body skipped.

    Runs without gradients and in eval mode (no prompt dropout); draws no random numbers. With
    ``batch_norm_stats`` the model's readout norm standardises with this batch's statistics
    (its running statistics are left unchanged).
    """
    key = (_shapes(batch), "el2n")
    norm = getattr(parts.model, "readout_norm", None)
    stats = norm.batch_statistics() if batch_norm_stats and norm is not None else nullcontext()
    with torch.no_grad(), eval_mode(parts.head, parts.tail), stats:
        with _meter(flops, "client", phase, "head", "fwd", key):
            h, mask = parts.head(batch)
        with _meter(flops, "client", phase, "tail", "fwd", key):
            logits = parts.tail(h, mask)  # (B, C)
    if logits.dim() == 3:  # (B, T, V): a language model
        return lm_el2n(logits, batch["labels"])
    if logits.dim() != 2:
        raise ValueError(f"EL2N needs class logits (B, C) or token logits (B, T, V), got {tuple(logits.shape)}")
    onehot = F.one_hot(batch["labels"].long(), logits.shape[-1]).to(torch.float32)  # (B, C)
    return (logits.float().softmax(dim=-1) - onehot).norm(dim=-1)


def lm_el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N of a language model per sample: the mean over its labelled next tokens of
    ``||softmax(z_t) - onehot(y_{t+1})||_2`` (B,); 0 for a sample without labelled tokens.

    ``||p - e_y||^2 = sum p^2 - 2 p_y + 1``, computed from log-sum-exps so no (B, T, V)
    probability tensor is materialised beside the logits."""
    z, y = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t + 1
    keep = y != -100
    lse = z.logsumexp(-1)  # (B, T - 1)
    sum_p2 = (torch.logsumexp(2 * z, -1) - 2 * lse).exp()
    p_y = (z.gather(-1, y.clamp(min=0)[..., None])[..., 0] - lse).exp()
    dist = (sum_p2 - 2 * p_y + 1).clamp(min=0).sqrt() * keep
    return dist.sum(-1) / keep.sum(-1).clamp(min=1)
