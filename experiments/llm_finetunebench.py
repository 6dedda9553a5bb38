"""FineTuneBench on SmolLM2-135M-Instruct: does fine-tuning on QA pairs inject knowledge that the
model can use, centrally and federated? (Wu, Wu, Zou, "FineTuneBench", arXiv 2411.05059:
memorisation high, generalisation poor, updating known facts harder.)

The harness is ``fedft.evals.finetunebench`` (``FineTuneBench``): per seed it generates fictional
people (6 attributes each) and fictional news facts, and picks counterfactual updates among the
capitals and chatterbot trivia questions the base model answers correctly (the base model's
answers to every candidate are computed once: ``<out>/base_check.json``). The model is fine-tuned
on the memorisation QAs only, then asked every question greedily.

Cells (``<out>/cells/<condition>_seed<k>.json``, seeds 0, 1, 2; the seed changes the facts, the
updates drawn, the initialisation and the data order):

- ``base``: no training (the majority-rate check and what the base model already knows);
- ``full``: central full fine-tuning, AdamW lr ``--lr-full``;
- ``lora``: central LoRA r 16 / alpha 32 / dropout 0.05 on ``--lora-targets`` (every linear of
  the blocks), AdamW lr ``--lr-lora``;
- ``fed_lora``: federated LoRA, in-script FedAvg: each fact's owner (a person, a news item, an
  update) goes to exactly one of ``--clients`` clients (greedy size balancing); per round every
  client starts from the global LoRA tensors, trains ``--local-epochs`` epochs on its own QAs with
  a fresh AdamW (as fedft's client round does) and uploads; the server averages with fedft's
  ``aggregate`` (weights = examples) through fedft's method payload (``download`` / ``upload`` /
  ``receive``). ``--rounds`` x ``--local-epochs`` = ``--epochs``: every QA gets as many gradient
  steps as in the central runs. fedft's own federated engine was not used: its datasets are
  registered by name without the seed and options a generated benchmark needs, and no partition
  scheme gives each group to exactly one client.

Cost [D] (measured on this shared 2-core machine, one thread): 72 training QAs of ~35 tokens
(8 people x 6 + 12 news + 12 updates); an epoch of LoRA (all block linears) ~28 s, of full
fine-tuning ~35 s; evaluating ~240 questions ~30 s; the base check of 292 candidates ~85 s, once.
With 6 epochs a trained cell is ~3.5-4 min: 3 x 3 trained cells + 3 base cells ~38 min. Sizing
probes on seed 0 (memorisation QAs only): LoRA lr 1e-3 on q, v, batch 8, 4 epochs, 92 QAs memorised 0.14; all
linears at 2e-3, 6 epochs 0.63; 5e-3 diverged (0.12); full fine-tuning 1e-4, 6 epochs 0.83.

    .venv/bin/python experiments/llm_finetunebench.py --threads 1   # resumable, then the report
    .venv/bin/python experiments/llm_finetunebench.py --report-only
    .venv/bin/python experiments/llm_finetunebench.py --cell lora 0          # one cell in this process
    .venv/bin/python experiments/llm_finetunebench.py --people 2 --news 2 --updates 2 --epochs 1 \\
        --rounds 1 --local-epochs 1 --clients 2 --out /tmp/ftb                # a smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from study_cells import (
    ROOT,
    add_option_flags,
    json_cache,
    lora_overrides,
    option_args,
    options_from,
    run_cells,
    train_split,
    write_json,
)

RESULTS = ROOT / "experiments/results/lm/decoding/finetunebench"
CONDITIONS = ("base", "full", "lora", "fed_lora")
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Options:
    model: str = "smollm2-135m"
    people: int = 8  # [D] paper 25
    news: int = 12  # [D] paper 50
    updates: int = 12  # [D]
    comparisons_per_person: int = 2  # [D]
    epochs: int = 6  # [D] paper: up to 30 epochs through vendor APIs
    lr_lora: float = 2e-3  # [D] LoRA r 16 / alpha 32, AdamW, constant
    lr_full: float = 1e-4  # [D] full fine-tuning, AdamW, constant
    lora_targets: str = "q,k,v,o,gate,up,down"  # [D] every linear of the blocks (facts live in the MLPs too)
    batch_size: int = 4  # [D]
    max_length: int = 96  # [D] tokens per QA (all fit)
    clients: int = 4  # [D] fed_lora
    rounds: int = 3  # [D] fed_lora; rounds x local_epochs = epochs
    local_epochs: int = 2  # [D] fed_lora
    threads: int = 1
    out: str = str(RESULTS)


OPTION_HELP = {"model": "causal LM (an offline asset name)", "people": "fictional people (6 QAs each)",
               "news": "fictional news facts", "updates": "counterfactual updates of known facts",
               "comparisons_per_person": "comparison questions per person", "epochs": "central training epochs",
               "lr_lora": "AdamW learning rate of LoRA (constant)", "lr_full": "AdamW learning rate of full FT",
               "lora_targets": "LoRA target roles (comma-separated: q,k,v,o,gate,up,down)",
               "batch_size": "training batch", "max_length": "tokens per training QA",
               "clients": "fed_lora clients", "rounds": "fed_lora rounds", "local_epochs": "fed_lora local epochs",
               "threads": "torch threads per process", "out": "output directory (cells, base check, summary.csv)"}


def bench_options(seed: int, opts: Options) -> Any:
    from fedft.evals.finetunebench import FineTuneBenchOptions

    return FineTuneBenchOptions(seed=seed, people=opts.people, news=opts.news, updates=opts.updates,
                                comparisons_per_person=opts.comparisons_per_person)


def overrides(condition: str, seed: int, opts: Options) -> list[str]:
    lr = opts.lr_full if condition == "full" else opts.lr_lora
    out = lora_overrides(opts.model, "trivia", seed, lr=lr, batch_size=opts.batch_size, epochs=opts.epochs,
                         max_length=opts.max_length, threads=opts.threads)
    if condition == "full":
        return [o for o in out if not o.startswith("method.")] + ["method.name=full_ft"]
    return [o for o in out if not o.startswith("method.lora.targets=")] + [f"method.lora.targets={opts.lora_targets}"]


def build(cfg: Any) -> tuple[Any, Any, Any]:
    """The task model (method applied), the method and the tokenizer (tests replace this)."""
    from fedft.model.build import build_model

    return build_model(cfg, num_labels=0)


def cell_path(out: Path, condition: str, seed: int) -> Path:
    return out / "cells" / f"{condition}_seed{seed}.json"


# --- the base model's answers to the update candidates ---------------------------------------------

def base_key(opts: Options) -> dict[str, Any]:
    b = bench_options(0, opts)
    return {"model": opts.model, "system_prompt": b.system_prompt, "max_new_tokens": b.max_new_tokens}


def make_base_check(opts: Options) -> dict[str, Any]:
    from fedft.config import ExperimentConfig
    from fedft.evals.finetunebench import FineTuneBench

    bench = FineTuneBench(bench_options(0, opts))
    model, _, tok = build(ExperimentConfig.from_overrides(overrides("base", 0, opts)))
    t0 = time.perf_counter()
    answers = bench.prepare(model.eval(), tok)
    return {"key": base_key(opts), "prompts": [c.prompt for c in bench.candidates], "answers": answers,
            "known": bench.known, "seconds": time.perf_counter() - t0}


def base_check(opts: Options) -> dict[str, Any]:
    path = Path(opts.out) / "base_check.json"
    data = json_cache(path, lambda: make_base_check(opts))
    if data.get("key") != base_key(opts):
        raise SystemExit(f"{path} was made with {data.get('key')}, not {base_key(opts)}: use another --out or delete it")
    return data


# --- training ----------------------------------------------------------------------------------------

def split_of(items: list, tok: Any) -> Any:
    import torch

    from fedft.data.sft_data import SFTSplit

    return SFTSplit(items, torch.zeros(len(items), dtype=torch.long), tok.pad_token_id or 0)


def partition_owners(groups: list[str], clients: int, seed: int) -> list[list[int]]:
    """Example indices per client: every owner (group) to exactly one client, largest owners first
    (seeded order among equals), each to the client with the fewest examples so far."""
    import numpy as np

    owners: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        owners.setdefault(g, []).append(i)
    names = sorted(owners)
    order = np.random.default_rng([seed, 5]).permutation(len(names))
    ranked = sorted((names[int(k)] for k in order), key=lambda g: -len(owners[g]))
    parts: list[list[int]] = [[] for _ in range(clients)]
    for g in ranked:
        min(parts, key=len).extend(owners[g])
    return [sorted(p) for p in parts]


def fed_train(model: Any, method: Any, cfg: Any, split: Any, parts: list[list[int]], opts: Options,
              rng: Any) -> tuple[float, float, int]:
    """FedAvg of the LoRA tensors: (last round's mean client loss, seconds, total steps)."""
    import math

    import numpy as np

    from fedft.federated.aggregation import aggregate
    from fedft.federated.payload import download, receive, upload
    from fedft.train import make_optimizer, train_epoch

    glob, loss, steps, t0 = download(method, model), float("nan"), 0, time.perf_counter()
    for rnd in range(opts.rounds):
        ups, weights, losses = [], [], []
        for c, idx in enumerate(parts):
            receive(method, model, glob)
            opt = make_optimizer(model, cfg.train)
            for _ in range(opts.local_epochs):
                lc, _ = train_epoch(model, split, np.asarray(idx), opts.batch_size, opt, rng)
                steps += math.ceil(len(idx) / opts.batch_size)
            ups.append(upload(method, model))
            weights.append(float(len(idx)))
            losses.append(lc)
            print(f"  round {rnd + 1} client {c}: {len(idx)} QAs, loss {lc:.3f}", flush=True)
        glob = aggregate(ups, weights)
        loss = float(np.average(losses, weights=weights))
    receive(method, model, glob)
    return loss, time.perf_counter() - t0, steps


# --- one cell ----------------------------------------------------------------------------------------

def run_cell(condition: str, seed: int, opts: Options) -> dict[str, Any]:
    import torch

    from fedft.config import ExperimentConfig
    from fedft.data.sft import tokenize
    from fedft.evals.finetunebench import FineTuneBench
    from fedft.train import seed_everything

    torch.set_num_threads(max(opts.threads, 1))
    check = base_check(opts)
    bench = FineTuneBench(bench_options(seed, opts))
    if [c.prompt for c in bench.candidates] != check["prompts"]:
        raise SystemExit("the update candidates changed since base_check.json: delete it")
    bench.select_updates(check["answers"])
    cfg = ExperimentConfig.from_overrides(overrides(condition, seed, opts))
    rng = seed_everything(seed)
    model, method, tok = build(cfg)
    examples = bench.training_examples()
    system = bench.options.system_prompt or None
    items = [tokenize(e, tok, opts.max_length, system) for e in examples]
    rec: dict[str, Any] = {"condition": condition, "seed": seed, "options": asdict(opts),
                           "bench": asdict(bench.options), "overrides": overrides(condition, seed, opts),
                           "train_examples": len(examples), "train_tokens": sum(len(i) for i in items),
                           "train_loss": None, "train_s": 0.0, "steps": 0, "partition": None}
    if condition in ("full", "lora"):
        rec["train_loss"], rec["train_s"], rec["steps"] = train_split(model, cfg, split_of(items, tok), rng,
                                                                      f"{condition} seed {seed}")
    elif condition == "fed_lora":
        parts = partition_owners([e.group for e in examples], opts.clients, seed)
        rec["partition"] = {"sizes": [len(p) for p in parts],
                            "owners": [len({examples[i].group for i in p}) for p in parts]}
        rec["train_loss"], rec["train_s"], rec["steps"] = fed_train(model, method, cfg, split_of(items, tok),
                                                                    parts, opts, rng)
    t0 = time.perf_counter()
    rows = bench.evaluate_rows(model.eval(), tok)
    rec.update(bench.summarize(rows))
    rec.update({"eval_s": time.perf_counter() - t0, "majority": bench.majority_baselines(),
                "rows": [{k: r[k] for k in ("qid", "qtype", "prompt", "gold", "old", "completion", "verdict", "outcome")
                          if k in r} for r in rows],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "torch_threads": torch.get_num_threads(), "precision": str(model.compute_dtype).removeprefix("torch.")})
    return rec


# --- the study ---------------------------------------------------------------------------------------

def run_study(opts: Options, conditions: list[str], seeds: list[int], force: bool) -> list[str]:
    base_check(opts)  # once, before any cell reads it
    todo = [(c, s) for c in conditions for s in seeds if force or not cell_path(Path(opts.out), c, s).is_file()]
    script = str(Path(__file__).resolve())
    return run_cells([(f"{c} seed {s}", [sys.executable, script, "--cell", c, str(s), *option_args(opts)])
                      for c, s in todo], 1, None if force else [cell_path(Path(opts.out), c, s) for c, s in todo])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cell", nargs=2, metavar=("CONDITION", "SEED"),
                   help=f"run one cell in this process (condition: {', '.join(CONDITIONS)})")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated conditions (default: all)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--force", action="store_true", help="rerun cells whose JSON exists")
    p.add_argument("--report-only", action="store_true", help="only write the report from existing JSONs")
    add_option_flags(p, Options, OPTION_HELP)
    return p


def _one_cell(cell: list[str], opts: Options) -> int:
    condition, seed = cell[0], int(cell[1])
    if condition not in CONDITIONS:
        raise SystemExit(f"unknown condition {condition!r}; valid: {', '.join(CONDITIONS)}")
    if condition == "fed_lora" and opts.rounds * opts.local_epochs != opts.epochs:
        print(f"note: rounds x local epochs = {opts.rounds * opts.local_epochs}, epochs = {opts.epochs}",
              file=sys.stderr)
    rec = run_cell(condition, seed, opts)
    rec["command"] = " ".join([".venv/bin/python experiments/llm_finetunebench.py --cell", condition, str(seed),
                               *option_args(opts)])
    write_json(cell_path(Path(opts.out), condition, seed), rec)
    print(f"{condition} seed {seed}: memorization {rec.get('new_memorization', float('nan')):.2f}, rephrased "
          f"{rec.get('new_rephrased', float('nan')):.2f}, secondary {rec.get('new_secondary', float('nan')):.2f}, "
          f"comparison {rec.get('people_comparison', float('nan')):.2f}, update new "
          f"{rec.get('update_memorization_new', float('nan')):.2f}; {rec['train_s']:.0f} s training, "
          f"{rec['eval_s']:.0f} s evaluation", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    if a.cell:
        return _one_cell(a.cell, opts)
    failed: list[str] = []
    if not a.report_only:
        conditions = [c for c in a.conditions.split(",") if c]
        unknown = sorted(set(conditions) - set(CONDITIONS))
        if unknown:
            raise SystemExit(f"unknown conditions {', '.join(unknown)}; valid: {', '.join(CONDITIONS)}")
        failed = run_study(replace(opts), conditions, [int(s) for s in a.seeds.split(",")], a.force)
    from llm_finetunebench_report import write_report

    write_report(Path(opts.out))
    if failed:
        print(f"failed cells: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
