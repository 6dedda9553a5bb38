"""The strategy registry: how an experiment is organised (central, federated, split).

A strategy is data: its family, the fine-tuning method it implies (``None``: the config's
``method.name``), how the server body behaves, whether clients run one after another, and the
config overrides that define it (the SFPrompt ablations are SFPrompt with one setting changed).
Descriptors import nothing heavy, so configs are validated fast; the machinery that runs them
lives in :mod:`fedft.federated`. Spec: ``specs/sfprompt.md`` sections 9 and 9.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedft.config import ExperimentConfig, build, flatten, merge, parse_overrides
from fedft.registry import Registry


@dataclass(frozen=True)
class StrategyInfo:
    """What a strategy is and which settings define it."""

    name: str
    family: str  # "central", "fl" (whole model on every client) or "split" (U-split + body service)
    description: str
    method: str | None = None  # forced fine-tuning method; None = the config's method.name
    body_mode: str = "frozen"  # split only: "frozen", "shared" (SFL-V2, SL) or "per_client" (SFL-V1)
    sequential: bool = False  # SL: clients one after another, the client part handed on
    train_tail: bool = False  # split: the tail's t blocks train with the method's tensors (spec 2.1)
    overrides: tuple[str, ...] = ()

    def configure(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """``cfg`` with this strategy's method and defining settings applied."""
        extra = list(self.overrides)
        if self.method is not None:
            extra.append(f"method.name={self.method}")
        if not extra:
            return cfg
        return build(ExperimentConfig, merge(cfg.to_dict(), parse_overrides(extra)))


STRATEGIES: Registry[StrategyInfo] = Registry("strategy")


def _register(info: StrategyInfo) -> None:
    STRATEGIES.register(info.name)(info)


_register(StrategyInfo("central", "central", "train on all data in one place (no federation)"))
_register(StrategyInfo("sfprompt", "split", "SFPrompt: EL2N pruning, local-loss update, split prompt tuning, "
                       "FedAvg of prompts + tail", method="prompt_tuning", train_tail=True))
_register(StrategyInfo("sfprompt_no_prune", "split", "SFPrompt without dataset pruning (keep_ratio 1)",
                       method="prompt_tuning", train_tail=True, overrides=("method.sfprompt.keep_ratio=1.0",)))
_register(StrategyInfo("sfprompt_no_local", "split", "SFPrompt without the local-loss update (local_epochs 0)",
                       method="prompt_tuning", train_tail=True, overrides=("method.sfprompt.local_epochs=0",)))
_register(StrategyInfo("sfprompt_random", "split", "SFPrompt with random pruning at the same keep ratio "
                       "(the control for EL2N)", method="prompt_tuning", train_tail=True, overrides=("method.sfprompt.pruning=random",)))
_register(StrategyInfo("sfl", "split", "SplitFed prompt tuning with a frozen body (SFPrompt with keep_ratio 1 "
                       "and no local-loss update)", method="prompt_tuning", train_tail=True,
                       overrides=("method.sfprompt.keep_ratio=1.0", "method.sfprompt.local_epochs=0",
                                  "method.sfprompt.pruning=none")))
_register(StrategyInfo("sfl_v1", "split", "SplitFed V1: trainable body, one body copy per client, averaged each "
                       "round; client parts FedAvg", method="full_ft", body_mode="per_client",
                       overrides=("method.sfprompt.keep_ratio=1.0", "method.sfprompt.local_epochs=0",
                                  "method.sfprompt.pruning=none")))
_register(StrategyInfo("sfl_v2", "split", "SplitFed V2: trainable shared body updated as clients' batches "
                       "arrive; client parts FedAvg", method="full_ft", body_mode="shared",
                       overrides=("method.sfprompt.keep_ratio=1.0", "method.sfprompt.local_epochs=0",
                                  "method.sfprompt.pruning=none")))
_register(StrategyInfo("sl", "split", "vanilla split learning: clients one after another, trainable body, the "
                       "client part handed on", method="full_ft", body_mode="shared", sequential=True,
                       overrides=("method.sfprompt.keep_ratio=1.0", "method.sfprompt.local_epochs=0",
                                  "method.sfprompt.pruning=none")))
_register(StrategyInfo("split_fedavg", "split", "SplitFed with a frozen body and the configured method on the "
                       "client-held parts (head + tail); FedAvg of what the method trains there",
                       overrides=("method.sfprompt.keep_ratio=1.0", "method.sfprompt.local_epochs=0",
                                  "method.sfprompt.pruning=none")))
_register(StrategyInfo("fedavg", "fl", "FedAvg of the configured method's travelling tensors; whole model on "
                       "every client"))
_register(StrategyInfo("fl_full", "fl", "FedAvg of the whole model (full fine-tuning on every client)",
                       method="full_ft"))
_register(StrategyInfo("fl_linear", "fl", "FedAvg of the classifier only; frozen whole model on every client",
                       method="linear_probe"))
_register(StrategyInfo("fl_prompt", "fl", "FedPrompt style: FedAvg of prompts + final norm + classifier; whole "
                       "model on every client", method="prompt_tuning"))

# The embedded default of `fedft run` (the main job): SFPrompt on DINOv2-small, MNIST at 112 px,
# 10 clients, Dirichlet alpha 0.5. experiments/configs/sfprompt_mnist.toml holds the same settings.
# ExperimentConfig's defaults are that job except for the optimiser settings below
# (tests/test_defaults.py checks that this equals the shipped TOML).
DEFAULT_OVERRIDES: list[str] = [
    "model.readout_norm=batchnorm", "method.sfprompt.local_lr_scale=0.1", "method.sfprompt.reset_optimizer=true",
    "train.batch_size=8", "train.eval_batch_size=32", "train.optimizer=sgd", "train.lr=0.003",
    "train.head_lr=0.05", "train.prompt_lr=0.001", "train.prompt_optimizer=adam", "train.schedule=cosine",
    "train.head_preconditioner=kfac",
    "train.kfac_damping=0.003", "method.sfprompt.score_norm=batch",
]


def overrides_of(cfg: ExperimentConfig) -> list[str]:
    """The config as a list of ``key=value`` overrides (for re-parsing elsewhere)."""
    return [f"{k}={v}" for k, v in flatten(cfg.to_dict()).items()]
