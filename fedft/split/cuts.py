"""Heterogeneous split points: the (head_blocks, tail_blocks) cut each client trains at.

``resources.cuts`` says where a client's cut comes from:

* ``"config"`` (the default): everyone at ``split.head_blocks`` / ``split.tail_blocks``;
* ``"profile"``: each client's device profile (``resources.devices``) gives its cut
  (``DeviceProfile.head_blocks`` / ``tail_blocks``; a profile without one takes the config's);
* ``"file:<path>"``: a JSON object ``{"<client id>": [h, t], ...}``; clients it does not name
  take the config's cut.

A client at cut (h, t) holds the embeddings, the prompts and blocks ``[0, h)`` (its head), and
blocks ``[L - t, L)`` with the final norm and the task head (its tail); the body service runs
blocks ``[h, L - t)`` of the server's own model for it. What a client trains at its cut
(:func:`part_names`) is what the method trains in its head and tail, plus its tail blocks when
the strategy trains the tail (SFPrompt, SFL) and its head blocks with ``split.train_head``. The
server sends each client the global tensors of its head and tail that some client trains, and
averages each tensor over the clients that sent it (:class:`CutNames`; docs/sfprompt.md,
"Heterogeneous split points").

Limits (:func:`check_supported`): only strategies with a frozen body take heterogeneous cuts
(a block that is server-side for one client and client-side for another cannot be both the
shared trainable body and a FedAvg-ed client block), and only an aggregator that averages each
tensor over its senders (``fedavg``), and not with ``split.noise``. A client process serving many clients re-cuts its model
each round (:func:`apply_cut`: by reference, no copies), so methods whose round hooks change
``requires_grad`` see the cut's flags first, as they see the config cut's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedft.accounting import Phase
from fedft.body.spec import CutBodies
from fedft.errors import ConfigError
from fedft.flops import FlopsMeter
from fedft.split.parts import Body, SplitParts, split_model
from fedft.split.spec import SplitSpec

if TYPE_CHECKING:
    from fedft.config import ExperimentConfig
    from fedft.model.task import TaskModel


@dataclass(frozen=True, eq=False)
class CutPlan:
    """Every client's cut: ``table[pid] = (h, t)``; ``table is None`` puts everyone at ``default``."""

    default: SplitSpec
    table: np.ndarray | None  # (N, 2) int32, or None (resources.cuts = "config")
    source: str = "config"  # the resources.cuts value, for messages

    @property
    def heterogeneous(self) -> bool:
        """True when cuts come per client (``resources.cuts`` is not ``config``)."""
        return self.table is not None

    def of(self, pid: int) -> SplitSpec:
        """Client ``pid``'s cut."""
        if self.table is None:
            return self.default
        h, t = self.table[pid]
        return SplitSpec(int(h), int(t))

    def distinct(self) -> list[SplitSpec]:
        """The different cuts of the run, sorted."""
        if self.table is None:
            return [self.default]
        return [SplitSpec(int(h), int(t)) for h, t in np.unique(self.table, axis=0)]

    def clients_at(self, spec: SplitSpec, limit: int = 5) -> list[int]:
        """Up to ``limit`` clients at ``spec`` (for messages)."""
        if self.table is None:
            return []
        hit = (self.table[:, 0] == spec.head_blocks) & (self.table[:, 1] == spec.tail_blocks)
        return [int(i) for i in np.flatnonzero(hit)[:limit]]


def profile_table(assignment: Any, default: SplitSpec) -> np.ndarray:
    """(N, 2) cuts from a device :class:`~fedft.resources.profiles.Assignment`: each profile's
    ``head_blocks`` / ``tail_blocks``, the config's where the profile gives none."""
    per = np.array([[default.head_blocks if p.head_blocks is None else p.head_blocks,
                     default.tail_blocks if p.tail_blocks is None else p.tail_blocks]
                    for p in assignment.profiles], dtype=np.int32).reshape(-1, 2)
    return per[np.asarray(assignment.index)]


def _pair(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(type(v) is int and v >= 0 for v in value))


def load_cut_file(path: str, n: int, default: SplitSpec) -> np.ndarray:
    """(N, 2) cuts from a JSON file ``{"<client id>": [h, t], ...}``; clients not named take
    ``default``. Raises a one-line :class:`ConfigError` naming what is wrong."""
    where = f"resources.cuts=file:{path}"
    form = 'a JSON object {"<client id>": [head_blocks, tail_blocks], ...}'
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it ({e.strerror or e}); give {form}") from None
    except ValueError as e:
        raise ConfigError(f"{where} is not JSON ({' '.join(str(e).split())}); give {form}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} holds a {type(doc).__name__}; give {form}")
    table = np.tile(np.array([default.head_blocks, default.tail_blocks], dtype=np.int32), (n, 1))
    for key, cut in doc.items():
        if not (key.isdigit() and int(key) < n):
            raise ConfigError(f"{where}: client id {key!r} is not an integer in 0..{n - 1} "
                              f"(partition.num_clients = {n})")
        if not _pair(cut):
            raise ConfigError(f"{where}: client {key} has cut {cut!r}; give [head_blocks, tail_blocks], "
                              "two integers >= 0")
        table[int(key)] = cut
    return table


@functools.lru_cache(maxsize=8)
def plan_cuts(cfg: ExperimentConfig) -> CutPlan:
    """The run's :class:`CutPlan` (cached per config: a client process reads it every round)."""
    default = SplitSpec(cfg.split.head_blocks, cfg.split.tail_blocks)
    source, n = cfg.resources.cuts, cfg.partition.num_clients
    if source == "config":
        return CutPlan(default, None)
    if source.startswith("file:"):
        return CutPlan(default, load_cut_file(source[len("file:"):], n, default), source)
    if not cfg.resources.devices:
        raise ConfigError("resources.cuts=profile needs device profiles: set resources.devices (a profile "
                          "name, a name=p mixture or file:<path>), or use resources.cuts=file:<path>")
    from fedft.resources.profiles import assign, load_catalog

    devices = assign(cfg.resources.devices, "device", n, cfg.seed, load_catalog(cfg.resources.profiles))
    return CutPlan(default, profile_table(devices, default), source)


def check_supported(cfg: ExperimentConfig, strategy: Any, per_key_aggregator: bool) -> None:
    """Refuse, with one line, heterogeneous cuts where they are not defined: a strategy that trains
    the body (``strategy.body_mode != "frozen"``), activation noise (placed at the config's cut) or
    an aggregator that needs every client to send the same tensors. FL strategies hold the whole
    model, so cuts do not apply to them."""
    cuts = cfg.resources.cuts
    if cuts == "config" or strategy.family != "split":
        return
    if strategy.body_mode != "frozen":
        raise ConfigError(
            f"resources.cuts={cuts} needs a strategy with a frozen body (sfprompt and its variants, sfl, "
            f"split_fedavg); {strategy.name} trains the body, and a block that is server-side for one client "
            "and client-side for another cannot be both the shared trainable body and a FedAvg-ed client "
            "block: use resources.cuts=config")
    if cfg.split.noise > 0:
        raise ConfigError(f"resources.cuts={cuts} with split.noise > 0: the activation noise sits after "
                          "split.head_blocks for every client, not at each client's cut; use split.noise=0 "
                          "or resources.cuts=config")
    if not per_key_aggregator:
        raise ConfigError(
            f"resources.cuts={cuts} needs federation.aggregator=fedavg (each tensor averaged over the clients "
            f"that hold it); {cfg.federation.aggregator} needs every client to send the same tensors")


def check_plan(plan: CutPlan, model: TaskModel) -> None:
    """Refuse, with one line, a cut the model cannot take (h + t > L, a CLS readout with no
    client block, deep prompts), naming the clients at it."""
    for spec in plan.distinct():
        try:
            split_model(model, spec)
        except ValueError as e:
            who = plan.clients_at(spec)
            raise ConfigError(f"resources.cuts={plan.source}: client(s) {who} at cut (head_blocks, "
                              f"tail_blocks) = ({spec.head_blocks}, {spec.tail_blocks}): {e}") from None


def _ids(params: Iterable[Any]) -> set[int]:
    return {id(p) for p in params}


def part_names(model: TaskModel, spec: SplitSpec, base: Iterable[str], trains_tail: bool,
               train_head: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(held, trained) parameter names of a client at ``spec``: everything in its head and tail,
    and what it trains there (``base``: the method's trainable names, before any cut)."""
    base = set(base)
    parts = split_model(model, spec)
    head_b, tail_b = _ids(parts.head.blocks.parameters()), _ids(parts.tail.blocks.parameters())
    held_ids = _ids([*parts.head.parameters(), *parts.tail.parameters()])
    held, trained = set(), set()
    for n, p in model.named_parameters():
        if id(p) in held_ids:
            held.add(n)
            if n in base or (trains_tail and id(p) in tail_b) or (train_head and id(p) in head_b):
                trained.add(n)
    return frozenset(held), frozenset(trained)


def apply_cuts(model: TaskModel, specs: Iterable[SplitSpec], base: Iterable[str], trains_tail: bool,
               train_head: bool) -> None:
    """Set every block parameter's ``requires_grad`` to the method's (``base``), then unfreeze the
    tail blocks (``trains_tail``) and head blocks (``train_head``) of each cut in ``specs``."""
    base = set(base)
    block_ids = _ids(p for b in model.blocks for p in b.parameters())
    for n, p in model.named_parameters():
        if id(p) in block_ids:
            p.requires_grad_(n in base)
    for spec in specs:
        parts = split_model(model, spec)
        if trains_tail:
            parts.unfreeze_tail_blocks()
        if train_head:
            parts.unfreeze_head_blocks()


def apply_cut(model: TaskModel, spec: SplitSpec, base: Iterable[str], trains_tail: bool,
              train_head: bool) -> SplitParts:
    """The client's parts at ``spec``, with ``requires_grad`` set for this cut alone (a block
    trains only if it is in this client's tail, or head with ``train_head``)."""
    apply_cuts(model, [spec], base, trains_tail, train_head)
    return split_model(model, spec)


class CutNames:
    """The server's view of a heterogeneous run: per distinct cut, the names a client there holds
    and trains; the download of client ``pid`` and what its upload may contain."""

    def __init__(self, model: TaskModel, plan: CutPlan, base: Iterable[str], trains_tail: bool,
                 train_head: bool) -> None:
        self.plan = plan
        base = frozenset(base)
        self._flags = (base, trains_tail, train_head)
        self.held: dict[SplitSpec, frozenset[str]] = {}
        self.trained: dict[SplitSpec, frozenset[str]] = {}
        for spec in plan.distinct():
            self.held[spec], self.trained[spec] = part_names(model, spec, base, trains_tail, train_head)
        self.union: frozenset[str] = frozenset().union(*self.trained.values())
        self.flops: dict[SplitSpec, tuple[float, float]] = {}  # the server's body FLOPs per cut (its cache)

    @classmethod
    def for_server(cls, cfg: ExperimentConfig, strategy: Any, model: TaskModel, base: Iterable[str]) -> CutNames | None:
        """The server's names for a run with heterogeneous cuts (None otherwise): every cut checked
        against ``model``, and every block some client trains made trainable on it (so its download
        holds them)."""
        plan = plan_cuts(cfg)
        if strategy.family != "split" or not plan.heterogeneous:
            return None
        check_plan(plan, model)
        names = cls(model, plan, base, strategy.trains_tail, cfg.split.train_head)
        names.apply(model)
        return names

    def apply(self, model: TaskModel) -> None:
        """Make every block some client trains trainable on ``model`` (the server's: its download
        then holds them), the rest of the blocks as the method left them."""
        apply_cuts(model, self.plan.distinct(), *self._flags)

    def restrict(self, update: dict[str, Any], buffers: Iterable[str]) -> dict[str, Any]:
        """The global state: the tensors of ``update`` that some client trains, and the buffers."""
        keep = self.union | set(buffers)
        return {k: v for k, v in update.items() if k.split("::")[0] in keep}

    def download(self, update: dict[str, Any], cut: SplitSpec, buffers: Iterable[str]) -> dict[str, Any]:
        """A client's part of the global ``update`` at ``cut``: the tensors of its head and tail
        (dense or sparse pairs) and the ``buffers`` that travel with every method."""
        keep = self.held[cut] | set(buffers)
        return {k: v for k, v in update.items() if k.split("::")[0] in keep}

    def per_cut(self, build: Callable[[SplitSpec], Any]) -> Callable[[int], Any]:
        """``pid -> build(pid's cut)``, built once per cut (a round's per-client messages)."""
        built: dict[SplitSpec, Any] = {}

        def of(pid: int) -> Any:
            cut = self.plan.of(pid)
            if cut not in built:
                built[cut] = build(cut)
            return built[cut]

        return of

    def allowed(self, pid: int, buffers: Iterable[str]) -> set[str]:
        """Tensor names client ``pid``'s upload may contain: what it trains at its cut, and the buffers."""
        return set(self.trained[self.plan.of(pid)]) | set(buffers)


def cut_bodies(model: TaskModel, default: SplitSpec) -> CutBodies:
    """What the body service needs to run each client from its own cut: bodies over the model's
    own blocks ``[h, L - t)``, by reference (the server's model stays the source of truth)."""
    blocks, n = list(model.blocks), model.n_layers

    def make(h: int, t: int) -> Body:
        return Body(model, blocks[h:n - t])

    return CutBodies(n, (default.head_blocks, default.tail_blocks), make)


def body_flops(model: TaskModel, spec: SplitSpec, batch: Any, inputs_only: bool) -> tuple[float, float]:
    """Server FLOPs per sequence position (forward, backward) of the body at ``spec`` on ``batch``;
    ``inputs_only``: the backward forms the input gradient alone (a frozen body)."""
    parts = split_model(model, spec)
    meter = FlopsMeter(cache=False)
    with torch.no_grad():
        h, mask = parts.head(batch)
    x = h.detach().requires_grad_(True)
    with meter.measure("server", Phase.SPLIT, "body", "fwd"):
        z = parts.body(x, mask)
    with meter.measure("server", Phase.SPLIT, "body", "bwd"):
        if inputs_only:
            torch.autograd.grad(z, x, torch.ones_like(z))
        else:
            z.backward(torch.ones_like(z))
    parts.body.zero_grad(set_to_none=True)
    per, d = h.shape[0] * h.shape[1], meter.by_direction()
    return d.get("fwd", 0) / per, d.get("bwd", 0) / per
