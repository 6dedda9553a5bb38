"""Mechanism checks: does each method's central claim show, in its expected direction, on the real
offline assets? One subcommand per check; each trains with the shipped config of
``experiments/configs/methods/`` and prints and writes JSON.

* ``antidote``: after LoRA fine-tuning on MNIST, the "harmful" behaviour is predicting the
  harmful class (``method.antidote.harmful_label``) for its own inputs. Antidote's Wanda pruning on
  the harmful calibration batches vs random pruning of the same number of weights per row: the
  harmful rate should drop more, benign accuracy less.
* ``wise_ft``: full fine-tuning on MNIST, then theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft for
  alpha in 0..1, on MNIST (in distribution) and on scikit-learn's 8x8 digits upscaled to the same
  size (a distribution shift with the same labels): WiSE-FT's claim is that an intermediate alpha
  keeps most of the in-distribution gain and is more robust out of distribution.
* ``hft``: forgetting of pre-trained knowledge. Full FT and HFT on MNIST, then a linear probe
  (L-BFGS, cached features) of each backbone on the digits task: HFT should lose less of the
  pre-trained probe accuracy than full FT.
* ``light_peft``: parameters, forward time and accuracy before and after early pruning + compaction.

    .venv/bin/python experiments/mechanisms.py antidote --json experiments/results/mech_antidote.json
    .venv/bin/python experiments/mechanisms.py all --json-dir experiments/results
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedft.central import build_model, cached_features
from fedft.config import ExperimentConfig
from fedft.data.datasets import EncodedSplit, encode, load_raw
from fedft.train import evaluate, make_optimizer, seed_everything, train_epoch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs" / "methods"
# --smoke: the same code paths on a tiny random ViT and synthetic images (seconds; for tests)
SMOKE = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
         "data.test_size=24", "train.epochs=1", "train.threads=1"]
_EXTRA: list[str] = []


def train(config: str, *overrides: str) -> tuple[ExperimentConfig, nn.Module, Any, Any, Any, Any]:
    """Train a shipped config centrally (no finalize); returns (cfg, model, method, pre, raw, test)."""
    cfg = ExperimentConfig.from_toml(CONFIGS / config, [*overrides, *_EXTRA])
    torch.set_num_threads(cfg.train.threads or 2)
    rng = seed_everything(cfg.seed)
    raw = load_raw(cfg.data, cfg.seed)
    model, method, pre = build_model(cfg, raw.num_labels)
    tr = encode(raw, "train", pre, cfg.data.max_length)
    test = encode(raw, "test", pre, cfg.data.max_length)
    opt = make_optimizer(model, cfg.train)
    for epoch in range(1, cfg.train.epochs + 1):
        method.on_round_start(model, epoch)
        train_epoch(model, tr, np.arange(len(tr)), cfg.train.batch_size, opt, rng)
    model.eval()
    return cfg, model, method, pre, raw, test


def digits_split(cfg: ExperimentConfig, pre: Any, split: str = "test") -> EncodedSplit:
    n = 64 if _EXTRA else 0  # smoke runs use a slice
    raw = load_raw(replace(cfg.data, name="digits", train_size=n, test_size=n), cfg.seed)
    return encode(raw, split, pre, cfg.data.max_length)


@torch.no_grad()
def predictions(model: nn.Module, split: EncodedSplit, bs: int = 32) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b).argmax(-1) for b in split.batches(np.arange(len(split)), bs)])


def check_antidote() -> dict[str, Any]:
    cfg, model, method, _, _, test = train("mnist_antidote.toml")
    harm = cfg.method.antidote.harmful_label
    y = test.labels

    def rates() -> dict[str, float]:
        p = predictions(model, test)
        return {"harmful_rate": float((p[y == harm] == harm).float().mean()),
                "benign_accuracy": float((p[y != harm] == y[y != harm]).float().mean())}

    snapshot = copy.deepcopy(model.state_dict())
    out: dict[str, Any] = {"fine_tuned": rates()}
    masks = method.realign(model, method.calibration)  # Antidote: Wanda top-r on harmful batches
    out["antidote"] = rates()
    model.load_state_dict(snapshot)
    g = torch.Generator().manual_seed(0)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, m in masks.items():  # the same number of weights per row, drawn at random
            w = modules[name].weight
            k = int(m[0].sum())
            idx = torch.argsort(torch.rand(w.shape, generator=g), dim=1)[:, :k]
            w.scatter_(1, idx, 0.0)
    out["random_same_ratio"] = rates()
    out["pruned_weights"] = int(sum(int(m.sum()) for m in masks.values()))
    out["calibration_samples"] = int(sum(len(b["labels"]) for b in method.calibration))
    out["expected"] = "antidote lowers harmful_rate more than random pruning, benign_accuracy stays closer"
    out["holds"] = (out["antidote"]["harmful_rate"] < out["random_same_ratio"]["harmful_rate"])
    return out


def check_wise_ft() -> dict[str, Any]:
    from fedft.methods.wise_ft import interpolate

    cfg, model, method, pre, _, test = train("mnist_wise_ft.toml", "method.wise_ft.report=false")
    ood = digits_split(cfg, pre)
    ft = {n: p.detach().clone() for n, p in model.named_parameters() if n in method.zs}
    rows = []
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        interpolate(model, method.zs, ft, a)
        rows.append({"alpha": a, "id_accuracy": evaluate(model, test, 32).accuracy,
                     "ood_accuracy": evaluate(model, ood, 32).accuracy})
    best_ood = max(rows, key=lambda r: r["ood_accuracy"])
    return {"rows": rows, "ood": f"digits 8x8 upscaled to {cfg.data.image_size} px, {len(ood)} images",
            "expected": "an intermediate alpha has OOD accuracy >= both endpoints",
            "best_ood_alpha": best_ood["alpha"],
            "holds": best_ood["ood_accuracy"] >= max(rows[0]["ood_accuracy"], rows[-1]["ood_accuracy"])
            and 0 < best_ood["alpha"] < 1}


def probe(model: nn.Module, cfg: ExperimentConfig, pre: Any) -> float:
    """L-BFGS linear probe of ``model``'s frozen readout features on the digits task."""
    tr, te = digits_split(cfg, pre, "train"), digits_split(cfg, pre, "test")
    ftr = cached_features(model, tr, 50, "digits train").inputs["features"]
    fte = cached_features(model, te, 50, "digits test").inputs["features"]
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    x, xt = (ftr - mu) / sd, (fte - mu) / sd
    head = nn.Linear(x.shape[1], 10)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), tr.labels) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(xt).argmax(-1) == te.labels).float().mean())


def check_hft() -> dict[str, Any]:
    out: dict[str, Any] = {}
    cfg0 = ExperimentConfig.from_toml(CONFIGS / "mnist_full_ft.toml", _EXTRA)
    raw = load_raw(cfg0.data, cfg0.seed)
    base, _, pre = build_model(cfg0, raw.num_labels)
    out["pretrained_probe"] = probe(base, cfg0, pre)
    for name in ("full_ft", "hft"):
        cfg, model, _, pre, _, test = train(f"mnist_{name}.toml")
        out[name] = {"mnist_accuracy": evaluate(model, test, 32).accuracy, "digits_probe": probe(model, cfg, pre)}
        out[name]["forgetting"] = out["pretrained_probe"] - out[name]["digits_probe"]
    out["expected"] = "HFT forgets less (smaller drop of the digits probe) than full fine-tuning"
    out["holds"] = out["hft"]["forgetting"] < out["full_ft"]["forgetting"]
    return out


def check_light_peft() -> dict[str, Any]:
    cfg, model, method, _, _, test = train("mnist_light_peft.toml")
    batch = test.batch(np.arange(min(32, len(test))))

    def measure() -> dict[str, float]:
        with torch.no_grad():
            model(batch)
            t = time.perf_counter()
            for _ in range(3):
                model(batch)
        return {"params": int(sum(p.numel() for p in model.parameters())),
                "forward_s_batch32": (time.perf_counter() - t) / 3, "accuracy": evaluate(model, test, 32).accuracy}

    before = measure()
    method.finalize(model)  # prune (if still pending) + compact
    after = measure()
    return {"before": before, "after": after, "pruned": method.describe(),
            "expected": "fewer parameters and a faster forward, accuracy close",
            "holds": after["params"] < before["params"]}


CHECKS = {"antidote": check_antidote, "wise_ft": check_wise_ft, "hft": check_hft, "light_peft": check_light_peft}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("check", choices=[*CHECKS, "all"])
    ap.add_argument("--json", type=Path, help="write the result here (one check)")
    ap.add_argument("--json-dir", type=Path, help="write mech_<check>.json files here")
    ap.add_argument("--smoke", action="store_true", help="tiny random model and synthetic data (seconds)")
    args = ap.parse_args(argv)
    if args.smoke:
        _EXTRA[:] = SMOKE
    for name in CHECKS if args.check == "all" else [args.check]:
        t0 = time.time()
        res = CHECKS[name]()
        res["seconds"] = round(time.time() - t0, 1)
        res["command"] = f"python experiments/mechanisms.py {name}"
        print(name, json.dumps(res, indent=2))
        path = args.json if args.json and args.check != "all" else (
            args.json_dir / f"mech_{name}.json" if args.json_dir else None)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
