"""Why the mean-pooled DINOv2-small readout trains slowly with few steps: its features share a large
common offset. Prints the norm of the mean feature against the mean feature norm and the spread
around the mean, on the frozen model's readout (final LayerNorm, mean over non-CLS tokens).

    .venv/bin/python experiments/analyze_features.py --n 500 --json experiments/results/feature_offset.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fedft.central import cached_features
from fedft.config import ExperimentConfig
from fedft.data.datasets import encode, load_raw
from fedft.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/configs/mnist_linear_probe.toml")
    ap.add_argument("--n", type=int, default=500, help="training images to embed")
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = ExperimentConfig.from_toml(args.config, [f"data.train_size={args.n}", "data.test_size=10"])
    raw = load_raw(cfg.data, cfg.seed)
    model, _, pre = build_model(cfg, raw.num_labels)
    feats = cached_features(model, encode(raw, "train", pre, 0), 16, "features").inputs["features"].numpy()
    mean = feats.mean(0)
    out = {
        "images": int(len(feats)),
        "mean_feature_norm": float(np.linalg.norm(mean)),
        "mean_of_feature_norms": float(np.linalg.norm(feats, axis=1).mean()),
        "mean_distance_to_mean_feature": float(np.linalg.norm(feats - mean, axis=1).mean()),
        "share_of_squared_norm_in_the_offset": float(np.linalg.norm(mean) ** 2 / (np.linalg.norm(feats, axis=1) ** 2).mean()),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
