"""U-shaped split of Hugging Face transformers: where to cut, the parts and the split step.

Build a :class:`~fedft.model.TaskModel`, then ``split_model(model, SplitSpec(h, t))`` gives
head, body and tail modules that share the model's weights; ``split_step`` runs one training
step through a :class:`~fedft.body.transport.Transport`.
"""

from fedft.split.parts import Body, Head, SplitParts, Tail, split_model
from fedft.split.spec import SplitSpec
from fedft.split.step import StepResult, el2n_scores, eval_mode, local_step, split_step

__all__ = [
    "Body",
    "Head",
    "SplitParts",
    "SplitSpec",
    "StepResult",
    "Tail",
    "el2n_scores",
    "eval_mode",
    "local_step",
    "split_model",
    "split_step",
]
