"""Scores of the attacks: PSNR and SSIM of reconstructions (scikit-image), label-inference accuracy
and AUC, each beside its chance baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def image_scores(original: torch.Tensor, reconstructed: torch.Tensor, data_range: float = 1.0) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over a batch of (B, H, W) or (B, 1, H, W) images in ``[0, data_range]``,
    and the largest absolute pixel error."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = original.detach().reshape(original.shape[0], *original.shape[-2:]).double().numpy()
    b = reconstructed.detach().reshape(a.shape).double().clip(0, data_range).numpy()
    psnr = [peak_signal_noise_ratio(x, y, data_range=data_range) if not np.array_equal(x, y) else float("inf")
            for x, y in zip(a, b, strict=True)]
    ssim = [structural_similarity(x, y, data_range=data_range) for x, y in zip(a, b, strict=True)]
    return {"psnr_db": float(np.mean(psnr)), "ssim": float(np.mean(ssim)),
            "max_abs_error": float(np.abs(a - b).max())}


def label_scores(true: torch.Tensor, inferred: torch.Tensor | None = None,
                 scores: torch.Tensor | None = None, positive: int = 1) -> dict[str, Any]:
    """Accuracy of inferred labels against the majority-class baseline; with ``scores``, the ROC
    AUC of the score for ``true == positive`` (0.5 is chance)."""
    y = true.numpy()
    out: dict[str, Any] = {"chance_accuracy": float(np.bincount(y).max() / len(y))}
    if inferred is not None:
        out["accuracy"] = float((inferred.numpy() == y).mean())
    if scores is not None:
        from sklearn.metrics import roc_auc_score

        out["auc"] = float(roc_auc_score(y == positive, scores.numpy()))
    return out
