"""EFT up-scaling on SmolLM2: does large base + (small fine-tuned - small base) keep the large
model's knowledge while gaining the small fine-tune's behaviour? (Mitchell et al., "An Emulator
for Fine-Tuning Large Language Models using Small Language Models", ICLR 2024, arXiv 2310.12962:
"scaling pre-training mostly improves factuality, scaling fine-tuning mostly helpfulness".)

Models: small = the healed 4-block SmolLM2 (``fedft heal``: blocks 0, 1, 28, 29 of 30, healed on
BBC News + chatterbot; $FEDFT_HOME/smollm2-small), large = SmolLM2-135M-Instruct. Both are
fine-tuned the same way (LoRA r 16 / alpha 32 on q, v; AdamW, lr ``--lr``, ``--epochs`` epochs,
batch 8; the cell's seed) to answer in the format "Answer: <X>." on chatterbot's trivia and the
capitals of the training half of the countries (experiments/llm_eft_facts.py).

Cell = one seed (``<out>/cells/seed<k>.json``, seeds 0, 1, 2): the seed draws the half of the
countries held out and the fine-tuning (LoRA initialisation, data order). On the held-out
countries' "What is the capital of X?" (greedy, chat template), eight decoders:
``small_base``, ``small_ft``, ``large_base``, ``large_ft``; ``up_l0.5``, ``up_l1``, ``up_l1.5``
(EFT up-scaling: large base + lam (small ft - small base), the ``eft`` decoding plugin); ``down``
(EFT down-scaling: small base + (large ft - large base)). Per answer: knowledge (an accepted
capital appears in the answer, any form) and format (the whole answer is "Answer: <X>.").
Cost (``--timing-n`` held-out prompts, one at a time, temperature 1, top-p 0.9 [D]): tokens/s of
plain large-base and small-ft decoding, EFT up-scaling (lam 1), and speculative EFT (gamma
``--gamma``: draft = small ft) with its acceptance rate.

Defaults and cost [D]: max 16 new tokens, 16 timing prompts, 2 epochs over ~300 pairs (~76
steps). Measured on this machine (one thread per process): a cell takes ~6-8 min (training the
large LoRA ~2-3 min, the small ~1 min, eight greedy decoders over ~58 questions ~2 min, timing
~1-2 min), ~20-25 min for 3 seeds with ``--jobs 1``.

    .venv/bin/python experiments/llm_eft.py --threads 1             # resumable, then the report
    .venv/bin/python experiments/llm_eft.py --report-only
    .venv/bin/python experiments/llm_eft.py --cell 0 --threads 1    # one cell in this process
    .venv/bin/python experiments/llm_eft.py --seeds 0 --epochs 1 --timing-n 2 --max-test 6 --out /tmp/eft  # smoke
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from llm_eft_facts import ANSWER, CAPITALS, QUESTION, formatted, knows, trivia_in_format
from study_cells import (
    ROOT,
    add_option_flags,
    finish_study,
    lora_overrides,
    option_args,
    options_from,
    spawn_cells,
    study_parser,
    train_split,
    write_json,
)

RESULTS = ROOT / "experiments/results/lm/decoding/eft"
SEEDS = (0, 1, 2)
PLAIN = ("small_base", "small_ft", "large_base", "large_ft")
LAMS = (0.5, 1.0, 1.5)  # [paper] lam = 1 is exact emulation; 0.5 / 1.5 rescale the behaviour delta
CONDITIONS = (*PLAIN, *(f"up_l{lam:g}" for lam in LAMS), "down")


@dataclass(frozen=True)
class Options:
    small: str = "smollm2-small"  # the healed small model (an asset name or a directory)
    large: str = "smollm2-135m"
    lr: float = 1e-3  # [D] LoRA r16 q,v, AdamW, constant; not tuned
    epochs: int = 2  # [D]
    batch_size: int = 8  # [D]
    max_length: int = 96  # [D] tokens per training pair
    max_new_tokens: int = 16  # [D] answer length (greedy)
    gen_batch: int = 16  # [D]
    max_test: int = 0  # [D] held-out questions evaluated (0: all, ~58)
    timing_n: int = 16  # [D] prompts of the cost measurement (batch 1)
    gamma: int = 4  # [verify] speculative draft length
    top_p: float = 0.9  # [D] nucleus of the sampled (timing) decoders
    threads: int = 0
    out: str = str(RESULTS)


OPTION_HELP = {"small": "small model: asset name or directory", "large": "large model: asset name or directory",
               "lr": "LoRA learning rate (both sizes)", "epochs": "fine-tuning epochs", "batch_size": "training batch",
               "max_length": "tokens per training pair", "max_new_tokens": "answer tokens",
               "gen_batch": "generation batch (greedy)", "max_test": "held-out questions (0 = all)",
               "timing_n": "prompts of the tokens/s measurement", "gamma": "speculative draft tokens per round",
               "top_p": "top-p of the sampled timing runs", "threads": "torch threads (0 = torch's default)",
               "out": "output directory (cells, summary.csv)"}


def cell_path(out: Path, seed: int) -> Path:
    return out / "cells" / f"seed{seed}.json"


def split_facts(seed: int) -> tuple[list[str], list[str]]:
    """(training countries, held-out countries): a seeded half / half split."""
    import numpy as np

    names = sorted(CAPITALS)
    order = np.random.default_rng([seed, 17]).permutation(len(names))
    half = len(names) // 2
    return sorted(names[i] for i in order[:half]), sorted(names[i] for i in order[half:])


def model_dir(name: str) -> str:
    """An asset name as its directory (the healed small model is a built asset), else as given."""
    from fedft.assets.catalog import BUILT, asset_dir

    return str(asset_dir(name)) if name in BUILT else name


def overrides(model: str, seed: int, opts: Options) -> list[str]:
    return lora_overrides(model_dir(model), "chatterbot-sft", seed, lr=opts.lr, batch_size=opts.batch_size,
                          epochs=opts.epochs, max_length=opts.max_length, threads=opts.threads)


def load(model: str, seed: int, opts: Options, method: str) -> tuple[Any, Any, Any]:
    """(task model, tokenizer, config): ``method`` lora (to fine-tune) or full_ft (plain, frozen use)."""
    from fedft.config import ExperimentConfig
    from fedft.model.build import build_model

    ov = overrides(model, seed, opts) + ([] if method == "lora" else ["method.name=full_ft"])
    cfg = ExperimentConfig.from_overrides(ov)
    m, _, tok = build_model(cfg, num_labels=0)
    return m, tok, cfg


def fine_tune(model: Any, tok: Any, cfg: Any, train: list[str], seed: int, opts: Options, label: str
              ) -> dict[str, Any]:
    import numpy as np
    import torch

    from fedft.assets import asset_dir
    from fedft.data.sft import SFTExample, tokenize
    from fedft.data.sft_data import SFTSplit

    pairs = [(QUESTION.format(country=c), ANSWER.format(x=CAPITALS[c][0])) for c in train]
    pairs += trivia_in_format(str(asset_dir("chatterbot")))
    items = [tokenize(SFTExample(q, a), tok, opts.max_length) for q, a in pairs]
    split = SFTSplit(items, torch.zeros(len(items), dtype=torch.long), tok.pad_token_id or 0)
    loss, secs, steps = train_split(model, cfg, split, np.random.default_rng([seed, 2]), label)
    return {"loss": loss, "seconds": secs, "steps": steps, "pairs": len(pairs)}


def judge(texts: list[str], countries: list[str]) -> dict[str, Any]:
    ok = [knows(t, CAPITALS[c]) for t, c in zip(texts, countries, strict=True)]
    fmt = [formatted(t) for t in texts]
    return {"knowledge": sum(ok) / len(ok), "format": sum(fmt) / len(fmt), "correct": ok, "formatted": fmt,
            "texts": [t.strip() for t in texts]}


def _batched(fn: Any, prompts: list[list[int]], batch: int) -> list[str]:
    """``fn(prompts) -> texts`` over batches of similar length, in the prompts' order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [""] * len(prompts)
    for at in range(0, len(order), batch):
        rows = order[at: at + batch]
        for i, text in zip(rows, fn([prompts[i] for i in rows]), strict=True):
            out[i] = text.strip()
    return out


def decoders(models: dict[str, Any]) -> dict[str, tuple[dict[str, Any], float]]:
    """Each EFT condition: its (base, ft, ref) models and lam."""
    up = {"base": models["large_base"], "ft": models["small_ft"], "ref": models["small_base"]}
    down = {"base": models["small_base"], "ft": models["large_ft"], "ref": models["large_base"]}
    return {**{f"up_l{lam:g}": (up, lam) for lam in LAMS}, "down": (down, 1.0)}


def evaluate(models: dict[str, Any], tok: Any, countries: list[str], opts: Options) -> dict[str, Any]:
    """Greedy answers of every condition to the held-out questions, judged."""
    from fedft.decoding import DECODERS
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate

    prompts = [chat_prompt_ids(tok, QUESTION.format(country=c)) for c in countries]
    cfg = GenerationConfig(max_new_tokens=opts.max_new_tokens, eos_token_ids=(int(tok.eos_token_id),))
    eft = DECODERS.get("eft")
    out: dict[str, Any] = {}
    for name in CONDITIONS:
        t0 = time.perf_counter()
        if name in PLAIN:
            texts = _batched(lambda ps, m=models[name]: generate(m, tok, ps, cfg).texts, prompts, opts.gen_batch)
        else:
            trio, lam = decoders(models)[name]
            dec = eft(eft.Options(lam=lam))
            texts = _batched(lambda ps, d=dec, t=trio: d.generate(t, tok, ps, cfg).texts, prompts, opts.gen_batch)
        out[name] = {**judge(texts, countries), "seconds": time.perf_counter() - t0}
        print(f"  {name}: knowledge {out[name]['knowledge']:.2f}, format {out[name]['format']:.2f}", flush=True)
    return out


def timing(models: dict[str, Any], tok: Any, countries: list[str], seed: int, opts: Options) -> dict[str, Any]:
    """Tokens/s of sampled decoding, one prompt at a time, the decoders interleaved per prompt."""
    from fedft.decoding import DECODERS
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate

    eft = DECODERS.get("eft")
    up = decoders(models)["up_l1"][0]
    runs = {"large_base": lambda p, c: generate(models["large_base"], tok, [p], c),
            "small_ft": lambda p, c: generate(models["small_ft"], tok, [p], c),
            "eft_up": lambda p, c: eft(eft.Options(lam=1.0)).generate(up, tok, [p], c),
            "eft_up_speculative": lambda p, c: eft(eft.Options(lam=1.0, speculative=True, gamma=opts.gamma)).generate(
                up, tok, [p], c)}
    acc = {n: {"tokens": 0, "seconds": 0.0, "texts": [], "drafted": 0, "accepted": 0, "rounds": 0} for n in runs}
    for i, country in enumerate(countries):
        prompt = chat_prompt_ids(tok, QUESTION.format(country=country))
        cfg = GenerationConfig(max_new_tokens=opts.max_new_tokens, temperature=1.0, top_p=opts.top_p,
                               seed=seed * 1000 + i, eos_token_ids=(int(tok.eos_token_id),))
        for name, run in runs.items():
            t0 = time.perf_counter()
            gen = run(prompt, cfg)
            a = acc[name]
            a["seconds"] += time.perf_counter() - t0
            a["tokens"] += len(gen.token_ids[0])
            a["texts"].append(gen.texts[0].strip())
            for k in ("drafted", "accepted", "rounds"):
                a[k] += getattr(gen, k, 0)
    for a in acc.values():
        a["tokens_per_s"] = a["tokens"] / a["seconds"] if a["seconds"] else None
        a["acceptance_rate"] = a["accepted"] / a["drafted"] if a["drafted"] else None
        a.update({k: v for k, v in judge(a["texts"], countries).items() if k in ("knowledge", "format")})
    return acc


def run_cell(seed: int, opts: Options) -> dict[str, Any]:
    import torch

    from fedft.train import seed_everything

    if opts.threads:
        torch.set_num_threads(opts.threads)
    train, test = split_facts(seed)
    test = test[: opts.max_test] if opts.max_test else test
    models: dict[str, Any] = {}
    rec: dict[str, Any] = {"seed": seed, "options": asdict(opts), "train_countries": train, "test_countries": test,
                           "training": {}}
    for size, name in (("small", opts.small), ("large", opts.large)):
        seed_everything(seed)
        models[f"{size}_base"], tok, _ = load(name, seed, opts, "full_ft")
        models[f"{size}_ft"], tok, cfg = load(name, seed, opts, "lora")
        rec["training"][size] = fine_tune(models[f"{size}_ft"], tok, cfg, train, seed, opts, f"{size} seed {seed}")
        rec["overrides_" + size] = overrides(name, seed, opts)
    for m in models.values():
        m.eval()
    rec["params"] = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    t0 = time.perf_counter()
    rec["results"] = evaluate(models, tok, test, opts)
    rec["eval_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec["timing"] = timing(models, tok, test[: opts.timing_n], seed, opts)
    rec.update({"timing_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "precision": str(models["large_base"].compute_dtype).removeprefix("torch.")})
    return rec


def _parser() -> argparse.ArgumentParser:
    p = study_parser(__doc__, ("SEED",), "run one cell (a seed) in this process", SEEDS, "seeds (0,1,2)")
    add_option_flags(p, Options, OPTION_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    if a.cell:
        seed = int(a.cell[0])
        t0 = time.perf_counter()
        rec = run_cell(seed, opts)
        rec["cell_s"] = time.perf_counter() - t0
        rec["command"] = " ".join([".venv/bin/python experiments/llm_eft.py --cell", str(seed), *option_args(opts)])
        write_json(cell_path(Path(opts.out), seed), rec)
        t = rec["timing"]
        print(f"seed {seed}: up_l1 knowledge {rec['results']['up_l1']['knowledge']:.2f} format "
              f"{rec['results']['up_l1']['format']:.2f}; tokens/s EFT {t['eft_up']['tokens_per_s']:.1f}, speculative "
              f"{t['eft_up_speculative']['tokens_per_s']:.1f} (acceptance {t['eft_up_speculative']['acceptance_rate']:.2f}); "
              f"{rec['cell_s']:.0f} s", flush=True)
        return 0
    failed: list[str] = []
    if not a.report_only:
        from fedft.assets.heal import read_recipe

        write_json(Path(opts.out) / "small_recipe.json", read_recipe(model_dir(opts.small)))  # for the report
        seeds = [(int(s),) for s in a.seeds.split(",") if s.strip()]
        failed = spawn_cells(str(Path(__file__).resolve()), replace(opts), seeds, a.force, a.jobs,
                             lambda s: cell_path(Path(opts.out), s))
    from llm_eft_report import write_report

    return finish_study(write_report, Path(opts.out), failed)


if __name__ == "__main__":
    raise SystemExit(main())
