"""CoBa task weights: convergence-balanced multi-task fine-tuning (Gong et al., "CoBa: Convergence
Balancer for Multitask Finetuning of Large Language Models", EMNLP 2024, arXiv 2410.06741;
MFTCoder's ``weighted_loss_mode = "coba"``, ``CoBaStatus`` in codefuse-ai/MFTCoder).

The paper: the weight of each task's loss follows how its *validation* loss converges. Every
observation gives each task i its validation loss, divided by its first value (so tasks of
different scale compare). At a step t past the warm-up:

- slope a_i: the least-squares slope of task i's normalised loss over the sliding window (the
  observations of the last ``history`` steps); a_max: the slope of the per-step maximum over tasks;
- RCS (relative convergence score) = softmax_i(N a_i / sum_j |a_j|): a task that converges more
  slowly than the others (a less negative slope) gets more weight;
- ACS (absolute convergence score) = softmax_i(-K a_i(t) / sum_k |a_i(k)|), over the K slopes of
  task i in the window: a task whose loss now rises against its own history (diverges) gets less;
- DF (divergence factor) = K' softmax(-tau K' a_max / sum_k |a_max(k)|)_last over the K' max-task
  slopes since the warm-up: 1 while the worst task still converges as before, smaller once it
  slows down or diverges;
- weights = softmax(N (DF RCS + (1 - DF) ACS)); when one falls below 1/(10N) all become
  w (1 - N / (10N)) + 1/(10N) (each at least 1/(10N), still summing to 1). Uniform before.

What fedft does: :class:`CoBa` holds the curves; ``observe(step, {task id: loss})`` appends one
observation (at each evaluation the caller runs) and recomputes the weights. Steps are the
caller's training steps, so ``warmup`` and ``history`` count training steps as in MFTCoder
(which evaluates one validation batch per step; fedft's callers may observe less often, the
slopes then use the observed steps as x). Two choices of fedft [D]: DF is clamped to at most 1
(MFTCoder's code leaves it unclamped, which can mix RCS and ACS with a negative coefficient; the
paper describes DF as a factor in [0, 1] [verify]); a zero sum of absolute slopes gives zero
logits (uniform) instead of a division by zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


def slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y (..., n) against x (n,); 0 with fewer than two points."""
    if len(x) < 2:
        return np.zeros(y.shape[:-1])
    dx = x - x.mean()
    return (y - y.mean(-1, keepdims=True)) @ dx / float(dx @ dx)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _scaled(values: np.ndarray, norm: np.ndarray | float) -> np.ndarray:
    """values / norm, 0 where norm is 0."""
    norm = np.broadcast_to(np.asarray(norm, dtype=float), values.shape)
    return np.divide(values, norm, out=np.zeros_like(values, dtype=float), where=norm > 0)


def coba_weights(task_slopes: np.ndarray, max_slopes: np.ndarray, tau: float) -> dict[str, np.ndarray | float]:
    """RCS, ACS, DF and the floored weights from the window's per-task slopes (K, N; the last row
    is now) and every max-task slope since the warm-up (K',)."""
    n = task_slopes.shape[1]
    now = task_slopes[-1]
    rcs = softmax(n * _scaled(now, np.abs(now).sum()))
    acs = softmax(-len(task_slopes) * _scaled(now, np.abs(task_slopes).sum(0)))
    z = -len(max_slopes) * _scaled(max_slopes, np.abs(max_slopes).sum())
    df = min(float(len(max_slopes) * softmax(tau * z)[-1]), 1.0)
    w = softmax(n * (df * rcs + (1 - df) * acs))
    floor = 1.0 / (10 * n)
    if (w < floor).any():
        w = w * (1 - n * floor) + floor
    return {"rcs": rcs, "acs": acs, "df": df, "weights": w}


@dataclass
class CoBa:
    """Per-task validation curves and the CoBa weights they give (task id -> weight, sum 1)."""

    warmup: int = 100  # [code] coba_warmup_steps: uniform weights before this step
    history: int = 200  # [code] coba_history_length: the sliding window, in steps
    tau: float = 5.0  # [code] coba_tau: temperature of the divergence factor
    steps: list[int] = field(default_factory=list)
    curves: list[np.ndarray] = field(default_factory=list)  # normalised losses per observation (N,)
    tasks: tuple[int, ...] = ()
    first: np.ndarray | None = None
    slope_steps: list[int] = field(default_factory=list)
    task_slopes: list[np.ndarray] = field(default_factory=list)
    max_slopes: list[float] = field(default_factory=list)
    last: dict[str, np.ndarray | float] = field(default_factory=dict)  # rcs, acs, df, weights of the last update

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.history < 1 or self.tau <= 0:
            raise ValueError(f"CoBa needs warmup >= 0, history >= 1, tau > 0; got {self.warmup}, {self.history}, "
                             f"{self.tau}")

    @property
    def weights(self) -> dict[int, float]:
        """The current weights: uniform before the warm-up ends (and before any observation)."""
        if not self.last:
            return {t: 1.0 / len(self.tasks) for t in self.tasks}
        return {t: float(w) for t, w in zip(self.tasks, self.last["weights"], strict=True)}  # type: ignore[arg-type]

    def observe(self, step: int, val_losses: Mapping[int, float]) -> None:
        """Record each task's validation loss at training step ``step`` (increasing); past the
        warm-up, with two observations in the window, update the weights."""
        if not self.tasks:
            if not val_losses:
                raise ValueError("CoBa.observe needs at least one task's validation loss")
            self.tasks = tuple(sorted(int(t) for t in val_losses))
            self.first = np.array([float(val_losses[t]) for t in self.tasks])
            if (self.first <= 0).any():
                raise ValueError(f"CoBa needs positive first validation losses, got {dict(val_losses)}")
        elif set(int(t) for t in val_losses) != set(self.tasks):
            raise ValueError(f"CoBa.observe got tasks {sorted(val_losses)}, expected {list(self.tasks)}")
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"CoBa.observe: step {step} after step {self.steps[-1]}")
        assert self.first is not None
        self.steps.append(int(step))
        self.curves.append(np.array([float(val_losses[t]) for t in self.tasks]) / self.first)
        if step >= self.warmup:
            self._update(int(step))

    def _update(self, step: int) -> None:
        keep = [k for k, s in enumerate(self.steps) if s > step - self.history]
        if len(keep) < 2:
            return
        x = np.array([self.steps[k] for k in keep], dtype=float)
        y = np.stack([self.curves[k] for k in keep], axis=1)  # (N, window)
        self.slope_steps.append(step)
        self.task_slopes.append(slope(x, y))
        self.max_slopes.append(float(slope(x, y.max(0))))
        window = np.stack([a for s, a in zip(self.slope_steps, self.task_slopes, strict=True) if s > step - self.history])
        self.last = coba_weights(window, np.array(self.max_slopes), self.tau)
