"""MFTCoder's multi-task losses and CoBa on SmolLM2-135M-Instruct: do task-balanced losses lift the
worst task of an imbalanced code-task mix, and does packing remove padding? (Liu et al., "MFTCoder:
Boosting Code LLMs with Multitask Fine-Tuning", KDD 2024, arXiv 2311.02303; CoBa: Gong et al.,
EMNLP 2024, arXiv 2410.06741.)

Three real code tasks, deliberately imbalanced [D] (``--train-counts``; default 96 / 12 / 4, 24x):
``doc2func`` (docstring -> function) and ``func2doc`` (function -> docstring) mined from this
machine's Python standard library (``fedft.data.sft_sets.stdlib_code``), and ``unit_tests``
(HumanEval function -> its unit tests, ``humaneval_unit_tests``). Only examples whose whole chat
rendering fits ``--max-length`` tokens are used (nothing truncated); one example per stdlib
function and every function body and docstring used once, so no held-out item shares code with a
training item. Per task: ``--test-per-task`` held-out items (the metric) and ``--val-per-task``
validation items (only CoBa reads them). Data (seed 0, ``<out>/data.json``) and the untrained
model's per-task held-out loss (``<out>/initial.json``) are made once.

Cells (``<out>/cells/<mode>_seed<k>.json``, seeds 0, 1, 2 = LoRA initialisation and data order):
one epoch of LoRA SFT (r 16 / alpha 32 on q, v; AdamW lr 5e-4 constant; batches of 8 examples; bf16
where native) with the ``mftcoder`` loss plugin in mode ``token`` (the plain token mean), ``sample``,
``task`` (MFTCoder's default), ``focal`` or ``coba`` (warm-up ``--coba-warmup`` steps, window
``--coba-history`` steps, tau 5; observes the per-task validation loss every ``--coba-every``
steps). Every mode sees the same batches in the same order: equal steps and training tokens. A
step's 8 examples are packed into rows of ``--max-length`` (``fedft.data.sft.pack``; the loss is
the same as on the padded batch, tests/test_losses.py). Each cell measures the held-out loss of
each task (token mean over its responses), their worst and mean, and the worst ratio to the
untrained model's loss. ``bench`` cells (one per seed): over the epoch's batches the padding
fraction of padded (``pad_batch``) against packed rows, and tokens/s of ``--bench-steps`` training
steps in each layout (the same batches, after one untimed step of each).

Cost, measured (1 thread, bf16, another job on the machine's other core): ~135 trained tokens/s
packed, ~95 padded; a mode cell trains 14 steps (17,985 tokens) in 120-140 s and evaluates in ~12 s
(CoBa adds ~40 s of validation passes), ~2.5 min with model loading; a bench cell ~2.5 min. The 18
cells took 46 min with ``--jobs 1`` (above the 30-40 min aimed at; ``--train-counts
doc2func:64,func2doc:8,unit_tests:4`` would cut ~10 min).

    .venv/bin/python experiments/llm_mftcoder.py --threads 1              # resumable, then the report
    .venv/bin/python experiments/llm_mftcoder.py --report-only
    .venv/bin/python experiments/llm_mftcoder.py --cell coba 0            # one cell in this process
    .venv/bin/python experiments/llm_mftcoder.py --train-counts doc2func:8,func2doc:2,unit_tests:2 \\
        --test-per-task 2 --val-per-task 2 --bench-steps 1 --seeds 0 --out /tmp/mft_smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from study_cells import (
    ROOT,
    add_option_flags,
    finish_study,
    json_cache,
    lora_overrides,
    option_args,
    options_from,
    spawn_cells,
    study_parser,
    write_json,
)

RESULTS = ROOT / "experiments/results/lm/decoding/mftcoder"
MODES = ("token", "sample", "task", "focal", "coba")
CONDITIONS = (*MODES, "bench")
TASKS = ("doc2func", "func2doc", "unit_tests")
INDEX = {t: i for i, t in enumerate(sorted(TASKS))}  # task name -> id (sorted, as fedft's runs number them)
SEEDS = (0, 1, 2)
DATA_SEED = 0  # [D] the same items for every cell


@dataclass(frozen=True)
class Options:
    model: str = "smollm2-135m"
    train_counts: str = "doc2func:96,func2doc:12,unit_tests:4"  # [D] training examples per task (24x)
    test_per_task: int = 8  # [D] held-out items per task (the metric)
    val_per_task: int = 3  # [D] validation items per task (CoBa's signal only)
    max_length: int = 320  # [D] whole rendering of an example, in tokens (longer ones are not used)
    batch_size: int = 8  # [D] [code: 8] examples per step
    lr: float = 5e-4  # [D] LoRA r16 q,v, AdamW, constant; not tuned
    coba_warmup: int = 4  # [D] CoBa warm-up, steps (MFTCoder: 100 [code], of thousands of steps)
    coba_history: int = 8  # [D] CoBa window, steps (MFTCoder: 200 [code])
    coba_every: int = 2  # [D] CoBa observes the validation losses every this many steps (MFTCoder: 1)
    bench_steps: int = 3  # [D] timed training steps per layout in a bench cell
    threads: int = 0
    out: str = str(RESULTS)


OPTION_HELP = {
    "model": "causal LM (an offline asset name)", "train_counts": "training examples per task, task:n,...",
    "test_per_task": "held-out items per task", "val_per_task": "validation items per task (CoBa)",
    "max_length": "tokens of an example's whole rendering (longer ones are skipped)",
    "batch_size": "examples per training step", "lr": "AdamW learning rate (constant)",
    "coba_warmup": "CoBa warm-up in steps", "coba_history": "CoBa slope window in steps",
    "coba_every": "steps between CoBa's validation observations", "bench_steps": "timed steps per layout (bench)",
    "threads": "torch threads per process (0 = torch's default; 1 per cell with --jobs > 1)",
    "out": "output directory (cells, data, summary.csv)"}


def counts(opts: Options) -> dict[str, int]:
    out = {t: int(n) for t, _, n in (p.partition(":") for p in opts.train_counts.split(",") if p.strip())}
    if set(out) != set(TASKS):
        raise SystemExit(f"--train-counts must name {', '.join(TASKS)}; got {opts.train_counts!r}")
    return out


def cell_path(out: Path, condition: str, seed: int) -> Path:
    return out / "cells" / f"{condition}_seed{seed}.json"


def overrides(seed: int, opts: Options) -> list[str]:
    return lora_overrides(opts.model, "stdlib-code", seed, lr=opts.lr, batch_size=opts.batch_size, epochs=1,
                          max_length=opts.max_length, threads=opts.threads)


def build(cfg: Any) -> tuple[Any, Any]:
    """The task model (LoRA applied) and its tokenizer."""
    from fedft.model.build import build_model

    model, _, tok = build_model(cfg, num_labels=0)
    return model, tok


# --- data ----------------------------------------------------------------------------------------

def _fill(candidates: list[Any], tok: Any, opts: Options, n_train: int) -> dict[str, list[dict[str, str]]]:
    """Test, then validation, then training items from ``candidates`` (in order) that fit."""
    from fedft.data.sft import render

    want = {"test": opts.test_per_task, "val": opts.val_per_task, "train": n_train}
    out: dict[str, list[dict[str, str]]] = {k: [] for k in want}
    for ex in candidates:
        split = next((k for k in want if len(out[k]) < want[k]), None)
        if split is None:
            break
        prompt, response = render(ex, tok)
        if len(prompt) + len(response) <= opts.max_length:
            out[split].append({"prompt": ex.prompt, "response": ex.response, "task": ex.task, "group": ex.group})
    if any(len(out[k]) < want[k] for k in want):
        raise SystemExit(f"not enough {candidates[0].task} examples within {opts.max_length} tokens: "
                         f"{ {k: len(v) for k, v in out.items()} } of {want}")
    return out


def make_data(tok: Any, opts: Options) -> dict[str, Any]:
    """The items of every task and split (one example per stdlib function; bodies and docstrings
    used once), in a seeded order."""
    import numpy as np

    from fedft.assets import asset_dir
    from fedft.data.sft_sets import humaneval_unit_tests, stdlib_code

    rng = np.random.default_rng(DATA_SEED)
    examples, version = stdlib_code()
    by_key: dict[str, dict[str, Any]] = {}
    for e in examples:
        by_key.setdefault(e.group, {})[e.task] = e
    seen: set[str] = set()
    pools: dict[str, list[Any]] = {"doc2func": [], "func2doc": []}
    for k, key in enumerate(rng.permutation(sorted(by_key)).tolist()):
        pair = by_key[key]
        body, doc = pair["doc2func"].response, pair["func2doc"].response
        if body in seen or doc in seen:
            continue
        seen |= {body, doc}
        pools["doc2func" if k % 2 == 0 else "func2doc"].append(pair["doc2func" if k % 2 == 0 else "func2doc"])
    he = humaneval_unit_tests(asset_dir("humaneval"))
    pools["unit_tests"] = [he[int(i)] for i in rng.permutation(len(he))]
    n = counts(opts)
    return {"key": data_key(opts), "python": version,
            "tasks": {t: _fill(pools[t], tok, opts, n[t]) for t in TASKS}}


def data_key(opts: Options) -> dict[str, Any]:
    return {"seed": DATA_SEED, "model": opts.model, "train_counts": counts(opts), "test": opts.test_per_task,
            "val": opts.val_per_task, "max_length": opts.max_length}


def items_of(data: dict[str, Any], split: str, tok: Any, max_length: int) -> list[Any]:
    from fedft.data.sft import SFTExample, tokenize

    return [tokenize(SFTExample(**d), tok, max_length) for t in TASKS for d in data["tasks"][t][split]]


# --- training and evaluation ---------------------------------------------------------------------

def task_losses(model: Any, items: list[Any], pad_id: int, opts: Options) -> dict[str, float]:
    """Each task's loss on ``items``: the token mean over its responses (packed batches)."""
    import torch

    from fedft.data.sft import pack
    from fedft.losses.mftcoder import sample_stats
    from fedft.losses.wiring import packed_logits
    from fedft.precision import weight_cast_cache

    names = {i: t for t, i in INDEX.items()}
    nll: dict[str, float] = {}
    tokens: dict[str, float] = {}
    was = model.training
    model.eval()
    with torch.no_grad(), weight_cast_cache(model):
        for i in range(0, len(items), opts.batch_size):
            b = pack(items[i: i + opts.batch_size], opts.max_length, pad_id, INDEX)
            s = sample_stats(packed_logits(model, b), b["labels"], b["task_ids"], b["segment_ids"])
            for t, x, k in zip(s.tasks.tolist(), s.nll.tolist(), s.tokens.tolist(), strict=True):
                nll[names[t]], tokens[names[t]] = nll.get(names[t], 0.0) + x, tokens.get(names[t], 0.0) + k
    model.train(was)
    return {t: nll[t] / tokens[t] for t in sorted(nll)}


def batches(items: list[Any], seed: int, batch_size: int) -> list[list[Any]]:
    """The epoch's batches: a seeded order (the same for every mode of a seed)."""
    import numpy as np

    order = np.random.default_rng([seed, 1]).permutation(len(items))
    return [[items[int(i)] for i in order[k: k + batch_size]] for k in range(0, len(order), batch_size)]


def train(model: Any, cfg: Any, loss: Any, steps: list[list[Any]], val: list[Any], pad_id: int,
          opts: Options) -> dict[str, Any]:
    """One epoch of packed training steps with the plugin ``loss``; CoBa observes the validation
    losses at step 0 and every ``coba_every`` steps."""
    from fedft.data.sft import pack
    from fedft.losses.wiring import packed_logits
    from fedft.train import make_optimizer

    opt = make_optimizer(model, cfg.train)
    rec: dict[str, Any] = {"train_losses": [], "observed": [], "train_tokens": 0, "train_positions": 0,
                           "observe_s": 0.0}

    def observe(step: int) -> None:
        t0 = time.perf_counter()
        losses = task_losses(model, val, pad_id, opts)
        loss.observe(step, {INDEX[t]: v for t, v in losses.items()})
        rec["observe_s"] += time.perf_counter() - t0
        rec["observed"].append({"step": step, "val_losses": losses, **loss.report()})

    model.train()
    t0 = time.perf_counter()
    for step, chunk in enumerate(steps):
        if loss.adaptive and step % opts.coba_every == 0:
            observe(step)
        b = pack(chunk, opts.max_length, pad_id, INDEX)
        value = loss(packed_logits(model, b), b)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        rec["train_losses"].append(float(value.detach()))
        rec["train_tokens"] += int((b["segment_ids"] > 0).sum())
        rec["train_positions"] += b["input_ids"].numel()
    if loss.adaptive:
        observe(len(steps))
    rec["train_s"] = time.perf_counter() - t0 - rec["observe_s"]
    rec["steps"] = len(steps)
    return rec


def run_cell(mode: str, seed: int, opts: Options) -> dict[str, Any]:
    import torch

    from fedft.config import ExperimentConfig
    from fedft.losses.mftcoder import MFTCoderLoss, MFTCoderOptions
    from fedft.train import seed_everything

    if opts.threads:
        torch.set_num_threads(opts.threads)
    cfg = ExperimentConfig.from_overrides(overrides(seed, opts))
    data, initial = prepare(opts)
    seed_everything(seed)
    model, tok = build(cfg)
    pad_id = tok.pad_token_id or 0
    loss = MFTCoderLoss(MFTCoderOptions(mode=mode, coba_warmup=opts.coba_warmup, coba_history=opts.coba_history))
    loss.bind_tasks(sorted(INDEX, key=INDEX.get))
    steps = batches(items_of(data, "train", tok, opts.max_length), seed, opts.batch_size)
    rec: dict[str, Any] = {"condition": mode, "seed": seed, "options": asdict(opts), "overrides": overrides(seed, opts),
                           **train(model, cfg, loss, steps, items_of(data, "val", tok, opts.max_length), pad_id, opts)}
    t0 = time.perf_counter()
    test = task_losses(model, items_of(data, "test", tok, opts.max_length), pad_id, opts)
    rec.update({f"test_loss_{t}": v for t, v in test.items()})
    rel = {t: test[t] / initial["test_losses"][t] for t in test}
    worst = max(test, key=test.get)
    rec.update(worst_task_loss=test[worst], worst_task=worst, mean_task_loss=sum(test.values()) / len(test),
               worst_relative=max(rel.values()), worst_relative_task=max(rel, key=rel.get),
               eval_s=time.perf_counter() - t0, final_weights=loss.report().get("weights"),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               torch_threads=torch.get_num_threads(), precision=str(model.compute_dtype).removeprefix("torch."))
    return rec


def padding_fraction(steps: list[list[Any]], max_length: int, pad_id: int) -> dict[str, float]:
    """Share of the batch positions that are padding, over every step: padded vs packed rows."""
    from fedft.data.sft import pack, pad_batch

    real = sum(len(it) for chunk in steps for it in chunk)
    padded = sum(pad_batch(chunk, pad_id)["input_ids"].numel() for chunk in steps)
    packed = sum(pack(chunk, max_length, pad_id)["input_ids"].numel() for chunk in steps)
    return {"pad_fraction_padded": 1 - real / padded, "pad_fraction_packed": 1 - real / packed,
            "positions_padded": padded, "positions_packed": packed, "real_tokens": real}


def bench_cell(seed: int, opts: Options) -> dict[str, Any]:
    """Padding fraction over the epoch's batches, and tokens/s of ``bench_steps`` training steps
    padded and packed (the same batches, after one untimed step of each; the task loss)."""
    import torch

    from fedft.config import ExperimentConfig
    from fedft.data.sft import pack, pad_batch
    from fedft.losses.mftcoder import MFTCoderLoss, MFTCoderOptions
    from fedft.losses.wiring import packed_logits
    from fedft.train import make_optimizer, seed_everything

    if opts.threads:
        torch.set_num_threads(opts.threads)
    cfg = ExperimentConfig.from_overrides(overrides(seed, opts))
    data, _ = prepare(opts)
    seed_everything(seed)
    model, tok = build(cfg)
    pad_id = tok.pad_token_id or 0
    steps = batches(items_of(data, "train", tok, opts.max_length), seed, opts.batch_size)
    rec: dict[str, Any] = {"condition": "bench", "seed": seed, "options": asdict(opts),
                           **padding_fraction(steps, opts.max_length, pad_id)}
    loss, opt = MFTCoderLoss(MFTCoderOptions(mode="task")), make_optimizer(model, cfg.train)
    timing: dict[str, list[float]] = {"padded": [], "packed": []}
    tokens = 0
    model.train()
    # the first batch untimed (warm-up) in both layouts, then the layouts alternate which goes first
    for k, chunk in enumerate(steps[: opts.bench_steps + 1]):
        tokens += sum(len(it) for it in chunk) if k else 0
        for layout in ("padded", "packed") if k % 2 else ("packed", "padded"):
            t0 = time.perf_counter()
            if layout == "padded":
                b = pad_batch(chunk, pad_id, INDEX)
                value = loss(model(b), b)
            else:
                b = pack(chunk, opts.max_length, pad_id, INDEX)
                value = loss(packed_logits(model, b), b)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if k:
                timing[layout].append(time.perf_counter() - t0)
    for layout, secs in timing.items():
        rec[f"step_s_{layout}"] = sum(secs) / len(secs)
        rec[f"tokens_per_s_{layout}"] = tokens / sum(secs)
    rec["speedup_packed"] = rec["tokens_per_s_packed"] / rec["tokens_per_s_padded"]
    rec["bench_steps"], rec["bench_tokens"] = len(timing["packed"]), tokens
    rec["loss_gap_first_batch"] = _layout_gap(model, steps[0], pad_id, opts)
    rec.update(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               torch_threads=torch.get_num_threads(), precision=str(model.compute_dtype).removeprefix("torch."))
    return rec


def _layout_gap(model: Any, chunk: list[Any], pad_id: int, opts: Options) -> float:
    """|task loss padded - task loss packed| of one batch (eval mode, no dropout): the two layouts
    compute the same loss up to float rounding in the compute dtype."""
    import torch

    from fedft.data.sft import pack, pad_batch
    from fedft.losses.mftcoder import MultiTaskLoss
    from fedft.losses.wiring import packed_logits

    model.eval()
    with torch.no_grad():
        a, b = pad_batch(chunk, pad_id, INDEX), pack(chunk, opts.max_length, pad_id, INDEX)
        gap = MultiTaskLoss("task")(model(a), a["labels"], a["task_ids"]) - MultiTaskLoss("task")(
            packed_logits(model, b), b["labels"], b["task_ids"], b["segment_ids"])
    model.train()
    return abs(float(gap))


# --- the study -----------------------------------------------------------------------------------

def _check(cached: dict[str, Any], key: dict[str, Any], path: Path) -> None:
    if cached.get("key") != key:
        raise SystemExit(f"{path} was made with {cached.get('key')}, not {key}: use another --out or delete it")


def prepare(opts: Options) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data and the untrained model's per-task held-out losses: made once, then read."""
    out = Path(opts.out)
    paths = out / "data.json", out / "initial.json"
    loaded: dict[str, Any] = {}

    def model_and_tok() -> tuple[Any, Any]:
        if not loaded:
            from fedft.config import ExperimentConfig

            loaded["m"] = build(ExperimentConfig.from_overrides(overrides(0, opts)))
        return loaded["m"]

    data = json_cache(paths[0], lambda: make_data(model_and_tok()[1], opts))
    _check(data, data_key(opts), paths[0])

    def initial() -> dict[str, Any]:
        model, tok = model_and_tok()
        t0 = time.perf_counter()
        losses = task_losses(model, items_of(data, "test", tok, opts.max_length), tok.pad_token_id or 0, opts)
        return {"key": data_key(opts), "test_losses": losses, "seconds": time.perf_counter() - t0}

    init = json_cache(paths[1], initial)
    _check(init, data_key(opts), paths[1])
    return data, init


def cells(conditions: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """bench cells first (short), then the modes, seed by seed."""
    return [(c, s) for c in conditions if c == "bench" for s in seeds] + \
        [(c, s) for s in seeds for c in conditions if c != "bench"]


def _parser() -> argparse.ArgumentParser:
    p = study_parser(__doc__, ("CONDITION", "SEED"), f"run one cell in this process (condition: {', '.join(CONDITIONS)})",
                     SEEDS, "seeds (0,1,2)", ("--conditions", CONDITIONS, "comma-separated conditions (default: all)"))
    add_option_flags(p, Options, OPTION_HELP)
    return p


def _one_cell(condition: str, seed: int, opts: Options) -> int:
    if condition not in CONDITIONS:
        raise SystemExit(f"unknown condition {condition!r}; valid: {', '.join(CONDITIONS)}")
    rec = bench_cell(seed, opts) if condition == "bench" else run_cell(condition, seed, opts)
    rec["command"] = " ".join([".venv/bin/python experiments/llm_mftcoder.py --cell", condition, str(seed),
                               *option_args(opts)])
    write_json(cell_path(Path(opts.out), condition, seed), rec)
    if condition == "bench":
        print(f"bench seed {seed}: padding {rec['pad_fraction_padded']:.3f} padded vs {rec['pad_fraction_packed']:.3f} "
              f"packed; {rec['tokens_per_s_padded']:.0f} vs {rec['tokens_per_s_packed']:.0f} tokens/s", flush=True)
    else:
        print(f"{condition} seed {seed}: worst task {rec['worst_task']} {rec['worst_task_loss']:.3f}, mean "
              f"{rec['mean_task_loss']:.3f}, {rec['train_s']:.0f} s training, {rec['eval_s']:.0f} s eval", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    if a.cell:
        return _one_cell(a.cell[0], int(a.cell[1]), opts)
    failed: list[str] = []
    if not a.report_only:
        conds = [c for c in a.conditions.split(",") if c]
        if unknown := sorted(set(conds) - set(CONDITIONS)):
            raise SystemExit(f"unknown conditions {', '.join(unknown)}; valid: {', '.join(CONDITIONS)}")
        todo = cells(conds, [int(s) for s in a.seeds.split(",")])
        failed = spawn_cells(str(Path(__file__).resolve()), opts, todo, a.force, a.jobs,
                             lambda c, s: cell_path(Path(opts.out), c, int(s)), prepare)
    from llm_mftcoder_report import write_report

    return finish_study(write_report, Path(opts.out), failed)


if __name__ == "__main__":
    raise SystemExit(main())
