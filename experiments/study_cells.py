"""What the cell-based studies share (peft_unit_tests.py, llm_data*.py, llm_*.py): atomic JSON
files, one training loop over an SFT split, the pool that runs each cell in its own subprocess,
and the command-line scaffolding of a study (``--cell``, ``--force``, ``--jobs``, ``--report-only``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` through a temporary file (a killed run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two processes may write the same file at once
    tmp.write_text(json.dumps(value, indent=1, default=str))
    tmp.replace(path)


def json_cache(path: Path, make: Callable[[], Any]) -> Any:
    """The JSON at ``path``, made (and written) by ``make()`` when absent."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    write_json(path, value)
    return value


def add_option_flags(parser: Any, options: type, helps: dict[str, str] | None = None) -> None:
    """One ``--name value`` flag per field of the ``options`` dataclass (its default as default)."""
    for f in fields(options):
        text = f"{(helps or {}).get(f.name, '')} (default {f.default})".lstrip()
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=text)


def options_from(args: Any, options: type) -> Any:
    """The ``options`` dataclass filled from parsed :func:`add_option_flags` flags."""
    return options(**{f.name: getattr(args, f.name) for f in fields(options)})


def option_args(opts: Any) -> list[str]:
    """A dataclass of options as ``--name value`` command-line arguments."""
    return [a for f in fields(opts) for a in (f"--{f.name.replace('_', '-')}", str(getattr(opts, f.name)))]


def train_split(model: Any, cfg: Any, split: Any, rng: Any, label: str) -> tuple[float, float, int]:
    """``cfg.train.epochs`` epochs over an SFT split: (last epoch's mean loss, seconds, steps)."""
    import numpy as np
    from tqdm import tqdm

    from fedft.train import make_optimizer, train_epoch

    opt = make_optimizer(model, cfg.train)
    idx, bs = np.arange(len(split)), cfg.train.batch_size
    loss, steps, t0 = float("nan"), 0, time.perf_counter()
    for epoch in range(cfg.train.epochs):
        batches = tqdm(split.batches(idx, bs, shuffle=True, rng=rng), total=math.ceil(len(idx) / bs),
                       desc=f"{label} train epoch {epoch + 1}", leave=False)
        loss, _ = train_epoch(model, split, idx, bs, opt, rng, batches=batches)
        steps += math.ceil(len(idx) / bs)
    return loss, time.perf_counter() - t0, steps


def run_cells(commands: list[tuple[str, list[str]]], jobs: int = 1, outputs: list[Path] | None = None) -> list[str]:
    """Run each (label, command) in its own process, ``jobs`` at a time; the labels that failed.

    With ``outputs`` (each command's result file), a cell is skipped at its turn when its file
    exists or another runner holds its ``.lock`` (created exclusively while it runs), so several
    runners can share one output directory."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def one(i: int) -> str | None:
        label, cmd = commands[i]
        if outputs is None:
            return None if subprocess.run(cmd, cwd=ROOT).returncode == 0 else label
        out, lock = outputs[i], outputs[i].with_suffix(".lock")
        if out.exists():
            return None
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return None  # another runner has it
        try:
            return None if subprocess.run(cmd, cwd=ROOT).returncode == 0 else label
        finally:
            lock.unlink(missing_ok=True)

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        results = list(tqdm(pool.map(one, range(len(commands))), total=len(commands), desc="cells"))
    return [r for r in results if r is not None]


def load_cells(folder: Path, lift: Callable[[dict[str, Any]], None] | None = None,
                pattern: str = "*_seed*.json") -> dict[str, list[dict[str, Any]]]:
    """The cell records under ``folder`` by their ``condition``, each list sorted by seed;
    ``lift(rec)`` may add derived keys to each record first."""
    by: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob(pattern)):
        rec = json.loads(path.read_text())
        if lift is not None:
            lift(rec)
        by.setdefault(rec["condition"], []).append(rec)
    for recs in by.values():
        recs.sort(key=lambda r: r["seed"])
    return by


def interval(xs: list[float | None]) -> tuple[int, float, float, float]:
    """(n, mean, low, high): the 95 % t-interval over the values (nan bounds for n < 2)."""
    from scipy.stats import t

    v = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    if not v:
        return 0, math.nan, math.nan, math.nan
    mean = sum(v) / len(v)
    if len(v) < 2:
        return len(v), mean, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    half = float(t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))
    return len(v), mean, mean - half, mean + half


def fmt_interval(iv: tuple[int, float, float, float], f: str) -> str:
    n, mean, lo, hi = iv
    if n == 0:
        return "—"
    return f"{mean:{f}}" if math.isnan(lo) else f"{mean:{f}} [{lo:{f}}, {hi:{f}}]"


def lora_overrides(model: str, data: str, seed: int, *, lr: float, batch_size: int, epochs: int, max_length: int,
                   threads: int) -> list[str]:
    """The config overrides the SmolLM2 studies share: a central run of ``model`` as a causal LM
    with LoRA r 16 / alpha 32 / dropout 0.05 on q, v, AdamW at a constant ``lr``, bf16 where native."""
    return [f"model.name={model}", "model.task=causal_lm", f"data.name={data}", f"data.max_length={max_length}",
            "data.train_size=0", "data.val_size=0", "data.test_size=0", "federation.strategy=central",
            "method.name=lora", "method.lora.rank=16", "method.lora.alpha=32", "method.lora.dropout=0.05",
            "method.lora.targets=q,v", "train.optimizer=adamw", f"train.lr={lr}", "train.weight_decay=0.0",
            "train.schedule=constant", f"train.batch_size={batch_size}", f"train.eval_batch_size={batch_size}",
            f"train.epochs={epochs}", "train.precision=auto", f"train.threads={threads}", f"seed={seed}"]


def spawn_cells(script: str, opts: Any, todo: list[tuple[Any, ...]], force: bool, jobs: int,
                path_of: Callable[..., Path] | None, prepare: Callable[[Any], Any] | None = None) -> list[str]:
    """Run ``script --cell *cell`` for every cell of ``todo`` without a result (all with ``force``),
    each in its own process, ``jobs`` at a time; the labels of the cells that failed.

    ``prepare(opts)`` runs first, once, in this process (the data every cell reads). With ``jobs``
    > 1 and no ``threads`` set, each cell gets 1 torch thread: two spinning thread pools on 2
    shared cores crawl. ``path_of(*cell)`` is a cell's result file (None: no skipping, no locks)."""
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    if prepare is not None:
        t0 = time.perf_counter()
        prepare(opts)
        print(f"data ready in {time.perf_counter() - t0:.0f} s", flush=True)
    if jobs > 1 and not opts.threads:
        opts = replace(opts, threads=1)
    todo = [c for c in todo if force or path_of is None or not path_of(*c).is_file()]
    commands = [(" ".join(map(str, c)), [sys.executable, script, "--cell", *map(str, c), *option_args(opts)])
                for c in todo]
    outputs = None if force or path_of is None else [path_of(*c) for c in todo]
    return run_cells(commands, jobs, outputs)


def study_parser(doc: str, cell: tuple[str, ...] | str, cell_help: str, seeds: list[int], seeds_help: str,
                 choices: tuple[str, list[str], str] | None = None) -> Any:
    """A study script's parser: description and epilog from its docstring, ``--cell`` (a tuple of
    metavars takes that many values; a string, one value), an optional list flag ``choices`` =
    (flag, default names, help), ``--seeds`` and the shared study flags."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if isinstance(cell, str):
        p.add_argument("--cell", metavar=cell, help=cell_help)
    else:
        p.add_argument("--cell", nargs=len(cell), metavar=cell if len(cell) > 1 else cell[0], help=cell_help)
    if choices is not None:
        p.add_argument(choices[0], default=",".join(choices[1]), help=choices[2])
    p.add_argument("--seeds", default=",".join(map(str, seeds)), help=seeds_help)
    add_study_flags(p)
    return p


def add_study_flags(parser: Any) -> None:
    """The flags every study shares: --force, --jobs, --report-only."""
    parser.add_argument("--force", action="store_true", help="rerun cells whose JSON exists")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process (default 1)")
    parser.add_argument("--report-only", action="store_true", help="only write the report from existing JSONs")


def save_report(report: Path, lines: list[str], out: Path, summary: Callable[[Path], Any] | None) -> Path:
    """Write a study's report; with ``summary``, also ``out/summary.csv`` through it."""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    if summary is not None:
        out.mkdir(parents=True, exist_ok=True)
        summary(out)
        print(f"wrote {report} and {out / 'summary.csv'}")
    return report


def finish_study(write_report: Callable[[Path], Any], out: Path, failed: list[str]) -> int:
    """Write the report from the cells on disk; exit status 1 when cells failed (listed)."""
    write_report(out)
    if failed:
        print(f"failed cells: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
