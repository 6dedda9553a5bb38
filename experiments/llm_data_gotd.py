"""GOT-D on SmolLM2-135M-Instruct: does pre-fine-tuning data chosen by the OT gradient towards a
target sample help the target task more than random or target-similar data? (Kang et al., "Get
more for less", ICLR 2024, arXiv 2405.02774: "select pre-fine-tuning data that nudges the
pre-training distribution towards the target".)

Pool and target (``fedft.recipes.got_d_pool.gotd_pool``, seed 0): ~1,000-character chunks
[paper] of BBC News (every section but the held-out and target tech articles), chatterbot
conversations and Python stdlib docstrings, at most ``--per-source`` chunks per source [D]. The
target set is the chunks of ``--target-n`` tech articles (the "small target sample"); the
held-out set is ``--heldout-n`` other tech articles, never selected, never trained on.

Cells (``<out>/cells/<condition>_seed<k>.json``, seeds 0, 1, 2):

- ``got_d_b<B>``, ``target_sim_b<B>``, ``random_b<B>`` for each budget B of ``--budgets``: B
  chunks selected by GOT-D (``GOTD`` on MiniLM embeddings), by similarity to the mean target
  embedding (``TargetSimilarity``) or at random (``RandomSelector``, the cell's seed); one epoch
  of plain-text causal-LM pre-fine-tuning (no chat template) on them; then the downstream task;
- ``none``: the downstream task only (no pre-fine-tuning);  ``base``: no training (seed 0).

Every cell measures (1) the perplexity of the held-out tech chunks after pre-fine-tuning and
(2) the downstream task, headline generation: one epoch of SFT on the target articles' (body
-> headline) pairs, then on the held-out articles the headline response loss and the ROUGE-L of
greedy headlines. The model is LoRA r 16 / alpha 32 on q, v; AdamW, lr 5e-4, constant; batch 8;
bf16 compute where native; the LoRA adapter of pre-fine-tuning continues into fine-tuning [D].

Computed once per output directory (``prepare``, before any cell): the pool (``gotd_pool.json``),
the MiniLM embeddings of pool and target (``embeddings.npz``) and the starting model's EL2N score
of every candidate (``el2n.json``; only for the report's "selectors on one pool" table).

Defaults and cost [D]: budgets 32 and 96 (not 50 and 150: see below), 32 target and 16 held-out
articles, 200 chunks per source (a pool of ~1,400), max length 256 tokens. Measured on this
machine's 2 cores with two 1-thread processes (experiments/results/lm/peft_unit_tests: a LoRA
step of 4 x ~300 tokens took ~8 s), training runs ~125 tokens/s and scoring ~370 tokens/s per
process, so a cell costs ~2 min of fixed work (model load, held-out perplexity of ~60 chunks,
fine-tuning on 32 pairs, one generation batch) plus ~1.7 s per selected chunk: ~38 min for the
22 cells with ``--jobs 2``, plus ~6 min of preparation (MiniLM embeddings; EL2N of the pool scores
each chunk's first 128 tokens): ~45 min in all. At 2-4 s per step of 8 x 256 tokens (the faster
estimate) it is ~15-20 min; ``--budgets 50,150`` adds ~10 min at the slow rate.

    .venv/bin/python experiments/llm_data_gotd.py --jobs 2            # resumable, then the report
    .venv/bin/python experiments/llm_data_gotd.py --report-only
    .venv/bin/python experiments/llm_data_gotd.py --cell got_d 96 0   # one cell in this process
    .venv/bin/python experiments/llm_data_gotd.py --jobs 2 --per-source 2 --budgets 4 --target-n 4 \\
        --heldout-n 4 --max-length 64 --out /tmp/gotd                 # a smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
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
    train_split,
    write_json,
)

RESULTS = ROOT / "experiments/results/lm/data_recipes/gotd"
SELECTORS = ("random", "target_sim", "got_d")
CONTROLS = ("base", "none")  # no training at all; the downstream task without pre-fine-tuning
SEEDS = (0, 1, 2)
SECTION = "tech"  # [D] the BBC News section that plays the target task
POOL_SEED = 0  # [D] the pool, target and held-out split are the same for every cell
CHUNK_CHARS = 1000  # [paper]
PROMPT = "Write the headline of this news article:\n\n{body}"  # [D]


@dataclass(frozen=True)
class Options:
    model: str = "smollm2-135m"
    budgets: str = "32,96"  # [D] chunks selected (comma-separated budgets)
    epochs: int = 1  # [D] pre-fine-tuning epochs
    ft_epochs: int = 1  # [D] downstream fine-tuning epochs
    batch_size: int = 8  # [D]
    lr: float = 5e-4  # [D] LoRA r16 q,v, AdamW, constant; not tuned
    max_length: int = 256  # [D] tokens per training / scored item
    target_n: int = 32  # [D] tech articles of the target set (GOT-D's target, the downstream training set)
    heldout_n: int = 16  # [D] tech articles held out (perplexity, headline evaluation)
    per_source: int = 200  # [D] pool chunks per source (a seeded subset; 0 = all ~6,600)
    body_chars: int = 600  # [D] article body given to the headline prompt
    max_new_tokens: int = 24  # [D] greedy headline length
    gen_batch: int = 16  # [D]
    el2n_tokens: int = 128  # [D] EL2N scores each candidate's first tokens (report table only)
    reg: float = 0.1  # [code] GOT-D's entropic regularisation (relative to max cost)
    threads: int = 0
    out: str = str(RESULTS)


OPTION_HELP = {
    "model": "causal LM (an offline asset name)", "budgets": "comma-separated selection budgets, in chunks",
    "epochs": "pre-fine-tuning epochs", "ft_epochs": "downstream (headline) fine-tuning epochs",
    "batch_size": "training and scoring batch", "lr": "AdamW learning rate (constant)",
    "max_length": "tokens per training / scored item", "target_n": "tech articles in the target set",
    "heldout_n": "tech articles held out for evaluation", "per_source": "pool chunks per source (0 = all)",
    "body_chars": "article body characters in the headline prompt", "max_new_tokens": "greedy headline tokens",
    "gen_batch": "generation batch", "el2n_tokens": "tokens of each candidate scored by EL2N (report table)",
    "reg": "GOT-D entropic regularisation, relative to the largest cost",
    "threads": "torch threads per process (0 = torch's default; 1 per cell with --jobs > 1)",
    "out": "output directory (cells, caches, summary.csv)"}


def budget_list(opts: Options) -> list[int]:
    return [int(b) for b in str(opts.budgets).split(",") if b.strip()]


def condition(selector: str, budget: int) -> str:
    return selector if selector in CONTROLS else f"{selector}_b{budget}"


def cells(selectors: Sequence[str], budgets: Sequence[int], seeds: Sequence[int]) -> list[tuple[str, int, int]]:
    """(selector, budget, seed): ``base`` once (seed 0, the first seed), ``none`` per seed, each
    selector per budget and seed."""
    out: list[tuple[str, int, int]] = []
    if "base" in selectors:
        out.append(("base", 0, 0))
    if "none" in selectors:
        out += [("none", 0, s) for s in seeds]
    return out + [(sel, b, s) for sel in selectors if sel not in CONTROLS for b in budgets for s in seeds]


def cell_path(out: Path, selector: str, budget: int, seed: int) -> Path:
    return out / "cells" / f"{condition(selector, budget)}_seed{seed}.json"


def overrides(seed: int, opts: Options) -> list[str]:
    return lora_overrides(opts.model, "chatterbot-sft", seed, lr=opts.lr, batch_size=opts.batch_size,
                          epochs=opts.epochs, max_length=opts.max_length, threads=opts.threads)


def build(cfg: Any) -> tuple[Any, Any]:
    """The task model (LoRA applied) and its tokenizer (tests replace this)."""
    from fedft.model.build import build_model

    model, _, tok = build_model(cfg, num_labels=0)
    return model, tok


# --- data ----------------------------------------------------------------------------------------

def plain_item(text: str, tok: Any, max_length: int) -> Any:
    """Plain-text causal-LM item (no chat template, no special tokens): every token but the first
    is labelled (the first has nothing before it to predict it from)."""
    from fedft.data.sft import IGNORE, TokenizedExample

    ids = [int(i) for i in tok(text, add_special_tokens=False)["input_ids"][:max_length]]
    return TokenizedExample(ids, [IGNORE, *ids[1:]])


def headline_pair(article: str, body_chars: int = 600) -> Any:
    """(body -> headline): the article's first line is its headline, the rest (cut at a
    whitespace to at most ``body_chars`` characters) goes into the prompt."""
    from fedft.data.sft import SFTExample

    head, _, body = article.strip().partition("\n")
    body = " ".join(body.split())
    if len(body) > body_chars:
        cut = body.rfind(" ", 0, body_chars + 1)
        body = body[: cut if cut > body_chars // 2 else body_chars]
    return SFTExample(PROMPT.format(body=body), head.strip(), task="headline", group=SECTION)


def tech_articles(bbc_root: Path | str, target_n: int, heldout_n: int, seed: int = POOL_SEED,
                  section: str = SECTION) -> tuple[list[str], list[str]]:
    """The target and held-out articles that :func:`gotd_pool` chunks (the same deduplication and
    seeded permutation; :func:`make_pool` checks that their chunks agree)."""
    import numpy as np

    from fedft.data.sources import load_bbc_news

    texts, labels, names = load_bbc_news(bbc_root)
    first = sorted({t: i for i, t in reversed(list(enumerate(texts)))}.values())
    texts, labels = [texts[i] for i in first], labels[first]
    order = np.random.default_rng(seed).permutation(np.flatnonzero(labels == names.index(section)))
    return ([texts[int(i)] for i in sorted(order[:target_n])],
            [texts[int(i)] for i in sorted(order[target_n: target_n + heldout_n])])


def pool_key(opts: Options) -> dict[str, Any]:
    """What the cached pool depends on."""
    return {"section": SECTION, "seed": POOL_SEED, "chunk_chars": CHUNK_CHARS, "target_n": opts.target_n,
            "heldout_n": opts.heldout_n, "per_source": opts.per_source}


def make_pool(opts: Options) -> dict[str, Any]:
    from fedft.assets import asset_dir
    from fedft.recipes.got_d import chunk_texts
    from fedft.recipes.got_d_pool import gotd_pool

    texts, groups, target, heldout = gotd_pool(
        asset_dir("bbc-news"), asset_dir("chatterbot"), target_section=SECTION, target_n=opts.target_n,
        heldout_n=opts.heldout_n, seed=POOL_SEED, chunk_chars=CHUNK_CHARS, per_source=opts.per_source or None)
    target_articles, heldout_articles = tech_articles(asset_dir("bbc-news"), opts.target_n, opts.heldout_n)
    if chunk_texts(target_articles, CHUNK_CHARS) != target or chunk_texts(heldout_articles, CHUNK_CHARS) != heldout:
        raise RuntimeError("tech_articles no longer matches gotd_pool's target / held-out split")
    return {"key": pool_key(opts), "pool": texts, "groups": groups, "target": target, "heldout": heldout,
            "target_articles": target_articles, "heldout_articles": heldout_articles}


def npz_cache(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The arrays at ``path``, made (and written atomically) by ``make()`` when absent."""
    import numpy as np

    if not path.is_file():
        value = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **value)
        tmp.replace(path)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def make_embeddings(pool: dict[str, Any]) -> dict[str, Any]:
    """MiniLM embeddings (mean-pooled, unit norm) of every candidate and target chunk."""
    from fedft.recipes.got_d import SentenceEmbedder

    emb = SentenceEmbedder("minilm-l6")(list(pool["pool"]) + list(pool["target"]))
    return {"pool": emb[: len(pool["pool"])], "target": emb[len(pool["pool"]):]}


def make_el2n(pool: dict[str, Any], opts: Options) -> dict[str, Any]:
    """The starting model's EL2N of every candidate, as plain text (its first ``el2n_tokens``)."""
    from fedft.config import ExperimentConfig
    from fedft.scoring import el2n
    from fedft.selection import EL2N

    class PlainEL2N(EL2N):  # fedft.selection.EL2N's rule, on plain-text items (no chat template)
        def scores(self, texts: Sequence[str]) -> list[float]:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            items = [plain_item(t, self.tokenizer, self.max_length) for t in texts]
            return el2n(self.model, items, pad, self.batch_size)

    model, tok = build(ExperimentConfig.from_overrides(overrides(0, opts)))
    t0 = time.perf_counter()
    scores = PlainEL2N(model.eval(), tok, opts.el2n_tokens, opts.batch_size).scores(pool["pool"])
    return {"key": {"model": opts.model, "el2n_tokens": opts.el2n_tokens}, "scores": scores,
            "seconds": time.perf_counter() - t0}


def _check(cached: dict[str, Any], key: dict[str, Any], path: Path) -> None:
    if cached.get("key") != key:
        raise SystemExit(f"{path} was made with {cached.get('key')}, not {key}: use another --out or delete it")


def prepare(opts: Options) -> dict[str, Any]:
    """Pool, embeddings and EL2N scores: computed once per output directory, then read."""
    out = Path(opts.out)
    pool = json_cache(out / "gotd_pool.json", lambda: make_pool(opts))
    _check(pool, pool_key(opts), out / "gotd_pool.json")
    emb = npz_cache(out / "embeddings.npz", lambda: make_embeddings(pool))
    if len(emb["pool"]) != len(pool["pool"]) or len(emb["target"]) != len(pool["target"]):
        raise SystemExit(f"{out / 'embeddings.npz'} does not match {out / 'gotd_pool.json'}: delete it")
    scores = json_cache(out / "el2n.json", lambda: make_el2n(pool, opts))
    _check(scores, {"model": opts.model, "el2n_tokens": opts.el2n_tokens}, out / "el2n.json")
    return {"pool": pool, "emb": emb, "el2n": scores["scores"]}


# --- selection -----------------------------------------------------------------------------------

def lookup_embedder(texts: Sequence[str], vectors: Any) -> Callable[[list[str]], Any]:
    """An embed callable that returns the cached vector of each text (``texts[i]`` -> ``vectors[i]``)."""
    import numpy as np

    table = dict(zip(texts, np.asarray(vectors, dtype=np.float64), strict=True))

    def embed(batch: list[str]) -> np.ndarray:
        missing = [t[:60] for t in batch if t not in table]
        if missing:
            raise KeyError(f"{len(missing)} texts have no cached embedding, e.g. {missing[0]!r}")
        return np.stack([table[t] for t in batch]) if batch else np.zeros((0, len(next(iter(table.values())))))

    return embed


def select(selector: str, budget: int, seed: int, data: dict[str, Any], opts: Options) -> tuple[list[int], dict]:
    """The indices ``selector`` keeps from the pool and what it reports (the pool's OT cost for GOT-D)."""
    from fedft.recipes.got_d import GOTD, TargetSimilarity
    from fedft.selection import RandomSelector

    pool, target = data["pool"]["pool"], data["pool"]["target"]
    embed = lookup_embedder([*pool, *target], [*data["emb"]["pool"], *data["emb"]["target"]])
    extra: dict[str, Any] = {}
    if selector == "random":
        keep = RandomSelector(seed=seed).select(pool, budget)
    elif selector == "target_sim":
        keep = TargetSimilarity(embed, target).select(pool, budget)
    elif selector == "got_d":
        sel = GOTD(embed, target, reg=opts.reg)
        keep = sel.select(pool, budget)
        extra = {"pool_ot_cost_entropic": sel.last_ot_cost}
    elif selector == "el2n":  # fedft.selection.EL2N's rule: the highest scores (the hardest chunks)
        order = sorted(range(len(pool)), key=lambda i: -data["el2n"][i])
        keep = sorted(order[:budget])
    else:
        raise ValueError(f"unknown selector {selector!r}")
    return keep, extra


def describe(keep: list[int], data: dict[str, Any]) -> dict[str, Any]:
    """Sources of a selection, its target-section share and its exact OT cost to the target
    (squared euclidean on the embeddings, uniform masses: W2^2)."""
    import numpy as np
    import ot

    groups = data["pool"]["groups"]
    by = Counter(groups[i] for i in keep)
    x, y = np.asarray(data["emb"]["pool"])[keep], np.asarray(data["emb"]["target"])
    cost = float(ot.emd2(ot.unif(len(x)), ot.unif(len(y)), ot.dist(x, y))) if len(x) else float("nan")
    return {"selected": len(keep), "by_group": dict(sorted(by.items())),
            "target_share": by.get(f"bbc/{SECTION}", 0) / max(len(keep), 1), "ot_cost": cost}


# --- evaluation ----------------------------------------------------------------------------------

def target_ppl(model: Any, tok: Any, heldout: list[str], opts: Options) -> float:
    from fedft.scoring import perplexity

    items = [plain_item(t, tok, opts.max_length) for t in heldout]
    return perplexity(model, items, tok.pad_token_id or 0, opts.batch_size)


def downstream(model: Any, tok: Any, articles: list[str], opts: Options) -> dict[str, Any]:
    """Headline response loss (token mean NLL) and ROUGE-L of greedy headlines (first line)."""
    from fedft.data.sft import chat_prompt_ids, tokenize
    from fedft.generation import GenerationConfig, generate_batched
    from fedft.judges import rouge_l
    from fedft.scoring import sequence_loglik

    pairs = [headline_pair(a, opts.body_chars) for a in articles]
    s = sequence_loglik(model, [tokenize(e, tok, opts.max_length) for e in pairs], tok.pad_token_id or 0,
                        opts.batch_size)
    eos = tok.eos_token_id
    gen = GenerationConfig(max_new_tokens=opts.max_new_tokens, eos_token_ids=() if eos is None else (int(eos),))
    texts = generate_batched(model, tok, [chat_prompt_ids(tok, e.prompt) for e in pairs], gen, opts.gen_batch,
                             desc="headlines")
    heads = [(t.strip().splitlines() or [""])[0] for t in texts]
    scores = [rouge_l(h, e.response) for h, e in zip(heads, pairs, strict=True)]
    return {"headline_loss": -sum(x.total for x in s) / max(sum(x.tokens for x in s), 1),
            "rouge_l": sum(scores) / len(scores), "heldout_articles": len(pairs),
            "samples": [{"headline": e.response, "generated": h, "rouge_l": r}
                        for e, h, r in list(zip(pairs, heads, scores, strict=True))[:4]]}


# --- one cell ------------------------------------------------------------------------------------

def _train(model: Any, cfg: Any, items: list, tok: Any, rng: Any, label: str) -> tuple[float, float, int]:
    import torch

    from fedft.data.sft_data import SFTSplit

    split = SFTSplit(items, torch.zeros(len(items), dtype=torch.long), tok.pad_token_id or 0)
    return train_split(model, cfg, split, rng, label)


def run_cell(selector: str, budget: int, seed: int, opts: Options) -> dict[str, Any]:
    """Select, pre-fine-tune, measure, fine-tune, evaluate: the record written to the cell's JSON."""
    import numpy as np
    import torch

    from fedft.config import ExperimentConfig
    from fedft.data.sft import tokenize
    from fedft.train import seed_everything

    if opts.threads:
        torch.set_num_threads(opts.threads)
    cfg = ExperimentConfig.from_overrides(overrides(seed, opts))
    data = prepare(opts)
    rng = seed_everything(seed)
    model, tok = build(cfg)
    rec: dict[str, Any] = {"condition": condition(selector, budget), "selector": selector, "seed": seed,
                           "budget": budget, "options": asdict(opts),
                           "overrides": overrides(seed, opts), "pool_size": len(data["pool"]["pool"]),
                           "pft_loss": None, "pft_s": 0.0, "pft_steps": 0, "pft_tokens": 0,
                           "ft_loss": None, "ft_s": 0.0, "ft_steps": 0, "selection": {}}
    label = f"{rec['condition']} seed {seed}"
    if selector not in CONTROLS:
        keep, extra = select(selector, budget, seed, data, opts)
        rec["selection"] = {**describe(keep, data), **extra}
        items = [plain_item(data["pool"]["pool"][i], tok, opts.max_length) for i in keep]
        rec["pft_tokens"] = sum(len(x) for x in items)
        rec["pft_loss"], rec["pft_s"], rec["pft_steps"] = _train(model, cfg, items, tok, rng, f"{label} pre-ft")
    t0 = time.perf_counter()
    rec["target_ppl"] = target_ppl(model, tok, data["pool"]["heldout"], opts)
    rec["ppl_s"] = time.perf_counter() - t0
    if selector != "base":
        ft_cfg = cfg.replace(train=replace(cfg.train, epochs=opts.ft_epochs))
        pairs = [tokenize(headline_pair(a, opts.body_chars), tok, opts.max_length)
                 for a in data["pool"]["target_articles"]]
        ft_rng = np.random.default_rng([seed, 1])  # the same fine-tuning order in every cell of a seed
        rec["ft_loss"], rec["ft_s"], rec["ft_steps"] = _train(model, ft_cfg, pairs, tok, ft_rng, f"{label} fine-tune")
    t0 = time.perf_counter()
    rec.update(downstream(model.eval(), tok, data["pool"]["heldout_articles"], opts))
    rec.update({"eval_s": time.perf_counter() - t0, "train_s": rec["pft_s"] + rec["ft_s"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "torch_threads": torch.get_num_threads(), "precision": str(model.compute_dtype).removeprefix("torch.")})
    return rec


# --- the study -----------------------------------------------------------------------------------

def run_study(opts: Options, todo: list[tuple[str, int, int]], force: bool, jobs: int = 1) -> list[str]:
    """Every cell without a JSON (all with ``force``), each in its own process, ``jobs`` at a time,
    the most expensive (largest budget) first."""
    return spawn_cells(str(Path(__file__).resolve()), opts, sorted(todo, key=lambda c: -c[1]), force, jobs,
                       lambda sel, b, s: cell_path(Path(opts.out), sel, b, s), prepare)


def _parser() -> argparse.ArgumentParser:
    p = study_parser(__doc__, ("SELECTOR", "BUDGET", "SEED"),
                     f"run one cell in this process (selector: {', '.join((*CONTROLS, *SELECTORS))}; budget 0 for base / none)",
                     SEEDS, "seeds of the trained cells (0,1,2); base runs seed 0 only",
                     ("--selectors", [*CONTROLS, *SELECTORS], "comma-separated conditions to run (default: all)"))
    add_option_flags(p, Options, OPTION_HELP)
    return p


def _one_cell(cell: list[str], opts: Options) -> int:
    selector, budget, seed = cell[0], int(cell[1]), int(cell[2])
    if selector not in (*CONTROLS, *SELECTORS):
        raise SystemExit(f"unknown selector {selector!r}; valid: {', '.join((*CONTROLS, *SELECTORS))}")
    if selector not in CONTROLS and budget < 1:
        raise SystemExit(f"{selector} needs a budget >= 1")
    budget = 0 if selector in CONTROLS else budget
    rec = run_cell(selector, budget, seed, opts)
    rec["command"] = " ".join([".venv/bin/python experiments/llm_data_gotd.py --cell", selector, str(budget), str(seed),
                               *option_args(opts)])
    write_json(cell_path(Path(opts.out), selector, budget, seed), rec)
    print(f"{rec['condition']} seed {seed}: target ppl {rec['target_ppl']:.3f}, headline loss "
          f"{rec['headline_loss']:.3f}, ROUGE-L {rec['rouge_l']:.3f}, {rec['train_s']:.0f} s training, "
          f"{rec['eval_s']:.0f} s evaluation")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    if a.cell:
        return _one_cell(a.cell, opts)
    failed: list[str] = []
    if not a.report_only:
        selectors = [s for s in a.selectors.split(",") if s]
        unknown = sorted(set(selectors) - {*CONTROLS, *SELECTORS})
        if unknown:
            raise SystemExit(f"unknown selectors {', '.join(unknown)}; valid: {', '.join((*CONTROLS, *SELECTORS))}")
        todo = cells(selectors, budget_list(opts), [int(s) for s in a.seeds.split(",")])
        failed = run_study(opts, todo, a.force, a.jobs)
    from llm_data_gotd_report import write_report

    return finish_study(write_report, Path(opts.out), failed)


if __name__ == "__main__":
    raise SystemExit(main())
