"""Choose the GeMQuAD study's student epochs and learning rate on a validation set: students
trained on the study's gold seed (the first ``--gold-n`` items of its seeded permutation of the
BBC tech quote-attribution items) and scored on the last ``--val-n`` items of that permutation,
which neither the seed nor the target test set (business, politics) contains.

    .venv/bin/python experiments/gemquad_student_probe.py          # writes <out>/student_probe.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llm_data_gemquad import GOLD_SECTION, POOL_SEED, RESULTS, _articles, _items
from study_cells import write_json

SETTINGS = ((3, 5e-5), (10, 1e-4))  # (epochs, lr): the recipe's old default, and a longer, faster one


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from fedft.assets import asset_dir
    from fedft.qa import evaluate_student, load_student, train_student

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gold-n", type=int, default=32, help="gold seed items (default 32, as the study)")
    p.add_argument("--val-n", type=int, default=80, help="validation items (default 80)")
    p.add_argument("--max-length", type=int, default=256, help="student window tokens (default 256)")
    p.add_argument("--doc-stride", type=int, default=96, help="window overlap (default 96)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=str(RESULTS), help="output directory")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    items = _items(_articles(asset_dir("bbc-news"))[GOLD_SECTION], f"bbc-news/{GOLD_SECTION}")
    perm = np.random.default_rng(POOL_SEED).permutation(len(items))  # make_data's first draw
    gold, val = [items[int(i)] for i in perm[: a.gold_n]], [items[int(i)] for i in perm[-a.val_n:]]
    rows = []
    for epochs, lr in SETTINGS:
        model, tok = load_student("minilm-l6", 0)
        t0 = time.perf_counter()
        train_student(model, tok, gold, epochs, lr, 16, a.max_length, a.doc_stride, 0, progress=True)
        scores = evaluate_student(model, tok, val, max_length=a.max_length, doc_stride=a.doc_stride)
        rows.append({"epochs": epochs, "lr": lr, **scores, "seconds": time.perf_counter() - t0})
        print(f"epochs {epochs}, lr {lr:g}: validation EM {scores['em']:.1f}, F1 {scores['f1']:.1f}")
    write_json(Path(a.out) / "student_probe.json", {"options": vars(a), "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
