"""What a client's part of a run holds in memory, and the refusal of runs whose part does not fit.

:func:`measure_client_memory` measures what one client holds in one training step of the
configured strategy, in bytes, from the tensors themselves (real shapes and dtypes: ``bf16``
precision shows where it changes bytes). ``params``: every parameter and buffer the client holds,
each storage once (SmolLM2's tied LM head and embeddings once); FL strategies hold the whole
model, split strategies the head and tail only. ``grads``: one per trainable parameter held.
``optimizer``: ``train.optimizer``'s state (:func:`fedft.train.make_optimizer` over the held
trainable parameters, under their model names) after one step taken on ``meta`` tensors of the
same shapes and dtypes (AdamW: 2 x the trainable bytes + a float32 step per tensor).
``activations``: the storages autograd saves for backward in the step's forward
(:func:`torch.autograd.graph.saved_tensors_hooks`; each once, parameters excluded), plus the batch,
the head output, the logits and their gradient (backward's first transient, the largest for a
language model: 8 x 256 x 49,152 floats for SmolLM2); split: the head's forward then the tail's on a tensor of the
body output's shape (the body runs on the server); FL: the whole forward and loss. ``wire``
(split): one batch's four encoded messages (:mod:`fedft.body.codec` frames in the split's wire
formats, the mask with the activations), the body output, its gradient and the head's gradient. ``runtime``: :data:`RUNTIME_OVERHEAD_BYTES`, the idle process.

Not included, so ``total`` is a floor (experiments/resources_fit.py --validate compares it with a
real process): allocator fragmentation, transient workspaces (matmul and attention scratch, the
other gradients autograd builds during backward, the upload's copy of the trained tensors), tensors a
custom autograd function keeps outside ``save_for_backward``, passes without gradients (SFPrompt's
EL2N scoring) and the framework's non-tensor memory. The wire messages are summed although they
are not all alive at once. fedft's own simulated client process builds the whole model even for
split strategies; the report is what a device needs for its part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fedft.errors import FedftError

if TYPE_CHECKING:
    from fedft.config import ExperimentConfig
    from fedft.resources.profiles import DeviceProfile
    from fedft.split import SplitParts

# [D] the resident memory of an idle client process: Python 3.11 with torch 2.13 (CPU),
# transformers 5.24 and flwr 1.41 imported (``import fedft.federated.client``), measured once with
# psutil on fedft's development machine (x86-64 Linux): 393 MiB (torch alone: 220 MiB)
RUNTIME_OVERHEAD_BYTES = 393 * 2**20
GIB, MIB = 2**30, 2**20
Cut = tuple[int, int]


@dataclass(frozen=True)
class MemoryReport:
    """Bytes a client holds in one training step of ``strategy`` (module docstring)."""

    strategy: str
    family: str
    cut: Cut | None  # (head_blocks, tail_blocks) for split strategies
    params: int
    grads: int
    optimizer: int
    activations: int
    wire: int
    runtime: int = RUNTIME_OVERHEAD_BYTES

    PARTS = ("params", "grads", "optimizer", "activations", "wire", "runtime")

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in self.PARTS)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def breakdown(self, unit: int) -> str:
        """``params 0.4, grads 0.4, ...`` in ``unit`` bytes (GIB or MIB), one decimal."""
        return ", ".join(f"{k} {getattr(self, k) / unit:.1f}" for k in self.PARTS)


def _held(model: nn.Module, parts: SplitParts | None) -> tuple[int, dict[str, nn.Parameter]]:
    """(bytes of the parameters and buffers held, each once; the held trainable ones by name)."""
    mods = [model] if parts is None else [parts.head, parts.tail]
    tensors = {(t.data_ptr(), t.nbytes): t for m in mods for t in [*m.parameters(), *m.buffers()]}
    ids = {id(p) for m in mods for p in m.parameters() if p.requires_grad}
    trainable = {n: p for n, p in model.named_parameters() if id(p) in ids}  # shared ones once
    return sum(t.nbytes for t in tensors.values()), trainable


class _Named:
    """Anything :func:`fedft.train.make_optimizer` can group: ``named_parameters`` only."""

    def __init__(self, named: dict[str, nn.Parameter]) -> None:
        self.named = named

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(self.named.items())


def optimizer_bytes(cfg: ExperimentConfig, trainable: Mapping[str, nn.Parameter]) -> int:
    """State bytes of ``train.optimizer`` over ``trainable`` after one step (on meta tensors)."""
    from fedft.train import make_optimizer

    if not trainable:
        return 0
    fakes: dict[str, nn.Parameter] = {}
    for name, p in trainable.items():
        fake = nn.Parameter(torch.empty_like(p, device="meta"))
        fake.grad = torch.empty_like(fake)
        fakes[name] = fake
    opt = make_optimizer(_Named(fakes), cfg.train)  # type: ignore[arg-type]
    opt.step()
    total = 0
    for o in getattr(opt, "optimizers", (opt,)):  # a PairedOptimizer holds two
        for state in o.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


class _Saved:
    """Storages of tensors saved for backward (and others added), each once, minus excluded ones."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.storages: dict[int, int] = {}

    def add(self, t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta":
            s = t.untyped_storage()
            if s.data_ptr() and s.data_ptr() not in self.exclude:
                self.storages[s.data_ptr()] = s.nbytes()
        return t

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """The saved-tensor hook: ``t`` detached (``t`` itself would tie an output to its node: a leak)."""
        return self.add(t).detach()

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def _wire_bytes(cfg: ExperimentConfig, h: torch.Tensor, mask: torch.Tensor | None) -> int:
    from fedft.body import Wire, codec

    w = Wire.of(cfg.split)  # two frames of activations and two of gradients, plus the mask
    frames = 2 * (w.act_format.frame_nbytes(h.shape) + w.grad_format.frame_nbytes(h.shape)) + (
        0 if mask is None else codec.frame_nbytes(mask.shape, mask.dtype))
    return frames + 3 * h.numel() * h.element_size()  # body output, its gradient, the head's gradient


def _step_bytes(cfg: ExperimentConfig, model: Any, parts: SplitParts | None, batch: Mapping[str, Any],
                exclude: set[int]) -> tuple[int, int]:
    """(activation bytes, wire bytes) of one training step's forward on the client's side."""
    saved = _Saved(exclude)
    for v in batch.values():
        saved.add(v)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        if parts is None:
            model.train()
            logits = model(batch)
            wire = 0
        else:
            parts.head.train()
            parts.tail.train()
            h, mask = parts.head(batch)  # (B, T, D), (B, T) | None
            saved.add(h)  # held until the head's backward
            z = h.detach().clone().requires_grad_(True)  # stands for the body's output (B, T, D)
            saved.exclude = exclude | {z.untyped_storage().data_ptr()}  # counted with the wire
            logits = parts.tail(z, mask)
            wire = _wire_bytes(cfg, h, mask)
        loss = model.loss(logits, batch)
    saved.add(logits)
    saved.add(loss)
    # backward's first and largest transient for a language model: the gradient of the logits
    return saved.nbytes + logits.numel() * logits.element_size(), wire


def measure_client_memory(cfg: ExperimentConfig, model: Any, parts: SplitParts | None,
                          batch: Mapping[str, Any]) -> MemoryReport:
    """What a client holds in one training step of ``cfg``'s strategy (module docstring).

    ``model`` is the run's :class:`~fedft.model.TaskModel` (its method applied), ``parts`` its
    split for split strategies (None for FL), ``batch`` ``train.batch_size`` real examples of
    the run's shapes. Weights, gradients, flags, buffers, modes and RNG state are left as found."""
    from fedft.strategies import STRATEGIES

    family = STRATEGIES.get(cfg.federation.strategy).family
    if (family == "split") != (parts is not None):
        raise ValueError(f"strategy {cfg.federation.strategy} ({family}) needs parts "
                         f"{'from split_model' if family == 'split' else 'None'}")
    with preserved(model):
        params, trainable = _held(model, parts)
        exclude = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
        activations, wire = _step_bytes(cfg, model, parts, batch, exclude)
        optimizer = optimizer_bytes(cfg, trainable)
    cut = None if parts is None else (parts.spec.head_blocks, parts.spec.tail_blocks)
    return MemoryReport(cfg.federation.strategy, family, cut, params=params, grads=sum(p.nbytes for p in trainable.values()),
                        optimizer=optimizer, activations=activations, wire=wire)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore ``model``'s requires_grad flags, gradients, buffers, train/eval modes and the CPU
    RNG state on exit."""
    flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for p, flag, grad in flags:
                p.requires_grad_(flag)
                p.grad = grad
            for m, mode in modes:
                m.training = mode


def client_parts(cfg: ExperimentConfig, model: Any, cut: Cut | None) -> SplitParts | None:
    """The client-side parts at ``cut`` as the run's clients build them (None for FL strategies,
    whose clients hold the whole model whatever the cut); changes requires_grad flags like
    :func:`fedft.federated.client.split_parts`."""
    from fedft.split import SplitSpec, split_model
    from fedft.strategies import STRATEGIES

    cls = STRATEGIES.get(cfg.federation.strategy)
    if cls.family != "split" or cut is None:
        return None
    parts = split_model(model, SplitSpec(*cut))
    if cls.trains_tail:
        parts.unfreeze_tail_blocks()
    if cfg.split.train_head:
        parts.unfreeze_head_blocks()
    return parts


def measure_cut(cfg: ExperimentConfig, model: Any, batch: Mapping[str, Any], cut: Cut | None) -> MemoryReport:
    """:func:`measure_client_memory` for the client part at ``cut`` = (head_blocks, tail_blocks)
    (ignored by FL strategies: pass None)."""
    with preserved(model):
        return measure_client_memory(cfg, model, client_parts(cfg, model, cut), batch)


def training_batch(cfg: ExperimentConfig, raw: Any, preprocess: Any) -> dict[str, torch.Tensor]:
    """``train.batch_size`` training examples as the run encodes them; where batches are padded
    to their longest example (SFT), the longest ones (the largest batch a client can draw)."""
    from fedft.data.datasets import encode

    split = encode(raw, "train", preprocess, cfg.data.max_length)
    idx = np.arange(len(split))
    if split.max_tokens(idx) is not None:  # longest first
        idx = np.argsort([-int(split.max_tokens(np.array([i])) or 0) for i in idx], kind="stable")
    return split.batch(np.resize(idx, cfg.train.batch_size))  # fewer examples repeat


@dataclass(frozen=True)
class DeviceFit:
    """One device profile of a run, the clients that have it, and their part's report."""

    device: DeviceProfile
    clients: tuple[int, ...]
    report: MemoryReport

    @property
    def fits(self) -> bool:
        return self.report.total <= self.device.memory_bytes


def _hint(report: MemoryReport) -> str:
    change = ("use a split strategy (sfprompt), " if report.family != "split" else
              "keep fewer blocks on the client (split.head_blocks, split.tail_blocks), " if report.cut and any(report.cut)
              else "train only prompts and the tail (sfprompt), " if report.strategy != "sfprompt" else "")
    return f"lower train.batch_size, {change}or give these clients a larger device (resources.devices)"


def check_fit(cfg: ExperimentConfig, fits: list[DeviceFit]) -> None:
    """Raise :class:`FedftError` (one line) for the first device whose clients' part does not fit."""
    bad = [f for f in fits if not f.fits]
    if not bad:
        return
    f, r = bad[0], bad[0].report
    unit, name = (GIB, "GiB") if max(r.total, f.device.memory_bytes) >= GIB else (MIB, "MiB")
    pids = ", ".join(str(p) for p in f.clients[:8]) + (f", ... ({len(f.clients)} clients)" if len(f.clients) > 8 else "")
    more = f" (and {len(bad) - 1} more device(s))" if len(bad) > 1 else ""
    cut = f" at head_blocks={r.cut[0]}, tail_blocks={r.cut[1]}" if r.cut else ""
    raise FedftError(
        f"client part of {r.strategy}{cut} needs {r.total / unit:.1f} {name} ({r.breakdown(unit)}) but device "
        f"'{f.device.name}' (clients {pids}) has {f.device.memory_bytes / unit:.1f} {name}{more}: {_hint(r)}")


def device_cut(cfg: ExperimentConfig, device: DeviceProfile) -> Cut:
    """The cut a device's clients use: its profile's with ``resources.cuts = "profile"`` (where it
    gives one), else the config's ``split.head_blocks`` / ``split.tail_blocks``."""
    h, t = cfg.split.head_blocks, cfg.split.tail_blocks
    if cfg.resources.cuts == "profile":
        h = h if device.head_blocks is None else device.head_blocks
        t = t if device.tail_blocks is None else device.tail_blocks
    return h, t


def _groups(cfg: ExperimentConfig, a: Any, split: bool, cut_of: Callable[[int], Cut] | None,
            ) -> dict[tuple[int, Cut | None], list[int]]:
    """Clients by (profile index, cut) of the assignment ``a`` (cut None for FL strategies)."""
    order = np.argsort(a.index, kind="stable")
    groups: dict[tuple[int, Cut | None], list[int]] = {}
    for chunk in np.split(order, np.flatnonzero(np.diff(a.index[order])) + 1):
        if not len(chunk):
            continue
        k = int(a.index[chunk[0]])
        if split and cut_of is not None:
            for pid in chunk.tolist():
                groups.setdefault((k, cut_of(pid)), []).append(pid)
        else:
            groups[(k, device_cut(cfg, a.profiles[k]) if split else None)] = chunk.tolist()
    return groups


def check_run_memory(cfg: ExperimentConfig, model: Any, batch: Mapping[str, Any],
                     cut_of: Callable[[int], Cut] | None = None) -> list[DeviceFit]:
    """Measure the run's client part once per distinct cut, pair it with each device profile of the
    assignment, and raise :class:`FedftError` when some clients' part exceeds their device's memory.

    ``cut_of(pid)`` gives per-client cuts; default: ``resources.cuts = "file:..."``'s, else
    :func:`device_cut` of the client's device."""
    from fedft.resources.profiles import assign, load_catalog
    from fedft.strategies import STRATEGIES

    family = STRATEGIES.get(cfg.federation.strategy).family
    if family == "central":
        return []
    n = cfg.partition.num_clients
    a = assign(cfg.resources.devices, "device", n, cfg.seed, load_catalog(cfg.resources.profiles))
    if cut_of is None and cfg.resources.cuts.startswith("file:"):  # per-client cuts from a file
        from fedft.split.cuts import plan_cuts

        plan = plan_cuts(cfg)
        cut_of = lambda pid: (plan.of(pid).head_blocks, plan.of(pid).tail_blocks)  # noqa: E731
    reports: dict[Cut | None, MemoryReport] = {}
    fits = []
    for (k, cut), pids in _groups(cfg, a, family == "split", cut_of).items():
        if cut not in reports:
            reports[cut] = measure_cut(cfg, model, batch, cut)
        fits.append(DeviceFit(a.profiles[k], tuple(pids), reports[cut]))
    check_fit(cfg, fits)
    return fits
