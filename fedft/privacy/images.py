"""Input reconstruction from a replayed image run: white-box inversion against the public head and
a black-box decoder trained on auxiliary images (see :mod:`fedft.privacy.audit`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedft.errors import FedftError
from fedft.privacy.common import attacker_view, token_rows, wire
from fedft.privacy.decoders import fit_patch_decoder
from fedft.privacy.inversion import AffineInverse, optimise_inverse
from fedft.privacy.metrics import image_scores

if TYPE_CHECKING:
    from fedft.privacy.audit import AuditOptions

AFFINE_TOLERANCE = 1e-4  # relative residual under which the head counts as affine in its input


def _aux_indices(total: int, used: np.ndarray, n: int, seed: int) -> np.ndarray:
    free = np.setdiff1d(np.arange(total), used)
    return np.sort(np.random.default_rng(seed).choice(free, size=min(n, len(free)), replace=False))


def _aux_images(cfg: Any, n: int, seed: int) -> tuple[np.ndarray, str]:
    """Auxiliary images disjoint from the clients' data: the rest of the train split, or the test split."""
    from fedft.data.datasets import load_raw, subsample_indices

    full = load_raw(replace(cfg.data, train_size=0, test_size=0), cfg.seed)
    used = subsample_indices(len(full.train_y), cfg.data.train_size, cfg.seed)
    if len(used) < len(full.train_y):
        idx = _aux_indices(len(full.train_y), used, n, seed)
        return full.train_x[idx], f"{cfg.data.name} train images outside the clients' {len(used)}"
    idx = _aux_indices(len(full.test_y), np.array([], dtype=int), n, seed)
    return full.test_x[idx], f"{cfg.data.name} test images (the clients hold the whole train split)"


def _affine_inverse(head: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], run: Any,
                    opts: AuditOptions, log: Callable[[str], None]) -> AffineInverse | None:
    """The least-squares inverse of the head when it is affine in the pixels (no client block,
    linear preprocessing; checked on random inputs), else None (then optimisation is used)."""
    if run.cfg.split.head_blocks != 0 or getattr(run.preprocess, "mode", "") != "bilinear":
        return None
    with attacker_view(run.model):
        inverse = AffineInverse(head, shape)
        probe = torch.rand(4, *shape, generator=torch.Generator().manual_seed(opts.seed))
        y = head(probe).flatten(1)
        residual = float((inverse.forward_map(probe) - y).norm() / y.norm())
    if residual > AFFINE_TOLERANCE:
        log(f"head is not affine in the pixels (relative residual {residual:.2e}); using optimisation")
        return None
    return inverse


def image_attacks(run: Any, parts: Any, victims: np.ndarray, opts: AuditOptions,
                   log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    model, pre, cfg = run.model, run.preprocess, run.cfg
    if not hasattr(pre, "from_unit"):
        raise FedftError("image attacks need fedft's ImagePreprocessor (a model with a Hugging Face image "
                         "processor is not supported yet)")
    x = torch.from_numpy(np.asarray(victims)).float().div(255.0)  # (N, H, W) in [0, 1]
    if x.dim() == 4:
        x = x.mean(dim=-1)  # colour: attack the grey image (the shape the score compares)
    shape = tuple(x.shape[1:])
    patch = int(model.backbone.config.patch_size)

    def head(xs: torch.Tensor) -> torch.Tensor:
        return parts.head({"pixel_values": pre.from_unit(xs)})[0]

    with torch.no_grad():
        sent = torch.cat([head(c) for c in x.split(32)])  # what the client sends (run's precision, noise)
    aux_raw, aux_name = _aux_images(cfg, opts.aux_size, opts.seed + 1)
    aux = torch.from_numpy(np.asarray(aux_raw)).float().div(255.0)
    aux = aux.mean(dim=-1) if aux.dim() == 4 else aux
    with torch.no_grad():
        aux_sent = torch.cat([head(c) for c in aux.split(32)])
    rows_idx = token_rows(model, sent.shape[1])
    if model.arch.has_cls:
        rows_idx = rows_idx[1:]  # CLS carries no patch
    chance = image_scores(x, aux.mean(dim=0, keepdim=True).expand_as(x))
    out: list[dict[str, Any]] = [{"attack": "chance (auxiliary mean image)", "target": "input",
                                  "codec": "-", **chance}]
    recon: dict[str, torch.Tensor] = {}
    inverse = _affine_inverse(head, shape, run, opts, log)
    for codec in opts.codecs:
        observed = wire(sent, codec)
        t0 = time.time()
        if inverse is not None:
            rec, how = inverse(observed), "white-box least squares"
        else:
            with attacker_view(model, grad=True):
                rec = optimise_inverse(head, observed, shape, steps=opts.inversion_steps, seed=opts.seed)
            how = "white-box optimisation"
        recon[f"{how} ({codec})"] = rec
        out.append({"attack": how, "target": "input", "codec": codec, **image_scores(x, rec),
                    "seconds": round(time.time() - t0, 1)})
        log(f"{how} ({codec}): PSNR {out[-1]['psnr_db']:.1f} dB")
        t0 = time.time()
        dec = fit_patch_decoder(wire(aux_sent, codec)[:, rows_idx], aux, patch, opts.decoder_epochs, opts.seed)
        with torch.no_grad():
            rec = dec(observed[:, rows_idx])
        recon[f"black-box decoder ({codec})"] = rec
        out.append({"attack": "black-box decoder", "target": "input", "codec": codec, **image_scores(x, rec),
                    "seconds": round(time.time() - t0, 1), "auxiliary": aux_name})
        log(f"black-box decoder ({codec}): PSNR {out[-1]['psnr_db']:.1f} dB")
    recon = {"original": x, **recon}
    return out, recon
