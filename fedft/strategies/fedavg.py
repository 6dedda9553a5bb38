"""Federated averaging: the whole model on every client, the method's tensors travel.

``fedavg`` trains and averages what the configured method trains; ``fl_full``, ``fl_linear`` and
``fl_prompt`` force full fine-tuning, the classifier alone, and prompts + final norm + classifier
(FedPrompt style). Each client trains ``train.epochs`` epochs on its partition per round.
"""

from __future__ import annotations

from fedft import keys
from fedft.accounting import Phase
from fedft.precondition import head_preconditioner
from fedft.strategies.base import RoundContext, Strategy, active, averaging, register_strategy, variant


@register_strategy
class FedAvg(Strategy):
    name = "fedavg"
    description = "FedAvg of the configured method's travelling tensors; whole model on every client"
    family = "fl"

    def client_train(self, ctx: RoundContext) -> dict[str, float]:
        model, train = ctx.rt.model, ctx.rt.cfg.train
        model.train()
        pre = head_preconditioner(model, train.kfac_damping, ctx.flops, Phase.TRAIN)
        loss_sum, n = 0.0, 0
        with averaging(model):
            for _ in range(train.epochs):
                for batch in ctx.rt.train.batches(ctx.idx, train.batch_size, shuffle=True, rng=ctx.rng):
                    if ctx.out_of_time():  # partial work: the round's deadline
                        break
                    loss, b = self._step(ctx, batch, pre)
                    loss_sum, n = loss_sum + loss * b, n + b
        if pre is not None:
            pre.finish()
        return {keys.NUM_KEPT: float(len(ctx.idx)), keys.TRAIN_LOSS: loss_sum / max(n, 1),
                keys.LOCAL_LOSS: 0.0, keys.SPLIT_SAMPLES: 0.0}

    @staticmethod
    def _step(ctx: RoundContext, batch: dict, pre: object) -> tuple[float, int]:
        model = ctx.rt.model
        key = tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()))
        ctx.opt.zero_grad(set_to_none=True)
        with active(pre), ctx.flops.measure("client", Phase.TRAIN, "full", "fwd", key):
            logits = model(batch)
            loss = model.loss(logits, batch)
        with ctx.flops.measure("client", Phase.TRAIN, "full", "bwd", key):
            loss.backward()
        if pre is not None:
            pre.apply()  # type: ignore[attr-defined]
        ctx.step()
        return float(loss.detach()), len(logits)


variant(FedAvg, "fl_full", "FedAvg of the whole model (full fine-tuning on every client)", method="full_ft")
variant(FedAvg, "fl_linear", "FedAvg of the classifier only; frozen whole model on every client",
        method="linear_probe")
variant(FedAvg, "fl_prompt", "FedPrompt style: FedAvg of prompts + final norm + classifier; whole model on "
        "every client", method="prompt_tuning")
