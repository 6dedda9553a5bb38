"""Prompt tuning (VPT-shallow or VPT-deep) with the final norm and the new classifier.

Jia et al., "Visual Prompt Tuning", ECCV 2022, https://arxiv.org/abs/2203.12119; for text, Lester
et al., "The Power of Scale for Parameter-Efficient Prompt Tuning", 2021. This is the trainable
set of FL-Prompt and SFPrompt (spec sections 2.3 and 9): ``prompt_*`` tensors, the final norm
(pre-trained initialisation) and the classifier; everything else is frozen.
"""

from __future__ import annotations

from torch import nn

from fedft.methods.base import METHODS, BaseMethod, freeze_all, unfreeze


@METHODS.register("prompt_tuning")
class PromptTuning(BaseMethod):
    description = "learn soft prompt tokens (shallow or deep), the final norm and a new classifier"

    def prompt_tokens(self) -> int:
        return max(self.cfg.prompt_len, 1)

    def deep_prompts(self) -> bool:
        return self.cfg.deep_prompts

    def apply(self, model: nn.Module) -> None:
        freeze_all(model)
        unfreeze([model.prompt, model.output_layer, model.arch.final_norm(model.backbone)])
