"""How well conditioned is the classifier's problem on pooled DINOv2 features, and what does
K-FAC input-factor preconditioning (fedft/precondition.py) change?

Computes the main job's readout features (mean-pooled final-LayerNorm output of the frozen
body, initial prompts) for ``--n`` MNIST training and ``--n-test`` test images, then reports:
the share of the squared feature norm in the common offset; the eigenvalue spectrum of the
standardised feature covariance; and the test accuracy after ``--epochs`` passes of minibatch
SGD (batch 8, momentum 0.9) on standardised features, plain (best of a small learning-rate
sweep) and preconditioned (each epoch with the previous epoch's second moment, the first with
its running estimate), next to a converged full-batch L-BFGS probe.

    .venv/bin/python experiments/analyze_head_conditioning.py --n 2000 --n-test 1000 --epochs 2 \
        --json experiments/results/head_conditioning.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedft.central import cached_features
from fedft.cli import default_config
from fedft.data.datasets import encode, load_raw
from fedft.model import build_model
from fedft.precondition import HeadPreconditioner, HeadStats


def sgd_epoch(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, lr: float,
              precondition: bool, epochs: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    stats = HeadStats(x.shape[1])
    rng = np.random.default_rng(seed)
    for _ in range(epochs):  # as in training: each epoch uses the previous epoch's statistics
        pre = HeadPreconditioner(head, stats, damping=3e-3) if precondition else None
        perm = rng.permutation(len(x))
        for i in range(0, len(x), 8):
            b = torch.from_numpy(perm[i:i + 8])
            opt.zero_grad()
            if pre is not None:
                with pre.active():
                    loss = F.cross_entropy(head(x[b]), y[b])
            else:
                loss = F.cross_entropy(head(x[b]), y[b])
            loss.backward()
            if pre is not None:
                pre.apply()
            opt.step()
        if pre is not None:
            pre.finish()
    with torch.no_grad():
        return float((head(xt).argmax(-1) == yt).float().mean())


def lbfgs_probe(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, l2: float) -> float:
    head = nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(xt).argmax(-1) == yt).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="training images (default 2000, the main job's)")
    ap.add_argument("--n-test", type=int, default=1000, help="test images (default 1000)")
    ap.add_argument("--epochs", type=int, default=2, help="SGD passes over the training images (default 2)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cfg = default_config([f"data.train_size={args.n}", f"data.test_size={args.n_test}"])
    raw = load_raw(cfg.data, cfg.seed)
    model, _, pre = build_model(cfg, raw.num_labels)
    feats = {s: cached_features(model, encode(raw, s, pre, cfg.data.max_length), 50, s) for s in ("train", "test")}
    x, y = feats["train"].inputs["features"], feats["train"].labels
    xt, yt = feats["test"].inputs["features"], feats["test"].labels
    mu, sd = x.mean(0), x.std(0)
    xs, xts = (x - mu) / sd, (xt - mu) / sd
    ev = torch.linalg.eigvalsh(torch.cov(xs.T).double()).flip(0)
    plain = {lr: sgd_epoch(xs, y, xts, yt, lr, False, args.epochs) for lr in (0.003, 0.01, 0.03, 0.1)}
    kfac = {lr: sgd_epoch(xs, y, xts, yt, lr, True, args.epochs) for lr in (0.005, 0.01, 0.02, 0.05)}
    out = {
        "n_train": len(x), "n_test": len(xt), "dim": x.shape[1],
        "offset_share": float(mu.norm() ** 2 / x.pow(2).sum(1).mean()),
        "eig_top5": [round(float(v), 2) for v in ev[:5]],
        "eig_top_share": float(ev[0] / ev.sum()),
        "eig_median_over_mean": float(ev.median() / ev.mean()),
        "sgd_plain_by_lr": plain,
        "sgd_plain_best": max(plain.values()),
        "sgd_kfac_by_lr": kfac,
        "sgd_kfac_best": max(kfac.values()),
        "lbfgs_probe": lbfgs_probe(xs, y, xts, yt, 1e-3),
        "epochs": args.epochs,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
    }
    for k, v in out.items():
        print(f"{k:24s} {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
