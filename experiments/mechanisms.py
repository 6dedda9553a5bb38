"""Mechanism checks: does each method's central claim show, in its expected direction, on the real
offline assets? One subcommand per check; each trains with the shipped config of
``experiments/configs/methods/`` and prints and writes JSON.

* ``antidote``: after LoRA fine-tuning on MNIST, the "harmful" behaviour is predicting the
  harmful class (``method.antidote.harmful_label``) for its own inputs. Antidote's Wanda pruning on
  the harmful calibration batches vs random pruning of the same number of weights per row: the
  harmful rate should drop more, benign accuracy less.
* ``wise_ft``: DINOv2 has no zero-shot head, so theta_0 is the pre-trained backbone with a
  linear-probe head (WiSE-FT's recipe for such models: linear probe, then end-to-end fine-tuning
  from it). Full fine-tuning on MNIST from theta_0, then theta(alpha) = (1 - alpha) theta_0 +
  alpha theta_ft on every parameter, the readout-norm statistics re-estimated on the training
  images at each alpha; accuracy on MNIST (in distribution) and on scikit-learn's 8x8 digits
  upscaled to the same size (a distribution shift with the same labels). WiSE-FT's claim: an
  intermediate alpha is at least as robust out of distribution as both endpoints.
* ``hft``: forgetting of pre-trained knowledge. Full FT and HFT on MNIST (1,000 images, 3 epochs:
  further than the shipped configs, which forget nothing measurable), then a linear probe
  (L-BFGS, cached features) of each backbone on a prior task, Fashion-MNIST (`fedft assets
  fashion-mnist`): HFT should lose less of the pre-trained probe accuracy than full FT.
* ``light_peft``: early pruning from the estimated masks and scores vs random pruning of the same
  numbers (``method.light_peft.selection``), accuracy before, right after and one epoch after
  pruning; parameters, forward time and accuracy before and after compaction.

    .venv/bin/python experiments/mechanisms.py antidote --json experiments/results/mech_antidote.json
    .venv/bin/python experiments/mechanisms.py all --json-dir experiments/results
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedft.central import cached_features
from fedft.config import ExperimentConfig
from fedft.data.datasets import EncodedSplit, encode, load_raw
from fedft.errors import FedftError
from fedft.model import ReadoutNorm, build_model
from fedft.train import evaluate, make_optimizer, seed_everything, train_epoch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs" / "methods"
# --smoke: the same code paths on a tiny random ViT and synthetic images (seconds; for tests)
SMOKE = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
         "data.test_size=24", "train.epochs=1", "train.threads=1"]
_EXTRA: list[str] = []
_SET: list[str] = []  # --set overrides, applied to every training run


class Trained(NamedTuple):
    cfg: ExperimentConfig
    model: nn.Module
    method: Any
    pre: Any
    train: EncodedSplit
    test: EncodedSplit


def train(config: str, *overrides: str, init: dict[str, torch.Tensor] | None = None,
          watch: Callable[[str, int, nn.Module, Any, EncodedSplit], None] | None = None) -> Trained:
    """Train a shipped config centrally (no finalize), from the state ``init`` if given;
    ``watch(when, epoch, model, method, test)`` runs before and after each epoch's start hook."""
    cfg = ExperimentConfig.from_toml(CONFIGS / config, [*overrides, *_SET, *_EXTRA])
    torch.set_num_threads(cfg.train.threads or 2)
    rng = seed_everything(cfg.seed)
    raw = load_raw(cfg.data, cfg.seed)
    model, method, pre = build_model(cfg, raw.num_labels)
    if init is not None:
        model.load_state_dict(init)
    tr = encode(raw, "train", pre, cfg.data.max_length)
    test = encode(raw, "test", pre, cfg.data.max_length)
    opt = make_optimizer(model, cfg.train)
    for epoch in range(1, cfg.train.epochs + 1):
        if watch:
            watch("before", epoch, model, method, test)
        method.on_round_start(model, epoch)
        if watch:
            watch("after", epoch, model, method, test)
        train_epoch(model, tr, np.arange(len(tr)), cfg.train.batch_size, opt, rng)
    model.eval()
    return Trained(cfg, model, method, pre, tr, test)


def other_split(cfg: ExperimentConfig, pre: Any, split: str = "test", name: str = "digits",
                n: int = 0) -> EncodedSplit:
    """``split`` of dataset ``name`` (``n`` samples per split, 0 = all) encoded like ``cfg``'s."""
    if _EXTRA:  # smoke runs use a slice of digits
        name, n = "digits", 64
    raw = load_raw(replace(cfg.data, name=name, train_size=n, test_size=n), cfg.seed)
    return encode(raw, split, pre, cfg.data.max_length)


@torch.no_grad()
def recalibrate(model: nn.Module, split: EncodedSplit, bs: int = 32) -> None:
    """Re-estimate the readout-norm statistics of ``model`` as their exact average over ``split``."""
    norms = [m for m in model.modules() if isinstance(m, ReadoutNorm)]
    with ExitStack() as stack:
        for m in norms:
            stack.enter_context(m.round_average())
            m.train()
        for b in split.batches(np.arange(len(split)), bs):
            model(b)
    model.eval()


@torch.no_grad()
def predictions(model: nn.Module, split: EncodedSplit, bs: int = 32) -> torch.Tensor:
    model.eval()
    return torch.cat([model(b).argmax(-1) for b in split.batches(np.arange(len(split)), bs)])


def check_antidote() -> dict[str, Any]:
    cfg, model, method, _, _, test = train("mnist_antidote.toml")
    harm = cfg.method.options_for("antidote").harmful_label
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

    lp = train("mnist_linear_probe.toml")  # theta_0: pre-trained backbone + linear-probe head
    theta0 = {k: v.detach().clone() for k, v in lp.model.state_dict().items()}
    cfg, model, _, pre, tr, test = train("mnist_wise_ft.toml", "method.wise_ft.report=false", init=theta0)
    ood = other_split(cfg, pre)
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    zs = {n: theta0[n] for n in names}
    ft = {n: p.detach().clone() for n, p in model.named_parameters() if n in zs}
    rows = []
    for a in (0.0, 0.25, 0.5, 0.75, 1.0):
        interpolate(model, zs, ft, a)
        recalibrate(model, tr)
        rows.append({"alpha": a, "id_accuracy": evaluate(model, test, 32).accuracy,
                     "ood_accuracy": evaluate(model, ood, 32).accuracy})
    best_ood = max(rows, key=lambda r: r["ood_accuracy"])
    return {"rows": rows, "theta_0": "pre-trained backbone + linear-probe head (mnist_linear_probe.toml)",
            "ood": f"digits 8x8 upscaled to {cfg.data.image_size} px, {len(ood)} images",
            "expected": "an intermediate alpha has OOD accuracy >= both endpoints",
            "best_ood_alpha": best_ood["alpha"],
            "holds": best_ood["ood_accuracy"] >= max(rows[0]["ood_accuracy"], rows[-1]["ood_accuracy"])
            and 0 < best_ood["alpha"] < 1}


PRIOR = {"name": "fashion-mnist", "n": 1000}  # the prior task of the forgetting check
# fine-tune further than the shipped configs (300 images for 2 epochs move the backbone too
# little to forget anything measurable): the same for full FT and HFT
FORGET = ("data.train_size=1000", "train.epochs=3")


def probe(model: nn.Module, cfg: ExperimentConfig, pre: Any) -> float:
    """L-BFGS linear probe of ``model``'s frozen readout features on the prior task."""
    tr, te = (other_split(cfg, pre, s, PRIOR["name"], PRIOR["n"]) for s in ("train", "test"))
    ftr = cached_features(model, tr, 50, "prior train").inputs["features"]
    fte = cached_features(model, te, 50, "prior test").inputs["features"]
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    x, xt = (ftr - mu) / sd, (fte - mu) / sd
    head = nn.Linear(x.shape[1], int(tr.labels.max()) + 1)
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
    out: dict[str, Any] = {"prior_task": "digits (smoke)" if _EXTRA else
                           f"{PRIOR['name']}, {PRIOR['n']} train / {PRIOR['n']} test images",
                           "fine_tuning": list(FORGET)}
    cfg0 = ExperimentConfig.from_toml(CONFIGS / "mnist_full_ft.toml", _EXTRA)
    raw = load_raw(cfg0.data, cfg0.seed)
    base, _, pre = build_model(cfg0, raw.num_labels)
    out["pretrained_probe"] = probe(base, cfg0, pre)
    for name in ("full_ft", "hft"):
        cfg, model, _, pre, _, test = train(f"mnist_{name}.toml", *FORGET)
        out[name] = {"mnist_accuracy": evaluate(model, test, 32).accuracy, "prior_probe": probe(model, cfg, pre)}
        out[name]["forgetting"] = out["pretrained_probe"] - out[name]["prior_probe"]
    out["expected"] = "HFT forgets less (smaller drop of the prior-task probe) than full fine-tuning"
    out["holds"] = out["hft"]["forgetting"] < out["full_ft"]["forgetting"]
    return out


def check_light_peft() -> dict[str, Any]:
    """Mask-based vs random early pruning at the same ratios (the paper's control), then compaction."""
    out: dict[str, Any] = {}
    for selection in ("mask", "random"):
        res: dict[str, Any] = {}

        def watch(when: str, epoch: int, model: nn.Module, method: Any, test: EncodedSplit,
                  res: dict[str, Any] = res) -> None:
            if epoch != method.options.estimation_epochs + 1:
                return
            if when == "before":
                masks = [p.detach() for n, p in model.named_parameters() if n.endswith("lpeft_ffn_mask")]
                heads = [p.detach() for n, p in model.named_parameters() if n.endswith("lpeft_head_mask")]
                res["ffn_mask_std"] = float(torch.cat(masks).std())
                res["head_mask_std"] = float(torch.cat(heads).std())
            res[f"accuracy_{when}_pruning"] = evaluate(model, test, 32).accuracy

        smoke = ["method.light_peft.estimation_epochs=0"] if _EXTRA else []  # smoke: 1 epoch, prune first
        cfg, model, method, _, _, test = train("mnist_light_peft.toml", f"method.light_peft.selection={selection}",
                                               *smoke, watch=watch)
        res["accuracy_after_training"] = evaluate(model, test, 32).accuracy
        batch = test.batch(np.arange(min(32, len(test))))
        res["params_before_compaction"], res["forward_s_before"] = _size_and_speed(model, batch)
        method.finalize(model)  # prune (if still pending) + compact
        res["params_after_compaction"], res["forward_s_after"] = _size_and_speed(model, batch)
        res["accuracy_after_compaction"] = evaluate(model, test, 32).accuracy
        res["pruned"] = method.describe()
        out[selection] = res
    out["expected"] = ("mask-based pruning keeps more accuracy than random pruning at the same ratios; "
                       "compaction removes parameters and speeds up the forward with the same accuracy")
    out["holds"] = (out["mask"]["accuracy_after_training"] > out["random"]["accuracy_after_training"]
                    and out["mask"]["params_after_compaction"] < out["mask"]["params_before_compaction"])
    return out


@torch.no_grad()
def _size_and_speed(model: nn.Module, batch: dict[str, Any], reps: int = 3) -> tuple[int, float]:
    model.eval()
    model(batch)
    t = time.perf_counter()
    for _ in range(reps):
        model(batch)
    return int(sum(p.numel() for p in model.parameters())), (time.perf_counter() - t) / reps


CHECKS = {"antidote": check_antidote, "wise_ft": check_wise_ft, "hft": check_hft, "light_peft": check_light_peft}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("check", choices=[*CHECKS, "all"])
    ap.add_argument("--json", type=Path, help="write the result here (one check)")
    ap.add_argument("--json-dir", type=Path, help="write mech_<check>.json files here")
    ap.add_argument("--smoke", action="store_true", help="tiny random model and synthetic data (seconds)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every training run, e.g. --set train.lr=0.0001 "
                         "(repeatable; after each check's own settings)")
    args = ap.parse_args(argv)
    _SET[:] = args.set
    try:  # a bad --set fails now, not after the first check's training
        ExperimentConfig.from_toml(CONFIGS / "mnist_full_ft.toml", _SET)
    except FedftError as e:
        ap.error(str(e))
    if args.smoke:
        _EXTRA[:] = SMOKE
    for name in CHECKS if args.check == "all" else [args.check]:
        t0 = time.time()
        try:
            res = CHECKS[name]()
        except FedftError as e:  # a missing asset, a bad --set: one line, non-zero exit
            print(f"mechanisms.py {name}: {e}", file=sys.stderr)
            return 2
        res["seconds"] = round(time.time() - t0, 1)
        res["command"] = " ".join(["python experiments/mechanisms.py", name, *(f"--set {kv}" for kv in args.set)])
        print(name, json.dumps(res, indent=2))
        path = args.json if args.json and args.check != "all" else (
            args.json_dir / f"mech_{name}.json" if args.json_dir else None)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
