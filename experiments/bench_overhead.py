"""What the framework costs: one round of the main job through Flower's simulation engine, through
the in-process engine, and as a plain PyTorch loop doing the same tensor work (issue 14).

In one process, on one config (the main job, ``--set`` overrides allowed), this times round
``--round`` (default 2: round 1 also loads each client's model and data, which the plain loop
does before its clock starts) of

1. ``simulation``: the main job on Flower's simulation engine (Ray, 2 client actors, gRPC body
   service, records, ledger, FLOPs meter, checkpoints);
2. ``inprocess``: the same round with the in-process engine (no Flower runtime; the same
   records, handlers and gRPC body service);
3. ``plain``: a loop that, per client, loads the global prompts + tail, scores its data by EL2N
   (head + tail, batch statistics), runs the local-loss update on the kept samples, then trains
   through the body (forward and input-gradient backward, K-FAC-preconditioned classifier step),
   and after the clients averages their prompts + tail and evaluates on the validation split,
   with no Flower, no gRPC, no ledger, no FLOPs meter.

The engines' round time is the difference of metrics.csv's cumulative ``seconds`` (it includes
the round's validation). Writes ``--out`` (JSON) and prints the ratios.

    .venv/bin/python experiments/bench_overhead.py            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def engine_round(cfg: Any, engine: str, rnd: int, out: Path) -> float:
    """Seconds of round ``rnd`` of ``cfg`` on ``engine`` (from metrics.csv)."""
    from fedft.runner import run

    c = cfg.replace(federation=dataclasses.replace(cfg.federation, engine=engine, rounds=rnd))
    run(c, out, show=False)
    with open(out / "metrics.csv", newline="") as f:
        secs = [float(r["seconds"]) for r in csv.DictReader(f)]
    return secs[rnd - 1] - (secs[rnd - 2] if rnd > 1 else 0.0)


class PlainLoop:
    """The main job's tensor work with no framework (see the module docstring)."""

    def __init__(self, cfg: Any) -> None:
        from fedft.data.datasets import encode, load_raw
        from fedft.federated.client import partitions_for, split_parts
        from fedft.model import build_model

        self.cfg, self.tc = cfg, cfg.train
        raw = load_raw(cfg.data, cfg.seed)
        self.model, _, pre = build_model(cfg, raw.num_labels)
        self.train = encode(raw, "train", pre, cfg.data.max_length)
        self.val = encode(raw, "val", pre, cfg.data.max_length)
        self.parts = split_parts(cfg, self.model)
        self.parts.freeze_body()
        self.partitions = partitions_for(cfg, np.asarray(raw.train_y))
        self.o, self.norm = cfg.federation.options_for("sfprompt"), self.model.readout_norm
        frozen = {n for n, q in self.model.named_parameters() if not q.requires_grad}  # never change
        self.glob = {k: v.detach().clone() for k, v in self.model.state_dict().items() if k not in frozen}

    def _norm(self, ctx: str) -> Any:
        return nullcontext() if self.norm is None else getattr(self.norm, ctx)()

    def client(self, rnd: int, pid: int, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """One client's round from the global state; returns its prompts + tail state."""
        from fedft.precondition import head_preconditioner
        from fedft.split.step import el2n_scores
        from fedft.strategies.sfprompt import n_kept, select_hardest
        from fedft.train import lr_factor, make_optimizer, set_lr_factor

        model, parts, tc, o = self.model, self.parts, self.tc, self.o
        model.load_state_dict(self.glob, strict=False)
        torch.manual_seed(rnd * 1000 + pid)
        rng = np.random.default_rng([self.cfg.seed, rnd, pid])
        opt = make_optimizer(model, tc)
        set_lr_factor(opt, [g["lr"] for g in opt.param_groups], lr_factor(tc, rnd - 1, self.cfg.federation.rounds))
        lrs = [g["lr"] for g in opt.param_groups]
        parts.head.train(), parts.tail.train(), parts.body.eval()
        with torch.no_grad():  # EL2N on head -> tail
            scores = torch.cat([el2n_scores(parts, b, None, batch_norm_stats=o.score_norm == "batch")
                                for b in self.train.batches(idx, tc.eval_batch_size)]).numpy()
        kept = idx[select_hardest(scores, n_kept(len(idx), o.keep_ratio, tc.batch_size))]
        set_lr_factor(opt, lrs, o.local_lr_scale)  # the local-loss update, body skipped
        with self._norm("batch_statistics"):
            for b in self.train.batches(kept, tc.batch_size, shuffle=True, rng=rng):
                opt.zero_grad(set_to_none=True)
                h, m = parts.head(b)
                model.loss(parts.tail(h, m), b).backward()
                opt.step()
        set_lr_factor(opt, lrs, 1.0)
        opt.state.clear()
        kfac = head_preconditioner(model, tc.kfac_damping)
        with self._norm("round_average"):
            for b in self.train.batches(kept, tc.batch_size, shuffle=True, rng=rng):  # through the body
                opt.zero_grad(set_to_none=True)
                with kfac.active() if kfac is not None else nullcontext():
                    h, m = parts.head(b)
                    z = parts.body(h, m)
                    zc = z.detach().requires_grad_(True)
                    model.loss(parts.tail(zc, m), b).backward()
                z.backward(zc.grad)  # the body's input gradient, into the prompts
                if kfac is not None:
                    kfac.apply()
                opt.step()
        if kfac is not None:
            kfac.finish()
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.glob}

    def round(self, rnd: int) -> float:
        """Seconds of one round: every client, the weighted average, the validation."""
        from fedft.train import evaluate

        t0 = time.perf_counter()
        states = [(len(idx), self.client(rnd, pid, idx)) for pid, idx in enumerate(self.partitions)]
        total = sum(n for n, _ in states)
        self.glob = {k: (sum(n * s[k].double() for n, s in states) / total).to(v.dtype) if v.is_floating_point()
                     else v for k, v in self.glob.items()}
        self.model.load_state_dict(self.glob, strict=False)
        if rnd % self.cfg.federation.eval_every == 0 or rnd == self.cfg.federation.rounds:
            evaluate(self.model, self.val, self.tc.eval_batch_size)
        return time.perf_counter() - t0


def main() -> None:
    from fedft.cli import default_config
    from fedft.precision import describe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--round", type=int, default=2, help="the round timed (>= 2 keeps start-up out)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the main job")
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/sfprompt/overhead.json")
    a = p.parse_args()
    cfg = default_config([*a.set, "output.plots=false", "data.test_size=100"])
    cfg = cfg.replace(federation=dataclasses.replace(cfg.federation, rounds=a.round))
    res: dict[str, Any] = {"round": a.round, "overrides": a.set, "machine": platform.processor() or platform.machine(),
                           "cpus": torch.get_num_threads(), "precision": describe(cfg.train.precision)}
    with tempfile.TemporaryDirectory() as d:
        res["simulation_s"] = engine_round(cfg, "simulation", a.round, Path(d) / "sim")
        res["inprocess_s"] = engine_round(cfg, "inprocess", a.round, Path(d) / "inp")
    loop = PlainLoop(cfg)
    res["plain_s"] = [loop.round(r) for r in range(1, a.round + 1)][-1]
    res["simulation_over_plain"] = res["simulation_s"] / res["plain_s"]
    res["inprocess_over_plain"] = res["inprocess_s"] / res["plain_s"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
