"""The strategy plugin interface: how a run is organised, and what a client does in a round.

A strategy is a class registered in :data:`STRATEGIES` with its description, its typed options
(``[federation.<table>]``), the fine-tuning method it implies, the body's behaviour on the server
and the hooks the engines call:

* server side: :meth:`Strategy.groups` (which sampled clients train together) and
  :meth:`Strategy.combine` (what the server does with their replies: aggregate them through the
  Flower aggregator, or hand the model on), :meth:`Strategy.weight` (a reply's aggregation
  weight) and :meth:`Strategy.run` (the engine that runs the experiment);
* client side: :meth:`Strategy.client_train`, the client's work in one round on a
  :class:`RoundContext` (model, data, optimizer, transport to the body).

Variants (SFPrompt's ablations) are the same class with some options fixed: :func:`variant`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedft import keys
from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.options import register_options, table_for
from fedft.registry import Registry

if TYPE_CHECKING:
    from fedft.data.datasets import EncodedSplit
    from fedft.flops import FlopsMeter
    from fedft.methods import BaseMethod
    from fedft.model import TaskModel
    from fedft.split import SplitParts

# (phase, T, D) -> an opened transport to the body, used as a context manager
OpenTransport = Callable[[str, int, int], Any]


@dataclass
class ClientRuntime:
    """What a client process keeps between rounds: model, split parts and data."""

    cfg: ExperimentConfig
    model: TaskModel
    method: BaseMethod
    parts: SplitParts | None
    train: EncodedSplit
    partitions: Sequence[np.ndarray]  # every client's indices into the training split (fedft.data.partition.Partitions)
    examples: Any = None  # the raw training examples (SFT), for a per-client data recipe
    system: str | None = None  # the SFT system turn (data.system_prompt)
    tokenizer: Any = None  # the model's preprocessing (tokenizer of a language model)
    built: dict[int, Any] = dataclasses.field(default_factory=dict)  # client -> its recipe-built split
    # the method's trainable tensors before any cut unfreezes blocks (heterogeneous split points
    # re-cut the model per client from these: fedft.split.cuts.apply_cut)
    trainable: frozenset[str] = frozenset()


@dataclass
class RoundContext:
    """One client's round: the runtime, its data indices and the round's optimizer and meters."""

    rt: ClientRuntime
    round: int
    pid: int
    idx: np.ndarray
    opt: Any  # torch.optim.Optimizer, or None when nothing trains on the client
    rng: np.random.Generator  # the round's data-order stream
    flops: FlopsMeter
    open_transport: OpenTransport | None
    state: dict[str, Any] | None  # kept between rounds (Flower's context.state)
    proximal: Any = None  # fedft.train.Proximal when the aggregator asks for a proximal term
    split_tokens: int = 0  # sequence positions this round sent through the body (batch x length)
    clock: Any = None  # fedft.resources.timeline.ClientClock when the round has a deadline to stop at

    def out_of_time(self) -> bool:
        """True when the client's simulated clock has reached the round's deadline (partial work:
        the training loops stop at the next batch); always False without a deadline clock."""
        if self.clock is None:
            return False
        self.clock.split_tokens = self.split_tokens
        return bool(self.clock.out_of_time())

    def step(self) -> None:
        """The optimizer step, after the aggregator's client-side term (FedProx) if any."""
        if self.proximal is not None:
            self.proximal.apply()
        self.opt.step()

    def stream(self, n: int) -> np.random.Generator:
        """Numbered random stream ``n`` of this (seed, round, client)."""
        return stream(self.rt.cfg.seed, self.round, self.pid, n)


def stream(seed: int, round: int, pid: int, n: int) -> np.random.Generator:
    """Random stream ``n`` of client ``pid`` in ``round``: 0 seeds torch, 1 draws random pruning,
    2 orders the data; deterministic for (seed, round, client), so a resumed run draws the same."""
    return np.random.default_rng([seed, round, pid, n])


class Strategy:
    """Base class; subclasses set the class attributes and override the hooks they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = "fl"  # "central", "fl" (whole model on clients) or "split"
    method: ClassVar[str | None] = None  # forced fine-tuning method; None = the config's
    body_mode: ClassVar[str] = "frozen"  # split: "frozen", "shared" (SFL-V2, SL), "per_client" (SFL-V1)
    trains_tail: ClassVar[bool] = False  # split: the tail's blocks train with the method's tensors
    Options: ClassVar[type | None] = None
    table: ClassVar[str] = ""  # name of the options table, [federation.<table>] (default: name)
    fixed: ClassVar[dict[str, Any]] = {}  # options a variant fixes

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.options = cfg.federation.options_for(self.name) if self.Options is not None else None

    @property
    def split(self) -> bool:
        return self.family == "split"

    @classmethod
    def configure(cls, cfg: ExperimentConfig) -> ExperimentConfig:
        """``cfg`` with this strategy's method and fixed options applied (typed, no re-parsing)."""
        if cls.method is not None and cfg.method.name != cls.method:
            cfg = cfg.replace(method=dataclasses.replace(cfg.method, name=cls.method))
        if cls.fixed:
            table = table_for("federation", cls.name)
            opts = dataclasses.replace(cfg.federation.options_for(cls.name), **cls.fixed)
            others = [(k, v) for k, v in cfg.federation.options if k != table]
            fed = dataclasses.replace(cfg.federation, options=tuple(sorted([*others, (table, opts)])))
            cfg = cfg.replace(federation=fed)
        return cfg

    # ---- server side ---------------------------------------------------------------------------

    def run(self, cfg: ExperimentConfig, out: Path, resume: bool, show: bool) -> dict[str, Any]:
        """Run the experiment on the configured engine; returns the summary."""
        from fedft.federated import checkpoint
        from fedft.outputs import RunDir

        if resume and checkpoint.load(out) is None:
            raise FedftError(f"{out} has no checkpoint to resume from (it is written after each round)")
        if cfg.federation.engine == "inprocess":
            from fedft.federated.engine import run_inprocess
            from fedft.federated.server import ServerRuntime

            srv = ServerRuntime(cfg, RunDir(out))
            if resume:
                srv.resume_from_dir()
            return run_inprocess(srv, progress=show)
        from fedft.federated.simulation import run_simulated

        return run_simulated([(cfg, RunDir(out))], resume=resume)[0]

    def groups(self, pids: list[int]) -> list[list[int]]:
        """Sampled clients that train from the same global state (default: all of them)."""
        return [pids]

    def combine(self, server: Any, round: int, results: list[Any]) -> None:
        """Validate the group's replies and aggregate the good ones (default: the aggregator)."""
        for res in results:
            server.accept(res)
        server.aggregate(round, results)

    def weight(self, metrics: dict[str, float]) -> float:
        """A reply's aggregation weight (default: its number of examples)."""
        return float(metrics[keys.NUM_EXAMPLES])

    def order(self, pids: list[int], rng: np.random.Generator) -> list[int]:
        """The round's client order (default: ascending)."""
        return sorted(pids)

    # ---- client side ---------------------------------------------------------------------------

    def client_train(self, ctx: RoundContext) -> dict[str, float]:
        """The client's work in one round; returns its metrics (``keys`` metric names)."""
        raise NotImplementedError


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Register ``cls`` under ``cls.name`` (and its options table under the same name)."""
    if cls.Options is not None:
        register_options("federation", cls.table or cls.name, cls.Options, selected_by=(cls.name,))
    return STRATEGIES.register(cls.name)(cls)


def random_order(self: Strategy, pids: list[int], rng: np.random.Generator) -> list[int]:
    """A fresh random client order each round, drawn from the round's seeded generator (for
    strategies whose clients share one trainable body: SL, SFL-V2)."""
    return [int(p) for p in rng.permutation(pids)]


def variant(base: type[Strategy], name: str, description: str, **attrs: Any) -> type[Strategy]:
    """Register ``base`` under ``name`` with some class attributes (``fixed`` options, method,
    body mode) changed; it reads the base's options table."""
    table = base.table or base.name
    cls = type(f"{base.__name__}_{name}", (base,), {"name": name, "description": description,
                                                   "table": table, **attrs})
    return register_strategy(cls)


def averaging(model: TaskModel) -> Any:
    """The readout norm's round-average context (a no-op without a readout norm)."""
    norm = model.readout_norm
    return nullcontext() if norm is None else norm.round_average()  # type: ignore[operator]


def active(pre: Any) -> Any:
    """The head preconditioner's statistics context (a no-op without one)."""
    return nullcontext() if pre is None else pre.active()
