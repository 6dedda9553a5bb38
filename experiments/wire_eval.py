"""Re-evaluate wire-study cells' final models as fedft now evaluates split runs: over their wire.

fedft evaluates a split run's global model over the run's own activation format at both cuts
(``fedft/split/served.py``): that is what a deployed split model serves, and a model trained over
a lossy wire fits its tail to decoded features. The first cells of the study ran before that
change and validated and tested in one process (head, body and tail chained, no wire). This
loads each cell's last checkpoint and writes, beside its artifacts, ``eval_on_wire.json``: its
validation and test accuracy over the wire (the run's own summary holds the in-process ones). ``wire_tradeoff.py --report-only`` reports the over-the-
wire numbers for every cell, so every arm is judged the same way; for a cell that ran after the
change they equal its own summary's (a check the report prints).

    .venv/bin/python experiments/wire_eval.py --cells fp16_s0,int4_s0,int8_s0,int8_s1,topk_noef_s0,topk_s0,int8_s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def eval_run(run: Path) -> dict[str, Any]:
    """The run's final model on its validation and test splits over its wire."""
    from fedft.data.datasets import encode
    from fedft.evaluation import load_run
    from fedft.federated.client import split_parts
    from fedft.model import set_precision
    from fedft.split.served import OverTheWire
    from fedft.train import evaluate

    loaded = load_run(run)
    cfg, model = loaded.cfg, loaded.model
    set_precision(model, cfg.train.precision)
    wired = OverTheWire(model, split_parts(cfg, model), cfg.split.wire_dtype)
    out: dict[str, Any] = {"run": run.name, "wire_dtype": cfg.split.wire_dtype, "round": loaded.round}
    for split in ("val", "test"):
        data = encode(loaded.raw, split, loaded.preprocess, cfg.data.max_length)
        with torch.no_grad():
            over = evaluate(wired, data, cfg.train.eval_batch_size)
        out |= {f"{split}_samples": over.n, f"{split}_accuracy_on_wire": over.accuracy}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="vision", help="study task (default vision)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/wire", help="cells' run directories (default runs/wire)")
    ap.add_argument("--results", type=Path, default=ROOT / "experiments/results/wire",
                    help="cells' artifacts, where eval_on_wire.json goes (default experiments/results/wire)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--force", action="store_true", help="re-evaluate cells that already have the JSON")
    ap.add_argument("--cells", default="", help="comma-separated cells, e.g. int8_s0 (default: every finished cell)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    chosen = set(filter(None, a.cells.split(",")))
    for cell in sorted((a.results / a.task).glob("*_s*")):
        if chosen and cell.name not in chosen:
            continue
        out, run = cell / "eval_on_wire.json", a.runs / a.task / cell.name
        if not (cell / "summary.json").is_file() or (out.is_file() and not a.force):
            continue
        if not (run / "checkpoint").is_dir():
            print(f"{cell.name}: no checkpoint under {run}; rerun the cell with wire_tradeoff.py", file=sys.stderr)
            continue
        row = eval_run(run)
        out.write_text(json.dumps(row, indent=1) + "\n")
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
