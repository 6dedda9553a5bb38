"""U-shaped split of Hugging Face transformers: spec, architecture adapters, prompts, parts, step.

Build a :class:`~fedft.modeling.TaskModel`, then ``split_model(model, SplitSpec(h, t))`` gives
head, body and tail modules that share the model's weights; ``split_step`` runs one training
step through a :class:`~fedft.split.transport.Transport`.
"""

from fedft.split.arch import ARCHS, Arch, arch_for
from fedft.split.parts import Body, Head, SplitParts, Tail, split_model
from fedft.split.prompts import SoftPrompt
from fedft.split.spec import SplitSpec
from fedft.split.step import StepResult, el2n_scores, eval_mode, local_step, split_step
from fedft.split.transport import BodySession, LoopbackTransport, Transport

__all__ = [
    "ARCHS",
    "Arch",
    "Body",
    "BodySession",
    "Head",
    "LoopbackTransport",
    "SoftPrompt",
    "SplitParts",
    "SplitSpec",
    "StepResult",
    "Tail",
    "Transport",
    "arch_for",
    "el2n_scores",
    "eval_mode",
    "local_step",
    "split_model",
    "split_step",
]
