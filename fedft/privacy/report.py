"""How ``fedft privacy`` shows its results: the attack table and the reconstruction grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedft.privacy.metrics import image_scores


def save_grid(images: dict[str, torch.Tensor], out: Path, n: int, title: str = "") -> None:
    """One row per entry (originals first), ``n`` images each, captioned with mean PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(next(iter(images.values()))))
    fig, axes = plt.subplots(len(images), n, figsize=(1.2 * n, 1.35 * len(images)), squeeze=False)
    original = images["original"]
    for r, (name, imgs) in enumerate(images.items()):
        label = name if name == "original" else f"{name}\n{image_scores(original, imgs)['psnr_db']:.1f} dB"
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def print_table(result: dict[str, Any]) -> None:
    """The attack table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    s = result["split"]
    table = Table(title=f"fedft privacy: {result['run_dir']} (h = {s['head_blocks']}, t = {s['tail_blocks']}, "
                        f"noise {s['noise']}, nopeek {s['nopeek']})", header_style="bold")
    for col in ("target", "attack", "codec", "score", "chance"):
        table.add_column(col, justify="right" if col in ("score", "chance") else "left")
    chance: dict[str, str] = {}
    for row in result["attacks"]:
        if row["attack"].startswith("chance"):
            key = "psnr_db" if "psnr_db" in row else "token_accuracy"
            chance[row["target"]] = f"{row[key]:.3g}" + (" dB" if key == "psnr_db" else "")
            continue
        if "psnr_db" in row:
            score = f"{row['psnr_db']:.1f} dB, SSIM {row['ssim']:.3f}"
        elif "token_accuracy" in row:
            score = f"{row['token_accuracy']:.3f} tokens"
        elif "dcor" in row:
            score = f"dCor {row['dcor']:.3f}"
        elif "auc" in row:
            score = f"AUC {row['auc']:.3f}"
        else:
            score = f"{row['accuracy']:.3f} acc"
        ref = (f"{row['chance']:.3f}" if "chance" in row else "0 = indep." if "dcor" in row
               else chance.get(row["target"], ""))
        table.add_row(row["target"], row["attack"], row["codec"], score, ref)
    Console().print(table)
