"""What travels in a federated round, for any fine-tuning method, and how uploads are combined.

* **Download** (server -> client): :func:`download`, the method's ``download`` arrays (dense
  copies of everything a client may train, or a sparse ``name::idx`` / ``name::val`` form),
  restricted to the client-held parts in split strategies, plus the readout norm's running
  statistics and the head preconditioner's second moment when the model has them.
* **Upload** (client -> server): :func:`upload`, the method's ``encode_update``: what this client
  trained, dense or sparse (HFT: the half trained this stage; GreenTrainer: the tensors this
  client selected; LT-SFT phase 2: K indices and values), plus the same buffers.
* **Aggregation**: :func:`fedft.federated.aggregation.aggregate` is FedAvg per tensor over the clients that sent it (a
  tensor nobody sent keeps its global value), and for sparse pairs a masked weighted mean per
  index over the clients that sent that index. The result is decoded into the server's model
  (the source of truth), from which the next download is cut.

Uploads are checked against the model before they are combined (:func:`check_upload`): names,
shapes, dtypes, finite values, and in-range, unique indices, so a client that sends garbage is
dropped with a reason and never reaches the arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from fedft.federated.aggregation import Update
from fedft.methods.base import BaseMethod, state_tensors

if TYPE_CHECKING:
    from fedft.split import SplitParts

IDX, VAL = "::idx", "::val"


def extra_buffers(model: nn.Module) -> list[str]:
    """Buffers that travel with every method: readout-norm statistics and the head's second moment."""
    return [n for n, _ in model.named_buffers()
            if (n.startswith("readout_norm.") and n.endswith(("running_mean", "running_var")))
            or n.startswith("head_stats.")]


def _client_filter(update: Update, parts: SplitParts | None) -> Update:
    if parts is None:
        return update
    client = set(parts.client_named_parameters())
    return {k: v for k, v in update.items() if k.split("::")[0] in client}


def _with_buffers(update: Update, model: nn.Module) -> Update:
    state = state_tensors(model)
    for n in extra_buffers(model):
        update[n] = state[n].detach().cpu().numpy().copy()
    return update


def download(method: BaseMethod, model: nn.Module, parts: SplitParts | None = None) -> Update:
    """The server's global state as sent to a client this round."""
    return _with_buffers(_client_filter(method.download(model), parts), model)


def upload(method: BaseMethod, model: nn.Module, parts: SplitParts | None = None) -> Update:
    """What a client sends back after training."""
    return _with_buffers(_client_filter(method.encode_update(model), parts), model)


def receive(method: BaseMethod, model: nn.Module, update: Update) -> None:
    """Load a download or an aggregate into ``model`` (sparse pairs through the method)."""
    method.decode_update(model, update)


def check_upload(update: Update, model: nn.Module, allowed: set[str]) -> str | None:
    """Why an upload cannot be combined, or None. ``allowed``: tensor names a client may send."""
    state = state_tensors(model)
    if not update:
        return "the update is empty"
    for key, v in update.items():
        name, _, part = key.partition("::")
        if name not in allowed or name not in state:
            return f"unexpected tensor {key!r}"
        ref = state[name]
        if part == "":
            if tuple(v.shape) != tuple(ref.shape) or str(v.dtype) != str(ref.dtype).removeprefix("torch."):
                return f"tensor {key!r} is {v.dtype}{tuple(v.shape)}, expected {str(ref.dtype).removeprefix('torch.')}{tuple(ref.shape)}"
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                return f"tensor {key!r} has non-finite values"
        elif part == "idx":
            val = update.get(name + VAL)
            if val is None or v.ndim != 1 or v.dtype != np.int64 or val.shape != v.shape or val.dtype != np.float32:
                return f"sparse tensor {name!r} needs int64 {IDX} and float32 {VAL} of one equal length"
            if len(v) and (v.min() < 0 or v.max() >= ref.numel() or len(np.unique(v)) != len(v)):
                return f"sparse tensor {name!r} has indices out of range or repeated"
            if not np.isfinite(val).all():
                return f"sparse tensor {name!r} has non-finite values"
        elif part == "val":
            if name + IDX not in update:
                return f"sparse tensor {name!r} has values but no indices"
        else:
            return f"unexpected tensor {key!r}"
    return None


def numel(update: Update) -> int:
    """Values in an update (a sparse pair counts its values once)."""
    return int(sum(v.size for k, v in update.items() if not k.endswith(IDX)))
