"""Typed experiment configuration: frozen dataclass sections, parsed once at the boundary.

Parsing (overrides, merging, casting) lives in :mod:`fedft.config_parse`; its public names are
re-exported here. Sources, in order of precedence (later wins): the defaults below, a TOML file, ``--set
section.key=value`` overrides on the command line, and Flower's ``run_config`` (dotted kebab
keys such as ``method.sfprompt.keep-ratio``). Every source goes through :func:`build`, which
casts values, rejects unknown keys and validates choices, raising :class:`ConfigError` (exit 2)
with a message that names the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedft.config_parse import _assign, build, flatten, merge, parse_overrides
from fedft.deploy_config import DeployConfig
from fedft.errors import ConfigError
from fedft.method_configs import (
    AntidoteOptions,
    GreenTrainerOptions,
    HFTOptions,
    IA3Options,
    LightPEFTOptions,
    LoraOptions,
    LTSFTOptions,
    S2FTOptions,
    SSFOptions,
    WiseFTOptions,
)


@dataclass(frozen=True)
class ModelConfig:
    """Which pre-trained backbone to fine-tune and how its output is read."""

    # an offline asset name (dinov2-small, minilm-l6, smollm2-135m), a local directory, a Hub id,
    # or tiny-<model_type> (a random tiny model built from config, for tests)
    name: str = "dinov2-small"
    task: Literal["classification", "causal_lm"] = "classification"
    readout: Literal["mean", "cls"] = "mean"
    # batchnorm: standardise the pooled features before the classifier (MAE linear-probe convention)
    readout_norm: Literal["none", "batchnorm"] = "none"


@dataclass(frozen=True)
class DataConfig:
    """Dataset and preprocessing."""

    # mnist, fashion-mnist, digits, bbc-news, chatterbot, synthetic-images, synthetic-text,
    # or hf:<hub dataset name> (needs internet)
    name: str = "mnist"
    image_size: int = 112
    max_length: int = 128
    train_size: int = 2000  # 0 = all
    test_size: int = 1000  # 0 = all

    def __post_init__(self) -> None:
        _check(self.image_size > 0, "data.image_size", "a positive integer")
        _check(self.max_length > 1, "data.max_length", "an integer > 1")
        _check(self.train_size >= 0 and self.test_size >= 0, "data.train_size/test_size", ">= 0")


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is divided among clients."""

    scheme: Literal["iid", "dirichlet", "pathological"] = "dirichlet"
    num_clients: int = 10
    alpha: float = 0.5
    labels_per_client: int = 2
    min_size: int = 10

    def __post_init__(self) -> None:
        _check(self.num_clients >= 1, "partition.num_clients", "an integer >= 1")
        _check(self.alpha > 0, "partition.alpha", "a float > 0")
        _check(self.labels_per_client >= 1, "partition.labels_per_client", "an integer >= 1")
        _check(self.min_size >= 0, "partition.min_size", "an integer >= 0")


@dataclass(frozen=True)
class SFPromptConfig:
    """SFPrompt options (spec section 14)."""

    keep_ratio: float = 0.5
    pruning: Literal["el2n", "random", "none"] = "el2n"
    prune_every_round: bool = True
    score_with_prompts: bool = True
    # [D] the readout norm in the EL2N pass: "running" (the statistics of body outputs, as at
    # evaluation) or "batch" (each scoring batch's own, as in the local-loss update: the scored
    # features are head outputs, not body outputs; spec section 6)
    score_norm: Literal["running", "batch"] = "running"
    rescore_before_split: bool = False
    local_epochs: int = 1
    split_epochs: int = 1
    local_update_on_pruned: bool = True
    local_update_position: Literal["before_split", "after_split"] = "before_split"
    agg_weighting: Literal["n_samples", "n_kept", "uniform"] = "n_samples"
    # [D] learning-rate multiplier during the local-loss update (its tail sees head features, not
    # body features: spec section 6, feature-shift caveat)
    local_lr_scale: float = 1.0
    # spec 4.5 option: a fresh optimizer state (momentum) for split training after the local update
    reset_optimizer: bool = False

    def __post_init__(self) -> None:
        _check(0 < self.keep_ratio <= 1, "method.sfprompt.keep_ratio", "a float in (0, 1]")
        _check(self.score_norm in ("running", "batch"), "method.sfprompt.score_norm", '"running" or "batch"')
        _check(self.local_lr_scale >= 0, "method.sfprompt.local_lr_scale", "a float >= 0")
        _check(self.local_epochs >= 0, "method.sfprompt.local_epochs", "an integer >= 0")
        _check(self.split_epochs >= 0, "method.sfprompt.split_epochs", "an integer >= 0")


@dataclass(frozen=True)
class MethodConfig:
    """The fine-tuning method: what trains (and, in federated runs, what travels)."""

    name: str = "prompt_tuning"
    prompt_len: int = 10
    prompt_dropout: float = 0.0
    deep_prompts: bool = False
    sfprompt: SFPromptConfig = field(default_factory=SFPromptConfig)
    lora: LoraOptions = field(default_factory=LoraOptions)
    ia3: IA3Options = field(default_factory=IA3Options)
    ssf: SSFOptions = field(default_factory=SSFOptions)
    hft: HFTOptions = field(default_factory=HFTOptions)
    s2ft: S2FTOptions = field(default_factory=S2FTOptions)
    lt_sft: LTSFTOptions = field(default_factory=LTSFTOptions)
    light_peft: LightPEFTOptions = field(default_factory=LightPEFTOptions)
    greentrainer: GreenTrainerOptions = field(default_factory=GreenTrainerOptions)
    wise_ft: WiseFTOptions = field(default_factory=WiseFTOptions)
    antidote: AntidoteOptions = field(default_factory=AntidoteOptions)

    def __post_init__(self) -> None:
        _check(self.prompt_len >= 0, "method.prompt_len", "an integer >= 0")
        _check(0 <= self.prompt_dropout < 1, "method.prompt_dropout", "a float in [0, 1)")


@dataclass(frozen=True)
class SplitConfig:
    """Where the model is cut: transformer blocks kept by the client in head and tail."""

    head_blocks: int = 0
    tail_blocks: int = 0
    wire_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        _check(self.head_blocks >= 0, "split.head_blocks", "an integer >= 0")
        _check(self.tail_blocks >= 0, "split.tail_blocks", "an integer >= 0")


@dataclass(frozen=True)
class FederationConfig:
    """How training is organised: central, or a federated/split strategy over clients."""

    strategy: str = "sfprompt"
    engine: Literal["simulation", "inprocess"] = "simulation"
    rounds: int = 10
    clients_per_round: int = 0  # 0 = all clients every round
    eval_every: int = 1
    cpus_per_client: float = 1.0

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "federation.rounds", "an integer >= 1")
        _check(self.clients_per_round >= 0, "federation.clients_per_round", "an integer >= 0")
        _check(self.eval_every >= 1, "federation.eval_every", "an integer >= 1")
        _check(self.cpus_per_client > 0, "federation.cpus_per_client", "a number > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (per client in federated runs)."""

    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 64
    # lbfgs: full-batch L-BFGS, only for head-only methods on cached features (a convex probe)
    optimizer: Literal["sgd", "adam", "adamw", "lbfgs"] = "adamw"
    lr: float = 1e-3
    head_lr: float = 0.0  # 0 = same as lr; lr of the new task head (classifier)
    prompt_lr: float = 0.0  # 0 = same as lr
    # a separate optimizer for the prompts ("same": the one above)
    prompt_optimizer: Literal["same", "sgd", "adam", "adamw"] = "same"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # kfac: precondition the classifier's gradient by its input second moment (fedft/precondition.py)
    head_preconditioner: Literal["none", "kfac"] = "none"
    kfac_damping: float = 1e-3  # lambda = kfac_damping * mean eigenvalue of the second moment

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, "train.epochs", "an integer >= 0")
        _check(self.batch_size >= 1, "train.batch_size", "an integer >= 1")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", "an integer >= 1")
        _check(self.kfac_damping > 0, "train.kfac_damping", "a float > 0")
        for name in ("lr", "head_lr", "prompt_lr", "weight_decay"):
            _check(getattr(self, name) >= 0, f"train.{name}", "a float >= 0")


@dataclass(frozen=True)
class OutputConfig:
    """Where results go and what is written."""

    dir: str = ""  # empty = runs/<strategy>-<timestamp>
    plots: bool = True


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    seed: int = 0

    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
        """Load a TOML file, then apply ``key=value`` overrides (dotted keys)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        return build(cls, merge(data, parse_overrides(overrides)))

    @classmethod
    def from_toml_text(cls, text: str) -> ExperimentConfig:
        """Parse a resolved config written by :func:`to_toml` (as sent inside train messages)."""
        try:
            return build(cls, tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"received config is not valid TOML: {e}") from None

    @classmethod
    def from_overrides(cls, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
        """Defaults plus ``key=value`` overrides."""
        return build(cls, parse_overrides(overrides))

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ExperimentConfig:
        """Parse Flower's flat run config (dotted kebab keys, values possibly strings)."""
        nested: dict[str, Any] = {}
        for key, value in run_config.items():
            _assign(nested, str(key), value)
        return build(cls, nested)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (TOML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def to_run_config(self) -> dict[str, Any]:
        """Flat dotted-key dict, the inverse of :meth:`from_run_config`."""
        return flatten(self.to_dict())

    def replace(self, **sections: Any) -> ExperimentConfig:
        """Copy with whole sections replaced (``cfg.replace(train=...)``)."""
        return dataclasses.replace(self, **sections)


def _check(ok: bool, name: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"bad value for {name}: must be {allowed}")


def validate_names(cfg: ExperimentConfig, methods: list[str], strategies: list[str]) -> None:
    """Check the open choices (registry names) once the registries are loaded."""
    if cfg.method.name not in methods:
        raise ConfigError(f"bad value {cfg.method.name!r} for method.name; allowed: {', '.join(methods)}")
    if cfg.federation.strategy not in strategies:
        raise ConfigError(
            f"bad value {cfg.federation.strategy!r} for federation.strategy; allowed: {', '.join(strategies)}"
        )


def to_toml(cfg: ExperimentConfig) -> str:
    """Serialise a config as TOML (the resolved config written into each run directory)."""
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())
