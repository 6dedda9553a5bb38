"""Option sections of the fine-tuning methods (``[method.<name>]`` in a config file).

Each is a frozen dataclass validated in ``__post_init__``; :class:`fedft.config.MethodConfig`
holds one field per method. Lists of module roles are comma-separated strings over the roles
``q, k, v, o, gate, up, down`` (see :func:`fedft.methods.base.block_linears`), because the config
parser casts scalars only. They live here, not in the method modules, so that ``fedft.config``
does not import the methods (which import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedft.errors import ConfigError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def _check(ok: bool, name: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"bad value for {name}: must be {allowed}")


def parse_roles(text: str, name: str) -> tuple[str, ...]:
    """``"q, v"`` -> ``("q", "v")``, each checked against :data:`ROLES`."""
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    _check(bool(roles) and all(r in ROLES for r in roles), name,
           f"a comma-separated list of {', '.join(ROLES)}")
    return roles


@dataclass(frozen=True)
class LoraOptions:
    """LoRA through peft (Hu et al. 2021); targets are block roles."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "q,v"

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "method.lora.rank", "an integer >= 1")
        _check(0 <= self.dropout < 1, "method.lora.dropout", "a float in [0, 1)")
        parse_roles(self.targets, "method.lora.targets")


@dataclass(frozen=True)
class IA3Options:
    """(IA)^3 through peft; ``feedforward`` roles scale the input, the others the output."""

    targets: str = "k,v,down"
    feedforward: str = "down"

    def __post_init__(self) -> None:
        t = parse_roles(self.targets, "method.ia3.targets")
        f = parse_roles(self.feedforward, "method.ia3.feedforward")
        _check(set(f) <= set(t), "method.ia3.feedforward", "a subset of method.ia3.targets")


@dataclass(frozen=True)
class SSFOptions:
    """SSF: per-channel scale and shift after every linear, norm and patch projection."""

    init_std: float = 0.02
    norms: bool = True  # also after LayerNorms (not RMSNorm: it cannot take a shift)

    def __post_init__(self) -> None:
        _check(self.init_std >= 0, "method.ssf.init_std", "a float >= 0")


@dataclass(frozen=True)
class HFTOptions:
    """Half fine-tuning: half of the block matrices train per stage."""

    reselect_every_epochs: int = 0  # 0 = one draw per stage (a stage is a whole run)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.reselect_every_epochs >= 0, "method.hft.reselect_every_epochs", "an integer >= 0")


@dataclass(frozen=True)
class S2FTOptions:
    """S2FT budgets: fractions of all heads (v rows, o columns) and FFN channels (up, down)."""

    rho_v: float = 0.0
    rho_o: float = 0.1
    rho_u: float = 0.0
    rho_d: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("rho_v", "rho_o", "rho_u", "rho_d"):
            _check(0 <= getattr(self, k) <= 1, f"method.s2ft.{k}", "a float in [0, 1]")


@dataclass(frozen=True)
class LTSFTOptions:
    """LT-SFT: phase 1 dense for ``phase1_epochs``, then K-sparse phase 2."""

    k: int = 0  # number of diff entries; 0 = use density
    density: float = 0.01
    phase1_epochs: int = 1
    include_norms: bool = False

    def __post_init__(self) -> None:
        _check(self.k >= 0, "method.lt_sft.k", "an integer >= 0")
        _check(0 < self.density <= 1, "method.lt_sft.density", "a float in (0, 1]")
        _check(self.phase1_epochs >= 0, "method.lt_sft.phase1_epochs", "an integer >= 0")


@dataclass(frozen=True)
class LightPEFTOptions:
    """Light-PEFT: estimation epochs with masks + LoRA, then structured early pruning."""

    estimation_epochs: int = 1
    l1: float = 1e-4
    rho_attn: float = 1 / 3
    rho_ffn: float = 1 / 3
    rho_module: float = 0.75
    rho_rank: float = 0.5
    rank: int = 8
    alpha: float = 16.0
    targets: str = "q,k,v,o"
    selection: str = "mask"  # "mask" (the paper) or "random" (the control, same counts, seeded)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.estimation_epochs >= 0, "method.light_peft.estimation_epochs", "an integer >= 0")
        _check(self.selection in ("mask", "random"), "method.light_peft.selection", '"mask" or "random"')
        for k in ("rho_attn", "rho_ffn", "rho_module", "rho_rank"):
            _check(0 <= getattr(self, k) < 1, f"method.light_peft.{k}", "a float in [0, 1)")
        _check(self.rank >= 1, "method.light_peft.rank", "an integer >= 1")
        parse_roles(self.targets, "method.light_peft.targets")


@dataclass(frozen=True)
class GreenTrainerOptions:
    """GreenTrainer: FLOPs budget ``rho`` of full fine-tuning, re-selected every ``interval``."""

    rho: float = 0.5
    interval: int = 2  # epochs between selections
    probe_lr: float = 1e-3
    quant: int = 1000  # T_q: cost quantisation steps of the DP

    def __post_init__(self) -> None:
        _check(0 < self.rho <= 1, "method.greentrainer.rho", "a float in (0, 1]")
        _check(self.interval >= 1, "method.greentrainer.interval", "an integer >= 1")
        _check(self.quant >= 10, "method.greentrainer.quant", "an integer >= 10")


@dataclass(frozen=True)
class WiseFTOptions:
    """WiSE-FT: theta(alpha) = (1 - alpha) theta_zs + alpha theta_ft; straggler report."""

    alpha: float = 0.5
    interpolate_head: bool = False  # the new classifier has no zero-shot counterpart
    report: bool = True
    report_alphas: int = 5
    report_batches: int = 2
    sharpness_rho: float = 0.0  # > 0: also layer-wise adaptive sharpness (PGD)
    stragglers: int = 2  # k top-barrier layers
    sparsity: float = 0.0  # s: fraction of straggler entries zeroed (0 = off)
    sparsify_target: Literal["delta", "weights_ft"] = "delta"
    sparsify_criterion: Literal["magnitude", "random"] = "magnitude"

    def __post_init__(self) -> None:
        _check(0 <= self.alpha <= 1, "method.wise_ft.alpha", "a float in [0, 1]")
        _check(self.report_alphas >= 2, "method.wise_ft.report_alphas", "an integer >= 2")
        _check(0 <= self.sparsity < 1, "method.wise_ft.sparsity", "a float in [0, 1)")
        _check(self.stragglers >= 0, "method.wise_ft.stragglers", "an integer >= 0")


@dataclass(frozen=True)
class AntidoteOptions:
    """Antidote: LoRA (or full) fine-tuning, then prune the top-Wanda-scored weights."""

    base: Literal["lora", "full"] = "lora"
    dense_ratio: float = 0.1  # r: fraction pruned per output row
    harmful_label: int = 0  # calibration = training samples of this class (a harmful proxy)

    def __post_init__(self) -> None:
        _check(0 <= self.dense_ratio < 1, "method.antidote.dense_ratio", "a float in [0, 1)")
