"""Prompt tuning (VPT-shallow or VPT-deep) with the final norm and the new classifier.

Jia et al., "Visual Prompt Tuning", ECCV 2022, https://arxiv.org/abs/2203.12119; for text, Lester
et al., "The Power of Scale for Parameter-Efficient Prompt Tuning", 2021. This is the trainable
set of FL-Prompt and SFPrompt (docs/sfprompt.md §1 and §8): ``prompt_*`` tensors, the final norm
(pre-trained initialisation) and the classifier; everything else is frozen.

The prompts are fedft's :class:`~fedft.model.prompts.SoftPrompt`, part of the task model, not a
peft ``PeftModel`` wrapper: a split must put them in the client's head, and VPT places them
after the CLS token, which peft's prompt tuning (prepended virtual tokens, text models only)
does not do. Where the two placements coincide (a model without CLS, e.g. Llama) the outputs
equal peft's ``PromptTuningConfig`` model with the same prompt values
(``tests/test_methods_adapters.py``).
"""

from __future__ import annotations

from torch import nn

from fedft.methods.base import BaseMethod, freeze_all, new_head, register_method, unfreeze


@register_method("prompt_tuning")
class PromptTuning(BaseMethod):
    description = "learn soft prompt tokens (shallow or deep), the final norm and a new classifier (not a pre-trained LM head)"

    def prompt_tokens(self) -> int:
        return max(self.cfg.prompt_len, 1)

    def deep_prompts(self) -> bool:
        return self.cfg.deep_prompts

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        unfreeze([model.prompt, new_head(model), model.arch.final_norm(model.backbone)])
