"""Typed experiment configuration: frozen dataclass sections, parsed once at the boundary.

Parsing (overrides, merging, casting) lives in :mod:`fedft.config_parse`; its public names are
re-exported here. Sources, in order of precedence (later wins): the defaults below, a TOML file, ``--set
section.key=value`` overrides on the command line, and Flower's ``run_config`` (dotted kebab
keys such as ``federation.sfprompt.keep-ratio``). Every source goes through :func:`build`, which
casts values, rejects unknown keys and validates choices, raising :class:`ConfigError` (exit 2)
with a message that names the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedft.config_parse import _assign, build, flatten, merge, parse_overrides, to_plain
from fedft.deploy_config import DeployConfig
from fedft.errors import ConfigError
from fedft.errors import check as _check
from fedft.lm_config import GenerateConfig, LossConfig, RecipeConfig
from fedft.options import PluginOptions, get_options, with_defaults
from fedft.resources.config import ResourcesConfig


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
    # attention kernel; auto = eager for bf16 compute on a CPU (faster there), sdpa elsewhere
    attention: Literal["auto", "sdpa", "eager"] = "auto"


@dataclass(frozen=True)
class DataConfig:
    """Dataset and preprocessing."""

    # mnist, fashion-mnist, digits, bbc-news, chatterbot, synthetic-images, synthetic-text,
    # or hf:<hub dataset name> (needs internet)
    name: str = "mnist"
    image_size: int = 112
    max_length: int = 128
    train_size: int = 2000  # 0 = all; the clients' data (or the central training set)
    # [D] validation samples drawn from the training split's samples outside the train_size
    # subsample (disjoint from every client's data); evaluated each round, used for any tuning.
    # Fewer are used when fewer remain (none when train_size takes the whole split)
    val_size: int = 1000
    test_size: int = 0  # 0 = all; the test split is evaluated once, on the final model
    # SFT data: a system turn before every prompt ("" = none: fedft adds no system turn; a
    # template that inserts its own default when there is none, as SmolLM2-Instruct's does, still does)
    system_prompt: str = ""

    def __post_init__(self) -> None:
        _check(self.image_size > 0, "data.image_size", "a positive integer")
        _check(self.max_length > 1, "data.max_length", "an integer > 1")
        _check(min(self.train_size, self.val_size, self.test_size) >= 0, "data.train_size/val_size/test_size",
               ">= 0")


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
class MethodConfig:
    """The fine-tuning method: what trains (and, in federated runs, what travels).

    ``[method.<name>]`` tables hold a method's own options, declared in its module; the
    selected method's table is always present (its defaults when the config gives none)."""

    __options_section__ = "method"

    name: str = "prompt_tuning"
    prompt_len: int = 10
    prompt_dropout: float = 0.0
    deep_prompts: bool = False
    options: PluginOptions = ()  # ((method, options), ...) from the [method.<name>] tables

    def __post_init__(self) -> None:
        _check(self.prompt_len >= 0, "method.prompt_len", "an integer >= 0")
        _check(0 <= self.prompt_dropout < 1, "method.prompt_dropout", "a float in [0, 1)")
        object.__setattr__(self, "options", with_defaults(self.options, "method", [self.name]))

    def options_for(self, name: str) -> Any:
        """The options of method ``name`` (as configured, else its defaults)."""
        return get_options(self.options, "method", name)


@dataclass(frozen=True)
class SplitConfig:
    """Where the model is cut: transformer blocks kept by the client in head and tail."""

    head_blocks: int = 0
    tail_blocks: int = 0
    # what split activations and gradients travel as (fedft/body/codec.py, docs/wire.md): fp32, fp16,
    # bf16, int8 (per-row absmax scale), int4[:group] (packed, per-group scales), topk[:fraction]
    wire_dtype: str = "fp32"
    # the gradients' format when it differs from wire_dtype ("" = the same)
    grad_wire_dtype: str = ""
    # [D] error feedback on top-k gradient frames: what a frame drops is sent with the next batch
    error_feedback: bool = True
    # [D] defences (fedft/split/defence.py, docs/privacy.md), off by default: Gaussian noise on the
    # sent activations (std = noise x each sample's activation RMS) and the NoPeek distance-
    # correlation penalty weight in the client's split-training loss (needs head_blocks >= 1)
    noise: float = 0.0
    nopeek: float = 0.0
    # [D] the client also trains its head blocks (FedAvg-ed with what the method trains; they then
    # travel each round), so that a NoPeek penalty can reshape what is sent
    train_head: bool = False

    def __post_init__(self) -> None:
        _check(self.head_blocks >= 0, "split.head_blocks", "an integer >= 0")
        _check(self.tail_blocks >= 0, "split.tail_blocks", "an integer >= 0")
        from fedft.body.codec import is_wire_format

        for key in ("wire_dtype", "grad_wire_dtype"):
            value = getattr(self, key)
            _check(key == "grad_wire_dtype" and value == "" or is_wire_format(value), f"split.{key}",
                   "fp32, fp16, bf16, int8, int4[:group] (even group, 2..4096) or topk[:fraction] "
                   "(0 < fraction <= 1)" + (", or \"\" for wire_dtype's" if key == "grad_wire_dtype" else ""))
        _check(self.noise >= 0, "split.noise", "a float >= 0 (0 = no noise)")
        _check(self.nopeek >= 0, "split.nopeek", "a float >= 0 (0 = no penalty)")
        _check(self.nopeek == 0 or self.head_blocks >= 1, "split.nopeek",
               "0 when split.head_blocks = 0 (the sent embeddings do not depend on anything the client "
               "trains); set split.head_blocks >= 1 to use NoPeek")


@dataclass(frozen=True)
class FederationConfig:
    """How training is organised: central, or a federated/split strategy over clients.

    ``[federation.<name>]`` tables hold the options of the selected strategy family (for example
    ``[federation.sfprompt]``) and of the aggregator (for example ``[federation.fedadam]``)."""

    __options_section__ = "federation"

    strategy: str = "sfprompt"
    # how the uploads that travel through Flower are combined: a Flower strategy (fedavg, fedprox,
    # fedadam, krum, ...; `fedft run --list-aggregators`)
    aggregator: str = "fedavg"
    engine: Literal["simulation", "inprocess"] = "simulation"
    rounds: int = 10
    clients_per_round: int = 0  # 0 = all clients every round
    eval_every: int = 1
    cpus_per_client: float = 1.0
    # format of the parameter arrays through Flower, both ways (uploads as deltas): docs/wire.md
    params_wire: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    options: PluginOptions = ()  # ((plugin, options), ...) from the [federation.<name>] tables

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "federation.rounds", "an integer >= 1")
        _check(self.clients_per_round >= 0, "federation.clients_per_round", "an integer >= 0")
        _check(self.eval_every >= 1, "federation.eval_every", "an integer >= 1")
        _check(self.cpus_per_client > 0, "federation.cpus_per_client", "a number > 0")
        object.__setattr__(self, "options",
                           with_defaults(self.options, "federation", [self.strategy, self.aggregator]))

    def options_for(self, name: str) -> Any:
        """The options of strategy family or aggregator ``name`` (as configured, else defaults)."""
        return get_options(self.options, "federation", name)


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
    # compute dtype of transformer blocks and LM heads (fedft/precision.py); auto = bf16 where the
    # CPU (AVX512-BF16, AMX) or GPU computes it natively. Independent of split.wire_dtype
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # kfac: precondition the classifier's gradient by its input second moment (fedft/precondition.py)
    head_preconditioner: Literal["none", "kfac"] = "none"
    kfac_damping: float = 1e-3  # lambda = kfac_damping * mean eigenvalue of the second moment
    # causal-LM training loss: token_mean (the model's own) or a loss plugin ([loss.<name>]; docs/losses.md)
    loss: str = "token_mean"

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
class PrivacyConfig:
    """``fedft privacy`` inside an experiment: after the last round, attack the run's own traffic
    (fedft/privacy/audit.py; docs/privacy.md). [D] off; the other values are the command's defaults."""

    enabled: bool = False
    samples: int = 64
    aux_size: int = 1000
    codecs: str = "fp32,fp16"  # comma-separated wire dtypes to replay
    inversion_steps: int = 300
    decoder_epochs: int = 20

    def __post_init__(self) -> None:
        for name in ("samples", "aux_size", "inversion_steps", "decoder_epochs"):
            _check(getattr(self, name) >= 1, f"privacy.{name}", "an integer >= 1")


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
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    seed: int = 0

    def __post_init__(self) -> None:  # the selected loss's table is present (its defaults when not given)
        object.__setattr__(self, "loss", LossConfig(with_defaults(self.loss.options, "loss", [self.train.loss])))

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
        """Plain nested dict (TOML/JSON serialisable); options tables appear under their section."""
        return to_plain(self)

    def to_run_config(self) -> dict[str, Any]:
        """Flat dotted-key dict, the inverse of :meth:`from_run_config`."""
        return flatten(self.to_dict())

    def replace(self, **sections: Any) -> ExperimentConfig:
        """Copy with whole sections replaced (``cfg.replace(train=...)``)."""
        return dataclasses.replace(self, **sections)


def validate_names(cfg: ExperimentConfig) -> None:
    """Check the open choices (registry names: method, strategy, aggregator)."""
    from fedft.federated.aggregators import AGGREGATORS
    from fedft.losses.wiring import loss_names
    from fedft.methods import METHODS
    from fedft.strategies import STRATEGIES

    for value, field_name, names in ((cfg.method.name, "method.name", METHODS.names()),
                                     (cfg.federation.strategy, "federation.strategy", STRATEGIES.names()),
                                     (cfg.federation.aggregator, "federation.aggregator", AGGREGATORS.names()),
                                     (cfg.train.loss, "train.loss", loss_names())):
        if value not in names:
            raise ConfigError(f"bad value {value!r} for {field_name}; allowed: {', '.join(names)}")
    if cfg.train.loss != "token_mean" and cfg.federation.strategy != "central":
        raise ConfigError(f"train.loss={cfg.train.loss} is wired into central runs only; set "
                          "federation.strategy=central or train.loss=token_mean")
    if cfg.privacy.enabled and STRATEGIES.get(cfg.federation.strategy).family != "split":
        raise ConfigError(f"privacy.enabled attacks split traffic; strategy {cfg.federation.strategy!r} sends "
                          "none: set privacy.enabled = false or use a split strategy")
    if (cfg.split.noise or cfg.split.nopeek or cfg.split.train_head) and STRATEGIES.get(cfg.federation.strategy).family != "split":
        raise ConfigError(f"split.noise, split.nopeek and split.train_head act on split traffic; strategy "
                          f"{cfg.federation.strategy!r} sends none: unset them or use a split strategy")


def main_job_path() -> Path:
    """The main job's config, shipped inside the package (``fedft run`` with no ``--config``)."""
    return Path(__file__).resolve().parent / "configs" / "sfprompt_mnist.toml"


def to_toml(cfg: ExperimentConfig) -> str:
    """Serialise a config as TOML (the resolved config written into each run directory)."""
    import tomli_w

    return tomli_w.dumps(cfg.to_dict())
