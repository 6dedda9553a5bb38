"""Data recipes on SmolLM2-135M-Instruct: GRAPE and S3FT against their controls (specs: GRAPE,
Zhang et al. arXiv 2502.04194; S3FT, Gupta et al. arXiv 2502.08130).

Studies (cells = condition x seed 0, 1, 2; ``base`` = the untrained model, seed 0 only):

- ``grape``: arithmetic word problems (``arith-candidates``: reasoning, terse and "strong
  teacher" verbose answers per problem, plus the model's own sampled answers that the numeric
  judge accepts). One answer per problem is kept by ``grape`` (highest length-normalised
  log-likelihood under the model), ``random``, ``strongest`` (always verbose) or ``longest``;
  LoRA SFT on it; held-out accuracy (greedy, numeric judge) and held-out loss on every style.
- ``s3ft``: the same problems with reasoning-style gold answers (``arith``). ``sft`` trains on
  the gold; ``s3ft`` on the model's own correct answers, else its judged paraphrase of the gold,
  else the gold. In-domain accuracy and forgetting: chatterbot response loss, trivia F1, and the
  KL divergence to the starting model on BBC News text.

What does not depend on the seed is computed once per output directory with the starting
model (``prepare``): the candidate pool with its own samples and scores (``grape_pool.json``),
the S3FT targets (``s3ft_targets.json``) and the evaluation sets (``eval_sets.json``). Each cell
runs in its own subprocess and writes ``<out>/<study>/<condition>_seed<k>.json``; existing cells
are skipped unless ``--force``. Then ``llm_data_report.py`` writes experiments/reports/llm_data.md.

    .venv/bin/python experiments/llm_data.py --study grape --jobs 2     # resumable
    .venv/bin/python experiments/llm_data.py --study s3ft --jobs 2
    .venv/bin/python experiments/llm_data.py --cell grape grape 0 --limit-train 16 --limit-test 8 --out /tmp/ld
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
    add_study_flags,
    finish_study,
    json_cache,
    lora_overrides,
    option_args,
    options_from,
    spawn_cells,
    train_split,
    write_json,
)

RESULTS = ROOT / "experiments/results/lm/data_recipes"
STUDIES = {"grape": ("base", "grape", "random", "strongest", "longest"), "s3ft": ("base", "sft", "s3ft")}
SELECTION = {"grape": "grape", "random": "random", "strongest": "source", "longest": "longest"}
STRONGEST = "verbose"  # the "strong teacher" source
SEEDS = (0, 1, 2)
EVAL_SIZES = {"chatterbot": 64, "bbc": 24, "bbc_tokens": 128}  # [D]


@dataclass(frozen=True)
class Options:
    model: str = "smollm2-135m"
    epochs: int = 1  # [D]
    batch_size: int = 8  # [D]
    lr: float = 5e-4  # [D] LoRA r16 q,v, AdamW, constant; not tuned
    max_length: int = 256  # [D]
    max_new_tokens: int = 128  # [D] the longest (verbose) answers are about 90 tokens
    gen_batch: int = 16  # [D]
    own_samples: int = 1  # [D] the model's own samples per problem in the GRAPE pool (temperature 0.7)
    limit_train: int = 300  # [D] training problems (a fixed random subset; 0 = all 470)
    limit_test: int = 100  # [D] test problems (the first; 0 = all 130)
    threads: int = 0
    out: str = str(RESULTS)


def overrides(study: str, condition: str, seed: int, opts: Options) -> list[str]:
    data = "arith-candidates" if study == "grape" else "arith"
    return lora_overrides(opts.model, data, seed, lr=opts.lr, batch_size=opts.batch_size, epochs=opts.epochs,
                          max_length=opts.max_length, threads=opts.threads)


def _examples(rows: list[dict[str, Any]]) -> list:
    from fedft.data.sft import SFTExample

    return [SFTExample(**{k: r[k] for k in ("prompt", "response", "task", "group")}) for r in rows]


def _splits(study: str, opts: Options) -> tuple[list, list]:
    from fedft.config import DataConfig
    from fedft.data.datasets import load_raw

    raw = load_raw(DataConfig(name="arith-candidates" if study == "grape" else "arith", train_size=0, val_size=0,
                              test_size=0))
    train, test = list(raw.train_x), list(raw.test_x)
    if opts.limit_train:  # a fixed random subset of the problems (every candidate of each)
        import numpy as np

        prompts = sorted({e.prompt for e in train})
        keep = {prompts[int(i)] for i in np.random.default_rng(0).permutation(len(prompts))[: opts.limit_train]}
        train = [e for e in train if e.prompt in keep]
    return train, test


def build(cfg: Any) -> tuple[Any, Any]:
    """The task model (LoRA applied) and its tokenizer (tests replace this)."""
    from fedft.model.build import build_model

    model, _, tok = build_model(cfg, num_labels=0)
    return model, tok


def _ctx(model: Any, tok: Any, opts: Options, seed: int = 0) -> Any:
    from fedft.recipes import RecipeContext

    return RecipeContext(model, tok, opts.max_length, None, seed, opts.gen_batch)


def prepare_grape(opts: Options) -> dict[str, Any]:
    """The candidate pool (dataset styles + the model's judged own samples) scored by the model."""
    from fedft.config import ExperimentConfig
    from fedft.data.sft import tokenize
    from fedft.recipes.grape import GrapeOptions, own_samples
    from fedft.scoring import sequence_loglik

    model, tok = build(ExperimentConfig.from_overrides(overrides("grape", "grape", 0, opts)))
    train, _ = _splits("grape", opts)
    ctx = _ctx(model.eval(), tok, opts)
    own, drawn = own_samples(train, ctx, GrapeOptions(self_samples=opts.own_samples, max_new_tokens=opts.max_new_tokens))
    pool = [*train, *own]
    scores = sequence_loglik(model, [tokenize(e, tok, opts.max_length) for e in pool], ctx.pad_id, opts.batch_size)
    return {"own_drawn": drawn, "own_kept": len(own),
            "pool": [{**asdict(e), "total": s.total, "tokens": s.tokens} for e, s in zip(pool, scores, strict=True)]}


def prepare_s3ft(opts: Options) -> dict[str, Any]:
    """The S3FT targets of the training problems, built once with the starting model."""
    from fedft.config import ExperimentConfig
    from fedft.recipes.s3ft import S3FTOptions, S3FTRecipe

    model, tok = build(ExperimentConfig.from_overrides(overrides("s3ft", "s3ft", 0, opts)))
    train, _ = _splits("s3ft", opts)
    t0 = time.perf_counter()
    result = S3FTRecipe(S3FTOptions(max_new_tokens=opts.max_new_tokens)).build(train, _ctx(model.eval(), tok, opts))
    return {"report": result.report, "seconds": time.perf_counter() - t0,
            "examples": [asdict(e) for e in result.examples]}


def eval_sets(opts: Options) -> dict[str, Any]:
    """Fixed forgetting probes: chatterbot test pairs, trivia test questions, BBC News openings."""
    import numpy as np

    from fedft.assets import asset_dir
    from fedft.config import DataConfig
    from fedft.data.datasets import load_raw
    from fedft.data.sources import load_bbc_news

    chat = load_raw(DataConfig(name="chatterbot-sft", train_size=0, val_size=0, test_size=0)).test_x
    pick = np.sort(np.random.default_rng(0).permutation(len(chat))[: EVAL_SIZES["chatterbot"]])
    trivia = load_raw(DataConfig(name="trivia", train_size=0, val_size=0, test_size=0)).test_x
    texts, _, _ = load_bbc_news(asset_dir("bbc-news"))
    bbc = [texts[int(i)] for i in np.sort(np.random.default_rng(1).permutation(len(texts))[: EVAL_SIZES["bbc"]])]
    return {"chatterbot": [asdict(chat[int(i)]) for i in pick], "trivia": [asdict(e) for e in trivia], "bbc": bbc}


def prepare(study: str, opts: Options) -> dict[str, Any]:
    out = Path(opts.out)
    data = {"eval": json_cache(out / "eval_sets.json", lambda: eval_sets(opts))}
    if study == "grape":
        data["pool"] = json_cache(out / "grape_pool.json", lambda: prepare_grape(opts))
    else:
        data["targets"] = json_cache(out / "s3ft_targets.json", lambda: prepare_s3ft(opts))
    return data


def training_set(study: str, condition: str, seed: int, data: dict[str, Any], opts: Options) -> tuple[list, dict]:
    """The cell's training examples and what chose them."""
    from collections import Counter

    from fedft.recipes.grape import GrapeOptions, choose

    if condition == "base":
        return [], {}
    if study == "s3ft":
        if condition == "s3ft":
            return _examples(data["targets"]["examples"]), dict(data["targets"]["report"])
        gold = _splits("s3ft", opts)[0]
        return gold, {"gold": len(gold)}
    rows = data["pool"]["pool"]
    pool = _examples(rows)
    keep = choose(pool, [r["total"] / max(r["tokens"], 1) for r in rows],
                  GrapeOptions(selection=SELECTION[condition], source=STRONGEST), seed)
    tokens = sum(rows[i]["tokens"] for i in keep)
    return [pool[i] for i in keep], {"chosen_sources": dict(Counter(pool[i].group for i in keep)),
                                     "initial_loss": -sum(rows[i]["total"] for i in keep) / tokens}


def _loss(model: Any, tok: Any, examples: list, opts: Options) -> float:
    from fedft.data.sft import tokenize
    from fedft.scoring import sequence_loglik

    s = sequence_loglik(model, [tokenize(e, tok, opts.max_length) for e in examples], tok.pad_token_id or 0,
                        opts.batch_size)
    return -sum(x.total for x in s) / max(sum(x.tokens for x in s), 1)


def _answers(model: Any, tok: Any, examples: list, opts: Options, max_new: int) -> list[str]:
    from fedft.data.sft import chat_prompt_ids
    from fedft.generation import GenerationConfig, generate_batched

    ids = [chat_prompt_ids(tok, e.prompt) for e in examples]
    eos = tok.eos_token_id
    gen = GenerationConfig(max_new_tokens=max_new, eos_token_ids=() if eos is None else (int(eos),))
    return generate_batched(model, tok, ids, gen, opts.gen_batch, desc="generate")


def in_domain(model: Any, tok: Any, study: str, test: list, opts: Options) -> dict[str, Any]:
    """Held-out accuracy (numeric judge) and response loss, per style for the candidate set."""
    from fedft.judges import NumericJudge

    problems = list({e.prompt: e for e in test}.values())
    texts = _answers(model, tok, problems, opts, opts.max_new_tokens)
    ok = NumericJudge().judge([e.prompt for e in problems], texts, [e.response for e in problems])
    rec = {"accuracy": sum(v == 1 for v in ok) / len(problems), "test_problems": len(problems),
           "answer_chars": sum(map(len, texts)) / len(texts), "test_loss": _loss(model, tok, test, opts),
           "samples": [{"prompt": e.prompt, "completion": t, "correct": int(v == 1)}
                       for e, t, v in list(zip(problems, texts, ok, strict=True))[:4]]}
    if study == "grape":
        for style in sorted({e.group for e in test}):
            rec[f"test_loss_{style}"] = _loss(model, tok, [e for e in test if e.group == style], opts)
    return rec


def forgetting(model: Any, tok: Any, cfg: Any, ev: dict[str, Any], opts: Options) -> dict[str, Any]:
    """Chatterbot response loss, trivia token F1 / exact match, KL(start || tuned) on BBC text."""
    from dataclasses import replace as dc_replace

    from fedft.config import MethodConfig
    from fedft.data.sft import TokenizedExample
    from fedft.judges import exact_match, token_f1
    from fedft.scoring import kl_divergence

    trivia = _examples(ev["trivia"])
    texts = _answers(model, tok, trivia, opts, 24)
    base, _ = build(cfg.replace(method=dc_replace(MethodConfig(), name="full_ft")))
    items = []
    for text in ev["bbc"]:
        ids = tok(text, add_special_tokens=False)["input_ids"][: EVAL_SIZES["bbc_tokens"]]
        items.append(TokenizedExample(ids, [-100, *ids[1:]]))
    return {"chatterbot_loss": _loss(model, tok, _examples(ev["chatterbot"]), opts),
            "trivia_f1": sum(token_f1(t, e.response) for t, e in zip(texts, trivia, strict=True)) / len(trivia),
            "trivia_em": sum(exact_match(t, e.response) for t, e in zip(texts, trivia, strict=True)) / len(trivia),
            "kl_start_to_tuned_bbc": kl_divergence(base.eval(), model, items, tok.pad_token_id or 0, opts.batch_size)}


def run_cell(study: str, condition: str, seed: int, opts: Options) -> dict[str, Any]:
    """Train (unless ``base``) and evaluate one cell; the record written to its JSON."""
    import torch

    from fedft.config import ExperimentConfig
    from fedft.data.sft_data import encode_sft
    from fedft.train import seed_everything

    cfg = ExperimentConfig.from_overrides(overrides(study, condition, seed, opts))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    data = prepare(study, opts)
    rng = seed_everything(seed)
    model, tok = build(cfg)
    train, chose = training_set(study, condition, seed, data, opts)
    rec: dict[str, Any] = {"study": study, "condition": condition, "seed": seed, "train_examples": len(train),
                           "selection": chose, "overrides": overrides(study, condition, seed, opts), "options": asdict(opts)}
    rec["train_loss"], rec["train_s"], rec["train_steps"] = None, 0.0, 0
    if train:
        split = encode_sft(train, torch.zeros(len(train), dtype=torch.long), tok, opts.max_length)
        rec["train_loss"], rec["train_s"], rec["train_steps"] = train_split(model, cfg, split, rng, f"{condition} seed {seed}")
    t0 = time.perf_counter()
    model.eval()
    rec.update(in_domain(model, tok, study, _splits(study, opts)[1][: opts.limit_test * (3 if study == "grape" else 1) or None], opts))
    if study == "s3ft":
        rec.update(forgetting(model, tok, cfg, data["eval"], opts))
    rec.update({"eval_s": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "torch_threads": torch.get_num_threads(), "precision": str(model.compute_dtype).removeprefix("torch.")})
    return rec


def cell_path(out: Path, study: str, condition: str, seed: int) -> Path:
    return out / study / f"{condition}_seed{seed}.json"


def cells(study: str, conditions: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    return [(study, c, s) for c in conditions for s in (seeds if c != "base" else [0])]


def run_study(opts: Options, todo: list[tuple[str, str, int]], force: bool, jobs: int = 1) -> list[str]:
    """Every cell without a JSON (all with ``force``), each in its own process, ``jobs`` at a time
    (another runner on the same directory skips the cells this one holds)."""
    def prepare_all(o: Options) -> None:
        for study in sorted({t[0] for t in todo}):
            prepare(study, o)  # once, before any cell reads it

    return spawn_cells(str(Path(__file__).resolve()), opts, todo, force, jobs,
                       lambda st, c, s: cell_path(Path(opts.out), st, c, s), prepare_all)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--study", choices=sorted(STUDIES), help="run every cell of this study (resumable), then the report")
    p.add_argument("--cell", nargs=3, metavar=("STUDY", "CONDITION", "SEED"), help="run one cell in this process")
    p.add_argument("--conditions", help="comma-separated conditions (default: all of the study)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds of the trained cells (0,1,2)")
    add_study_flags(p)
    add_option_flags(p, Options)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    out = Path(opts.out)
    if a.cell:
        study, condition, seed = a.cell[0], a.cell[1], int(a.cell[2])
        if study not in STUDIES or condition not in STUDIES[study]:
            raise SystemExit(f"unknown cell {study}/{condition}; valid: "
                             + "; ".join(f"{k}: {', '.join(v)}" for k, v in STUDIES.items()))
        rec = run_cell(study, condition, seed, opts)
        rec["command"] = " ".join([".venv/bin/python experiments/llm_data.py --cell", study, condition, str(seed),
                                   *option_args(opts)])
        write_json(cell_path(out, study, condition, seed), rec)
        print(f"{study}/{condition} seed {seed}: accuracy {rec['accuracy']:.3f}, test loss {rec['test_loss']:.3f}, "
              f"{rec['train_s']:.0f} s training, {rec['eval_s']:.0f} s evaluation")
        return 0
    failed: list[str] = []
    if a.study and not a.report_only:
        conds = a.conditions.split(",") if a.conditions else list(STUDIES[a.study])
        failed = run_study(opts, cells(a.study, conds, [int(s) for s in a.seeds.split(",")]), a.force, a.jobs)
    from llm_data_report import write_report

    return finish_study(write_report, out, failed)


if __name__ == "__main__":
    raise SystemExit(main())
