"""PEFT for unit-test generation: full fine-tuning vs LoRA vs (IA)3 vs prompt tuning of
SmolLM2-135M on HumanEval "function -> unit tests" (Storhaug & Li, "Parameter-Efficient
Fine-Tuning of Large Language Models for Unit Test Generation: An Empirical Study",
https://arxiv.org/abs/2411.02462).

Cells: ``base`` (no training; greedy decoding, so seed 0 only) and ``full_ft``, ``lora``,
``ia3``, ``prompt_tuning`` x seeds 0, 1, 2 (the seed sets the initialisation and the data order).
Each cell runs in a fresh subprocess of this script (``--cell METHOD SEED``), so its peak RSS is
its own, and writes ``<out>/<method>_seed<k>.json``; a cell whose JSON exists is skipped unless
``--force``. Training: the fixed ``humaneval-tests`` train split; evaluation: its test split
(generated tests, cleaned and run in the sandbox against the canonical solution and 5 mutants
per problem, fixed in ``<out>/mutants.json``); forgetting: the response loss on 32 fixed
held-out ``stdlib-code`` doc2func examples (``<out>/forgetting.json``). Then the report: a
table per metric (mean and 95 % t-interval over seeds) and a verdict per paper claim, computed
by the rules in ``verdicts`` (``<out>/summary.csv``, experiments/reports/llm_peft_unit_tests.md).

Threads: ``--jobs 2`` runs two cells at once with one torch thread each (the committed study's
setting on 2 cores). On a machine shared with another job pass ``--threads 1``: torch's default
two threads spin-wait there (a LoRA step at batch 4 / 384 tokens took 57 s with two, 14 s with one).

    .venv/bin/python experiments/peft_unit_tests.py --jobs 2        # every cell (resumable) + report
    .venv/bin/python experiments/peft_unit_tests.py --report-only
    .venv/bin/python experiments/peft_unit_tests.py --cell lora 0 --limit-train 8 --limit-test 4 \\
        --max-new-tokens 32 --out /tmp/put                          # a smoke run of one cell
"""

from __future__ import annotations

import argparse
import json
import math
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
    add_study_flags,
    json_cache,
    option_args,
    options_from,
    spawn_cells,
    train_split,
    write_json,
)

RESULTS = ROOT / "experiments/results/lm/peft_unit_tests"
REPORT = ROOT / "experiments/reports/llm_peft_unit_tests.md"
METHODS = ("base", "full_ft", "lora", "ia3", "prompt_tuning")
PEFT = ("lora", "ia3", "prompt_tuning")
SEEDS = (0, 1, 2)
# [D] learning rates: common values for each method at this model size, NOT tuned here (AdamW,
# constant rate, no warm-up)
LR = {"full_ft": 5e-5, "lora": 1e-3, "ia3": 3e-3, "prompt_tuning": 3e-2}
METHOD_SETTINGS = {
    "base": ["method.name=full_ft"],  # built like full_ft, never trained
    "full_ft": ["method.name=full_ft"],
    # [paper] r = 16 on the query and value projections; [D] alpha 32, dropout 0.05
    "lora": ["method.name=lora", "method.lora.rank=16", "method.lora.alpha=32", "method.lora.dropout=0.05",
             "method.lora.targets=q,v"],
    "ia3": ["method.name=ia3", "method.ia3.targets=k,v,down"],  # [paper] keys, values, FFN down
    "prompt_tuning": ["method.name=prompt_tuning", "method.prompt_len=20"],  # [paper] 20 virtual tokens
}
N_MUTANTS, MUTANT_SEED = 5, 0  # [D] per test problem, of the entry-point function
FORGET_N, FORGET_SEED = 32, 0  # [D] stdlib-code test-split doc2func examples
MIN_RESPONSE = 64  # [D] tokens: a prompt longer than max_length - this is cut by fedft's tokenize


@dataclass(frozen=True)
class Options:
    """Sizes of a cell (all passed on to the cell subprocesses)."""

    model: str = "smollm2-135m"
    epochs: int = 1  # [D]
    batch_size: int = 4  # [D]
    max_length: int = 320  # [D] training / scoring tokens per example
    max_new_tokens: int = 128  # [D] generated tokens per problem (greedy)
    gen_batch: int = 8  # [D] prompts per generation batch
    limit_train: int = 0  # 0 = the whole train split
    limit_test: int = 0  # 0 = the whole test split
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    out: str = str(RESULTS)


@dataclass
class StudyData:
    train: list  # SFTExample (prompt = instruction + function, response = reference tests)
    test: list  # SFTExample, group = task id
    problems: dict[str, dict[str, Any]]  # task id -> HumanEval problem
    mutants: dict[str, list[dict[str, Any]]]  # task id -> [{kind, description, source, survived_reference}]
    forget: list  # SFTExample (stdlib doc2func)


def overrides(method: str, seed: int, opts: Options) -> list[str]:
    """The ExperimentConfig overrides of a cell (everything explicit)."""
    lr = LR.get(method, LR["full_ft"])
    return [f"model.name={opts.model}", "model.task=causal_lm", "data.name=humaneval-tests",
            f"data.max_length={opts.max_length}", "data.train_size=0", "data.val_size=0", "data.test_size=0",
            *METHOD_SETTINGS[method], "train.optimizer=adamw", f"train.lr={lr}", "train.weight_decay=0.0",
            "train.schedule=constant", f"train.batch_size={opts.batch_size}", f"train.eval_batch_size={opts.batch_size}",
            f"train.epochs={opts.epochs}", "train.precision=auto", f"train.threads={opts.threads}", f"seed={seed}"]


# ---- data: fixed splits, mutants and the forgetting sample (computed once per output dir) ----

def _mutants_for(problem: dict[str, Any]) -> list[dict[str, Any]]:
    from fedft.data.sft_sets import reference_tests, solution_source
    from fedft.mutation import mutants
    from fedft.testgen import screen_mutants

    ms = mutants(solution_source(problem), N_MUTANTS, MUTANT_SEED, function=problem["entry_point"])
    survived = set(screen_mutants([m.source for m in ms], reference_tests(problem)).survived_reference)
    return [{**asdict(m), "survived_reference": i in survived} for i, m in enumerate(ms)]


def prepare(opts: Options) -> StudyData:
    """The splits, and the mutants and forgetting sample stored under ``opts.out``."""
    import numpy as np

    from fedft.assets import asset_dir
    from fedft.config import DataConfig
    from fedft.data.datasets import load_raw
    from fedft.data.sft import SFTExample
    from fedft.data.sft_sets import load_humaneval

    raw = load_raw(DataConfig(name="humaneval-tests", train_size=0, val_size=0, test_size=0))
    train = raw.train_x[: opts.limit_train or None]
    test = raw.test_x[: opts.limit_test or None]
    problems = {p["task_id"]: p for p in load_humaneval(asset_dir("humaneval"))}
    out = Path(opts.out)
    stored = json_cache(out / "mutants.json", dict)
    missing = [ex.group for ex in test if ex.group not in stored]
    if missing:
        from tqdm import tqdm

        for tid in tqdm(missing, desc="mutants (screened by the reference tests)"):
            stored[tid] = _mutants_for(problems[tid])
        (out / "mutants.json").write_text(json.dumps(stored, indent=1))

    def forgetting() -> dict[str, Any]:
        s = load_raw(DataConfig(name="stdlib-code", train_size=0, val_size=0, test_size=0))
        pool = [e for e in s.test_x if e.task == "doc2func"]
        pick = np.sort(np.random.default_rng(FORGET_SEED).permutation(len(pool))[:FORGET_N])
        return {"python": sys.version.split()[0], "examples": [asdict(pool[i]) for i in pick]}

    forget = json_cache(out / "forgetting.json", forgetting)
    return StudyData(train, test, problems, stored, [SFTExample(**e) for e in forget["examples"]])


def fit(ex: Any, tok: Any, max_length: int) -> Any:
    """``ex`` with its reference tests cut at whole lines (keeping the final ``check(...)`` call)
    so that prompt + response fit ``max_length``. fedft's tokenize would instead cut the prompt from
    the left: at 384 tokens 71 of the 118 training examples are too long, and 35 of them would lose
    over half of their prompt, instruction and signature first."""
    from fedft.data.sft import render
    from fedft.testgen import shorten_tests

    prompt, response = render(ex, tok)
    room = max(max_length - len(prompt), MIN_RESPONSE)
    if len(response) <= room:
        return ex
    short = shorten_tests(ex.response, lambda text: len(render(replace(ex, response=text), tok)[1]) <= room)
    return ex if short is None else replace(ex, response=short)


# ---- one cell ----

def build(cfg: Any) -> tuple[Any, Any]:
    """The task model with the cell's method applied, and its tokenizer (tests replace this)."""
    from fedft.model.build import build_model

    model, _, tok = build_model(cfg, num_labels=0)
    return model, tok


def _split(examples: list, tok: Any, max_length: int) -> Any:
    import torch

    from fedft.data.sft import tokenize
    from fedft.data.sft_data import SFTSplit

    items = [tokenize(fit(ex, tok, max_length), tok, max_length) for ex in examples]
    return SFTSplit(items, torch.zeros(len(items), dtype=torch.long), tok.pad_token_id or 0)


def generate_tests(model: Any, tok: Any, examples: list, opts: Options) -> tuple[list[str], int]:
    """Greedy completions of the prompts (batched by prompt length) and the new-token count."""
    from tqdm import tqdm

    from fedft.generation import GenerationConfig, chat_prompt_ids, generate

    prompts = [chat_prompt_ids(tok, ex.prompt) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    tokens, cfg = 0, GenerationConfig(max_new_tokens=opts.max_new_tokens)
    for at in tqdm(range(0, len(order), opts.gen_batch), desc="generate", leave=False):
        rows = order[at: at + opts.gen_batch]
        gen = generate(model, tok, [prompts[i] for i in rows], cfg)
        for i, text, ids in zip(rows, gen.texts, gen.token_ids, strict=True):
            texts[i], tokens = text, tokens + len(ids)
    return texts, tokens


def score(completions: list[str], data: StudyData) -> tuple[list[dict[str, Any]], list[float]]:
    """Per problem: cleaned tests run on the solution and the screened mutants; sentence BLEU."""
    from tqdm import tqdm

    from fedft.data.sft_sets import reference_tests, solution_source
    from fedft.judges import bleu
    from fedft.testgen import body_of, clean_tests, parses, score_tests, strip_fences

    rows, bleus = [], []
    for ex, text in tqdm(list(zip(data.test, completions, strict=True)), desc="sandbox", leave=False):
        p = data.problems[ex.group]
        kept = [m["source"] for m in data.mutants[ex.group] if not m["survived_reference"]]
        tests = clean_tests(text, p["entry_point"])
        s = score_tests(tests, solution_source(p), kept)
        bleus.append(bleu([body_of(tests)], [body_of(reference_tests(p))]))
        raw = strip_fences(text).strip()
        rows.append({"task_id": ex.group, "valid": s.valid, "passes": s.passes, "killed": s.killed,
                     "mutants": s.mutants, "survived_reference": len(data.mutants[ex.group]) - len(kept),
                     "parses_as_generated": bool(raw) and parses(raw),
                     "bleu": bleus[-1]})
    return rows, bleus


def _forgetting(model: Any, tok: Any, examples: list, max_length: int, bs: int) -> float:
    """Mean negative log-likelihood per response token (nats)."""
    from fedft.data.sft import tokenize
    from fedft.scoring import sequence_loglik

    scores = sequence_loglik(model, [tokenize(ex, tok, max_length) for ex in examples], tok.pad_token_id or 0, bs)
    return -sum(s.total for s in scores) / max(sum(s.tokens for s in scores), 1)


def run_cell(method: str, seed: int, opts: Options, data: StudyData) -> dict[str, Any]:
    """Train (unless ``base``) and evaluate one cell; the record written to its JSON."""
    import torch

    from fedft.config import ExperimentConfig
    from fedft.train import evaluate, seed_everything

    cfg = ExperimentConfig.from_overrides(overrides(method, seed, opts))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    rng = seed_everything(seed)
    model, tok = build(cfg)
    trainable = 0 if method == "base" else sum(p.numel() for p in model.parameters() if p.requires_grad)
    rec: dict[str, Any] = {"method": method, "seed": seed, "trainable_params": trainable,
                           "total_params": sum(p.numel() for p in model.parameters()),
                           "train_examples": len(data.train), "test_problems": len(data.test)}
    train_loss, train_s, steps = None, 0.0, 0
    if method != "base":
        train_loss, train_s, steps = train_split(model, cfg, _split(data.train, tok, opts.max_length), rng,
                                            f"{method} seed {seed}")
    t0 = time.perf_counter()
    test_loss = evaluate(model, _split(data.test, tok, opts.max_length), opts.batch_size).loss
    stdlib_loss = _forgetting(model, tok, data.forget, opts.max_length, opts.batch_size)
    t1 = time.perf_counter()
    completions, gen_tokens = generate_tests(model, tok, data.test, opts)
    t2 = time.perf_counter()
    rows, bleus = score(completions, data)
    t3 = time.perf_counter()
    scored = [r for r in rows if r["passes"] and r["mutants"]]
    n = max(len(rows), 1)
    rec.update({
        "train_loss": train_loss, "train_s": train_s, "train_steps": steps, "s_per_step": train_s / steps if steps else None,
        "eval_s": t3 - t0, "loss_eval_s": t1 - t0, "gen_s": t2 - t1, "gen_tokens": gen_tokens,
        "gen_tok_s": gen_tokens / (t2 - t1), "sandbox_s_per_problem": (t3 - t2) / n,
        "test_loss": test_loss, "stdlib_loss": stdlib_loss, "stdlib_ppl": math.exp(stdlib_loss),
        "validity": sum(r["valid"] for r in rows) / n, "parse_rate": sum(r["parses_as_generated"] for r in rows) / n,
        "pass_rate": sum(r["passes"] for r in rows) / n,
        "mutation_score": (sum(r["killed"] for r in scored) / sum(r["mutants"] for r in scored)) if scored else None,
        "mutation_problems": len(scored), "bleu": sum(bleus) / n,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "python": sys.version.split()[0], "torch_threads": torch.get_num_threads(),
        "precision": str(model.compute_dtype).removeprefix("torch."), "options": asdict(opts),
        "overrides": overrides(method, seed, opts), "rows": rows,
        "samples": [{"task_id": ex.group, "completion": c} for ex, c in zip(data.test[:3], completions, strict=False)],
    })
    return rec


# ---- the study ----

def cell_path(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}_seed{seed}.json"


def cells(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    return [(m, s) for m in methods for s in (seeds if m != "base" else [0])]


def run_study(opts: Options, todo: list[tuple[str, int]], force: bool, jobs: int = 1) -> list[str]:
    """Every cell without a JSON (all with ``force``), each in its own process, ``jobs`` at a time
    (each with ``threads`` torch threads, 1 when unset and jobs > 1); failures listed."""
    return spawn_cells(str(Path(__file__).resolve()), opts, todo, force, jobs,
                       lambda m, s: cell_path(Path(opts.out), m, s), prepare)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cell", nargs=2, metavar=("METHOD", "SEED"), help="run one cell in this process")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated cells to run (default: all)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds of the trained cells (0,1,2)")
    add_study_flags(p)
    p.add_argument("--report", type=Path, help="report path (default: experiments/reports/"
                   "llm_peft_unit_tests.md for the default --out, else <out>/report.md)")
    add_option_flags(p, Options)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    out = Path(opts.out)
    if a.cell:
        method, seed = a.cell[0], int(a.cell[1])
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        rec = run_cell(method, seed, opts, prepare(opts))
        path = cell_path(out, method, seed)
        rec["command"] = " ".join([".venv/bin/python experiments/peft_unit_tests.py", "--cell", method, str(seed),
                                   *option_args(opts)])
        write_json(path, rec)
        print(f"wrote {path}: pass rate {rec['pass_rate']:.3f}, {rec['train_s']:.0f} s training, "
              f"{rec['eval_s']:.0f} s evaluation")
        return 0
    failed = [] if a.report_only else run_study(
        opts, cells(a.methods.split(","), [int(s) for s in a.seeds.split(",")]), a.force, a.jobs)
    from peft_unit_tests_report import write_report

    report = a.report or (REPORT if out.resolve() == RESULTS.resolve() else out / "report.md")
    write_report(out, report)
    print(f"wrote {report} and {out / 'summary.csv'}" + (f"; failed cells: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
