"""Parameter bytes through Flower per ``federation.params_wire`` format on a tiny run.

Runs SFPrompt and FL-full on tiny-vit / synthetic-images (2 clients, in-process engine) once per
format and writes each run's ``params_up`` / ``params_down`` bytes (the ledger's count of the
compressed records sent), their ratio to fp32's and the final test accuracy to
``experiments/results/params_wire.json``. Tiny-vit's rows are 32 values and its tensors small,
so per-array headers weigh; the ``main_job`` rows give the record bytes of one download of the
main job's model (dinov2-small, rows of 384) per format, without training (an upload's record has
the same size: sizes do not depend on values). Usage: ``python experiments/params_wire_bytes.py
[--rounds 2] [--out experiments/results/params_wire.json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from fedft.config import ExperimentConfig
from fedft.runner import run

TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
    "data.test_size=16", "partition.scheme=iid", "partition.num_clients=2", "partition.min_size=4",
    "federation.engine=inprocess", "train.batch_size=8", "method.prompt_len=2", "output.plots=false",
]
FORMATS = ("fp32", "fp16", "bf16", "int8")
STRATEGIES = ("sfprompt", "fl_full")


def measure(rounds: int, work: Path) -> list[dict]:
    """One row per (strategy, format)."""
    rows = []
    for strategy in STRATEGIES:
        base: dict[str, int] = {}
        for fmt in FORMATS:
            cfg = ExperimentConfig.from_overrides([*TINY, f"federation.rounds={rounds}",
                                                   f"federation.strategy={strategy}", f"federation.params_wire={fmt}"])
            summary = run(cfg, work / f"{strategy}_{fmt}", show=False)
            kinds = summary["bytes_by_kind"]
            up, down = int(kinds.get("params_up", 0)), int(kinds.get("params_down", 0))
            base = base or {"up": up, "down": down}
            rows.append({"strategy": strategy, "params_wire": fmt, "rounds": rounds, "params_up": up,
                         "params_down": down, "up_vs_fp32": round(up / base["up"], 4),
                         "down_vs_fp32": round(down / base["down"], 4),
                         "final_accuracy": summary["final_accuracy"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main_job_records() -> list[dict]:
    """Bytes of one download record of the main job's model per strategy and format."""
    from fedft.config import main_job_path
    from fedft.federated.client import split_parts
    from fedft.federated.payload import download
    from fedft.federated.records import to_arrays
    from fedft.federated.update_codec import encode_update
    from fedft.model import build_model
    from fedft.strategies import STRATEGIES as REGISTRY

    rows = []
    for strategy in STRATEGIES:
        cfg = REGISTRY.get(strategy).configure(ExperimentConfig.from_toml(main_job_path(), [f"federation.strategy={strategy}"]))
        model, method, _ = build_model(cfg, 10)  # MNIST's 10 labels
        state = download(method, model, split_parts(cfg, model))
        fp32 = to_arrays(state).count_bytes()
        for fmt in FORMATS:
            nbytes = to_arrays(encode_update(state, fmt)).count_bytes()
            rows.append({"strategy": strategy, "model": cfg.model.name, "params_wire": fmt, "tensors": len(state),
                         "values": int(sum(v.size for v in state.values())), "record_bytes": nbytes,
                         "vs_fp32": round(nbytes / fp32, 4)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("experiments/results/params_wire.json"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        rows = measure(args.rounds, Path(work))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"config": TINY, "rows": rows, "main_job": main_job_records()}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
