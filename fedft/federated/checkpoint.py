"""Per-round checkpoints of the server, so ``fedft run --resume RUN_DIR`` continues a killed run.

A checkpoint holds what the server cannot recompute: the global client-side state, the body
when it trains (plus the shared body's optimizer state), the ledger so far and the FLOP and time
counters. Random streams need no saving: client sampling and every client's seeds derive from
(seed, round, client), so a resumed round draws exactly what the uninterrupted one drew.
Written to a temporary directory and renamed, so a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from fedft.accounting import CommLedger

DIR = "checkpoint"


@dataclass
class Checkpoint:
    round: int
    global_update: dict[str, np.ndarray]
    body: dict[str, np.ndarray] | None
    body_optimizer: dict | None
    ledger: CommLedger
    counters: dict[str, float]


def save(run_dir: Path, ckpt: Checkpoint) -> None:
    """Write ``run_dir/checkpoint`` atomically."""
    final = run_dir / DIR
    tmp = run_dir / f".{DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in ckpt.global_update.items()}, str(tmp / "global.safetensors"))
    if ckpt.body is not None:
        save_file({k: np.ascontiguousarray(v) for k, v in ckpt.body.items()}, str(tmp / "body.safetensors"))
    if ckpt.body_optimizer is not None:
        torch.save(ckpt.body_optimizer, tmp / "body_optimizer.pt")
    ckpt.ledger.to_csv(tmp / "ledger.csv")
    (tmp / "meta.json").write_text(json.dumps({"round": ckpt.round, "counters": ckpt.counters}))
    old = run_dir / f".{DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load(run_dir: Path) -> Checkpoint | None:
    """The last complete checkpoint of a run, or ``None``."""
    d = run_dir / DIR
    if not (d / "meta.json").is_file():
        old = run_dir / f".{DIR}.old"  # killed between the two renames
        if not (old / "meta.json").is_file():
            return None
        d = old
    meta: dict[str, Any] = json.loads((d / "meta.json").read_text())
    body = load_file(str(d / "body.safetensors")) if (d / "body.safetensors").is_file() else None
    opt = torch.load(d / "body_optimizer.pt", weights_only=False) if (d / "body_optimizer.pt").is_file() else None
    return Checkpoint(int(meta["round"]), load_file(str(d / "global.safetensors")), body, opt,
                      CommLedger.from_csv(d / "ledger.csv"), dict(meta["counters"]))
