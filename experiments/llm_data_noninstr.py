"""Non-instructional fine-tuning on SmolLM2-135M-Instruct: does SFT on (first half of a real text ->
a teacher LM's plain-text continuation) give instruction following, next to no fine-tuning and to
instruction fine-tuning on as many tokens? (Xie, Syu, Lee, arXiv 2409.00096.)

What this can show: the paper tunes BASE models; no causal LM that was never instruction-tuned is
installable here, only SmolLM2-135M-Instruct. The closest real thing is that model under a plain template
it never saw (user "Input:\\n{text}\\n\\nOutput:\\n", assistant "{text}<eos>", no system prompt): whether
non-instructional data adds or keeps instruction following under an unseen template, not whether it
creates it in a base model. The base cell also measures the model's own (ChatML) template.

Data (once per output directory, seed 0, ``<out>/data.json``): ``--docs`` BBC News articles (all
sections, deduplicated), each cut at a whitespace to ``--doc-chars`` characters, halved by words (>= 64),
each half continued greedily for <= ``--teacher-tokens`` tokens by the teacher, the same SmolLM2 on plain
text (the only LM here; the paper used GPT-3.5 / GPT-4); pairs the rule detector flags are dropped
(``build_pairs``' report and the teacher's seconds and tokens/s are kept). Instruction data: English
chatterbot-sft train-split pairs (seeded order) until their tokenised length reaches the
non-instructional set's (equal training tokens [D]). Held out: ``--heldout`` English test-split pairs
(the split is keyed by prompt). Cells (``<out>/cells/<condition>_seed<k>.json``): ``base`` (untrained,
seed 0), ``non_instructional`` and ``instruction`` for seeds 0, 1, 2 (LoRA init, data order): one epoch
of LoRA SFT (r 16 / alpha 32 on q, v; AdamW lr 5e-4 constant; batch 8; max length 256; bf16) [D]. Each
measures, under the plain template: held-out chatterbot response loss (token-mean NLL), the follow rate
of ``instruction_suite(seed=0, n=--suite-n)`` (greedy, <= ``--max-new-tokens``, stop at EOS or
"\\nInput:"), per kind, every answer, training tokens, seconds, peak RSS. Report: llm_data_noninstr_report.py.

Cost (1 thread, another job holding both cores; ``--docs 16 --heldout 24 --suite-n 12``): the teacher
writes ~60 tokens/s; a training step costs ~4 s + ~7 ms a token: ~4.5 min for a non-instructional cell
(~16 steps of 8 x ~210 tokens), ~10.5 for an instruction cell (~100 of 8 x ~33), plus ~1-1.5 min of
evaluation (2.5 for base): ~3 min of data, then ~55 min of cells, ~30 with ``--jobs 2`` (~5.5 GB each).

    .venv/bin/python experiments/llm_data_noninstr.py --jobs 2           # resumable, then the report
    .venv/bin/python experiments/llm_data_noninstr.py --report-only
    .venv/bin/python experiments/llm_data_noninstr.py --cell non_instructional 0   # one cell here
    .venv/bin/python experiments/llm_data_noninstr.py --threads 1 --jobs 1 --docs 6 --heldout 6 \\
        --suite-n 12 --max-new-tokens 8 --teacher-tokens 8 --seeds 0 --out /tmp/noninstr_smoke  # smoke
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from study_cells import (
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

RESULTS = Path(__file__).resolve().parents[1] / "experiments/results/lm/data_recipes/noninstr"
CONDITIONS = ("base", "non_instructional", "instruction")
SEEDS = (0, 1, 2)
DATA_SEED = 0  # [D] documents, teacher, instruction pairs and held-out set are the same for every cell
MIN_WORDS = 64  # [D] shorter (cut) documents are skipped
STOP = ("\nInput:",)  # [D] an answer also ends where the model starts a new plain-template turn
#: [D] the unseen plain template: "Input:\n{user}\n\nOutput:\n" then "{assistant}{eos}"; no system turn
PLAIN_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}"
                  "{{ 'Input:\\n' + m['content'] + '\\n\\nOutput:\\n' }}"
                  "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
                  "{% else %}{{ raise_exception('the plain template has no ' + m['role'] + ' turn') }}"
                  "{% endif %}{% endfor %}")


@dataclass(frozen=True)
class Options:
    model: str = "smollm2-135m"
    docs: int = 128  # [D] BBC News articles sampled (before the length guard and the detector)
    doc_chars: int = 1200  # [D] each cut to its first characters before halving (a ~100-word half)
    teacher_tokens: int = 64  # [D] the teacher's greedy continuation limit
    heldout: int = 200  # [D] held-out English chatterbot pairs (response loss)
    suite_n: int = 48  # [D] rule-checked instructions (instruction_suite, seed 0)
    max_new_tokens: int = 48  # [D] greedy answer length
    epochs: int = 1  # [D]
    batch_size: int = 8  # [D]
    lr: float = 5e-4  # [D] LoRA r16 q,v, AdamW, constant; not tuned
    max_length: int = 256  # [D] tokens per training / scored item
    gen_batch: int = 16  # [D] prompts per generation batch (teacher and answers)
    threads: int = 0
    out: str = str(RESULTS)


OPTION_HELP = {"docs": "BBC News articles to halve and continue", "heldout": "held-out English chatterbot pairs",
               "threads": "torch threads per process (0 = torch's default; 1 per cell with --jobs > 1)",
               "suite_n": "rule-checked instructions", "out": "output directory (data.json, cells, summary.csv)"}


def cells(conditions: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:  # base: seed 0 only
    return [(c, s) for c in conditions for s in ([0] if c == "base" else seeds)]


def cell_path(out: Path, condition: str, seed: int) -> Path:
    return out / "cells" / f"{condition}_seed{seed}.json"


def overrides(seed: int, opts: Options) -> list[str]:
    return lora_overrides(opts.model, "chatterbot-sft", seed, lr=opts.lr, batch_size=opts.batch_size,
                          epochs=opts.epochs, max_length=opts.max_length, threads=opts.threads)


def build(cfg: Any) -> tuple[Any, Any]:
    """The task model (LoRA applied) and its tokenizer (tests replace this)."""
    from fedft.model.build import build_model

    model, _, tok = build_model(cfg, num_labels=0)
    return model, tok


def cut_text(text: str, chars: int) -> str:
    """``text`` cut at its last whitespace within the first ``chars`` characters (hard cut if none
    is in the second half of them)."""
    if len(text) <= chars:
        return text
    cut = max(text.rfind(c, 0, chars + 1) for c in " \n\t")
    return text[: cut if cut > chars // 2 else chars].rstrip()


def documents(n: int, chars: int, seed: int = DATA_SEED) -> tuple[list[str], list[str]]:
    """``n`` deduplicated BBC News articles (seeded order, every section), cut to ``chars``, and
    their sections."""
    import numpy as np

    from fedft.assets import asset_dir
    from fedft.data.sources import load_bbc_news

    texts, labels, names = load_bbc_news(asset_dir("bbc-news"))
    first = sorted({t: i for i, t in reversed(list(enumerate(texts)))}.values())
    picked = [first[int(i)] for i in np.random.default_rng(seed).permutation(len(first))[:n]]
    return [cut_text(texts[i], chars) for i in picked], [names[int(labels[i])] for i in picked]


def take_tokens(examples: Sequence[Any], length: Callable[[Any], int], budget: int) -> tuple[list, int]:
    """The examples in order until their total ``length`` reaches ``budget`` (the one that reaches
    it included; all of them if they never do) and that total."""
    kept, total = [], 0
    for e in examples:
        if total >= budget:
            break
        kept.append(e)
        total += length(e)
    return kept, total


def data_key(opts: Options) -> dict[str, Any]:
    """What data.json depends on."""
    return {"model": opts.model, "docs": opts.docs, "doc_chars": opts.doc_chars, "min_words": MIN_WORDS,
            "teacher_tokens": opts.teacher_tokens, "heldout": opts.heldout, "max_length": opts.max_length,
            "seed": DATA_SEED, "template": PLAIN_TEMPLATE}


def make_data(opts: Options) -> dict[str, Any]:
    """Teacher pairs, the equal-token instruction pairs and the held-out pairs (see the docstring)."""
    import numpy as np

    from fedft.config import DataConfig, ExperimentConfig
    from fedft.data.datasets import load_raw
    from fedft.data.sft import tokenize
    from fedft.recipes.non_instructional import NonInstructionalOptions, build_pairs, model_teacher

    model, tok = build(ExperimentConfig.from_overrides(overrides(DATA_SEED, opts)))
    tok.chat_template = PLAIN_TEMPLATE
    docs, groups = documents(opts.docs, opts.doc_chars)
    ni = NonInstructionalOptions(min_words=MIN_WORDS, max_new_tokens=opts.teacher_tokens, temperature=0.0,
                                 drop_instructional=True, batch_size=opts.gen_batch)
    teacher = model_teacher(model.eval(), tok, ni, DATA_SEED, max(opts.max_length - opts.teacher_tokens, 1))
    cost = {"seconds": 0.0, "tokens": 0}

    def timed(prompts: list[str]) -> list[str]:  # the teacher's seconds and (re-tokenised) output tokens
        t0 = time.perf_counter()
        out = teacher(prompts)
        cost["seconds"] += time.perf_counter() - t0
        cost["tokens"] += sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in out)
        return out

    def length(e: Any) -> int:
        return len(tokenize(e, tok, opts.max_length))

    pairs, report = build_pairs(docs, groups, timed, ni, tok)
    budget = sum(map(length, pairs))
    raw = load_raw(DataConfig(name="chatterbot-sft", train_size=0, val_size=0, test_size=0))
    train, test = ([e for e in xs if e.group.startswith("english/")] for xs in (raw.train_x, raw.test_x))
    order = np.random.default_rng([DATA_SEED, 1]).permutation(len(train))
    instr, instr_tokens = take_tokens([train[int(i)] for i in order], length, budget)
    held = [test[int(i)] for i in np.sort(np.random.default_rng([DATA_SEED, 2]).permutation(len(test))[: opts.heldout])]
    report.update({"teacher": f"{opts.model} (plain text, no template, greedy)", "teacher_s": cost["seconds"],
                   "teacher_tokens": cost["tokens"], "teacher_tokens_per_s": cost["tokens"] / max(cost["seconds"], 1e-9)})
    return {"key": data_key(opts), "report": report, "instruction_pool": len(train), "heldout_pool": len(test),
            "tokens": {"non_instructional": budget, "instruction": instr_tokens}, "heldout": [asdict(e) for e in held],
            "non_instructional": [asdict(e) for e in pairs], "instruction": [asdict(e) for e in instr]}


def prepare(opts: Options) -> dict[str, Any]:
    """data.json: computed once per output directory, then read (its key checked)."""
    path = Path(opts.out) / "data.json"
    data = json_cache(path, lambda: make_data(opts))
    if data.get("key") != data_key(opts):
        raise SystemExit(f"{path} was made with {data.get('key')}, not {data_key(opts)}: use another --out or delete it")
    return data


def examples(rows: Sequence[dict[str, Any]]) -> list:
    from fedft.data.sft import SFTExample
    return [SFTExample(**r) for r in rows]


def response_loss(model: Any, tok: Any, pairs: list, opts: Options) -> float:
    """Token-mean NLL of the responses under the tokenizer's current template."""
    from fedft.data.sft import tokenize
    from fedft.scoring import sequence_loglik

    s = sequence_loglik(model, [tokenize(e, tok, opts.max_length) for e in pairs], tok.pad_token_id or 0,
                        opts.batch_size)
    return -sum(x.total for x in s) / max(sum(x.tokens for x in s), 1)


def answer_suite(model: Any, tok: Any, opts: Options, stop: tuple[str, ...] = STOP) -> dict[str, Any]:
    """Greedy answers to ``instruction_suite(0, suite_n)`` under the tokenizer's current template,
    the follow rate (overall and per kind) and every answer with its check."""
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate_batched
    from fedft.instructions import check, follow_rate, instruction_suite

    items = instruction_suite(seed=0, n=opts.suite_n)
    gen = GenerationConfig(max_new_tokens=opts.max_new_tokens, stop=stop)  # and the tokenizer's EOS
    answers = generate_batched(model, tok, [chat_prompt_ids(tok, it.prompt) for it in items], gen, opts.gen_batch,
                               desc="instructions")
    rate = follow_rate(items, answers)
    return {"follow_rate": rate["rate"], "per_kind": rate["per_kind"], "suite_n": rate["n"],
            "answer_chars": sum(map(len, answers)) / max(len(answers), 1),
            "answers": [{"kind": it.kind, "prompt": it.prompt, "answer": a, "ok": check(it, a)}
                        for it, a in zip(items, answers, strict=True)]}


def _train(model: Any, cfg: Any, items: list, tok: Any, rng: Any, label: str) -> tuple[float, float, int]:
    import torch
    from study_cells import train_split

    from fedft.data.sft_data import SFTSplit

    split = SFTSplit(items, torch.zeros(len(items), dtype=torch.long), tok.pad_token_id or 0)
    return train_split(model, cfg, split, rng, label)


def run_cell(condition: str, seed: int, opts: Options) -> dict[str, Any]:
    """Train (unless ``base``) and evaluate one cell: the record written to its JSON."""
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
    own, tok.chat_template = tok.chat_template, PLAIN_TEMPLATE
    train = examples(data[condition]) if condition != "base" else []
    rec: dict[str, Any] = {"condition": condition, "seed": seed, "options": asdict(opts), "overrides": overrides(seed, opts),
                           "train_examples": len(train), "train_tokens": 0, "train_response_tokens": 0,
                           "train_loss": None, "train_s": 0.0, "train_steps": 0}
    if train:
        items = [tokenize(e, tok, opts.max_length) for e in train]
        rec["train_tokens"], rec["train_response_tokens"] = sum(map(len, items)), sum(x.response_tokens for x in items)
        rec["train_loss"], rec["train_s"], rec["train_steps"] = _train(model, cfg, items, tok, rng, f"{condition} seed {seed}")
    t0 = time.perf_counter()
    model.eval()
    heldout = examples(data["heldout"])
    rec["heldout_loss"] = response_loss(model, tok, heldout, opts)
    rec.update(answer_suite(model, tok, opts))
    if condition == "base" and own:  # the reference point: the model's own (chat) template
        tok.chat_template = own
        ref = answer_suite(model, tok, opts, ())
        rec.update({"own_template_heldout_loss": response_loss(model, tok, heldout, opts),
                    **{f"own_template_{k}": ref[k] for k in ("follow_rate", "per_kind", "answer_chars", "answers")}})
        tok.chat_template = PLAIN_TEMPLATE
    rec.update({"eval_s": time.perf_counter() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "torch_threads": torch.get_num_threads(), "precision": str(model.compute_dtype).removeprefix("torch.")})
    return rec


def run_study(opts: Options, todo: list[tuple[str, int]], force: bool, jobs: int = 1) -> list[str]:
    """Every cell without a JSON (all with ``force``), each in its own process, ``jobs`` at a time."""
    return spawn_cells(str(Path(__file__).resolve()), opts, todo, force, jobs,
                       lambda c, s: cell_path(Path(opts.out), c, s), prepare)


def _parser() -> argparse.ArgumentParser:
    p = study_parser(__doc__, ("CONDITION", "SEED"), f"run one cell in this process (condition: {', '.join(CONDITIONS)})",
                     SEEDS, "seeds of the trained cells (0,1,2); base runs seed 0",
                     ("--conditions", CONDITIONS, "comma-separated conditions (default: all)"))
    add_option_flags(p, Options, OPTION_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    if a.cell:
        condition, seed = a.cell[0], int(a.cell[1])
        if condition not in CONDITIONS:
            raise SystemExit(f"unknown condition {condition!r}; valid: {', '.join(CONDITIONS)}")
        rec = run_cell(condition, seed, opts)
        rec["command"] = " ".join([".venv/bin/python experiments/llm_data_noninstr.py --cell", condition, str(seed),
                                   *option_args(opts)])
        write_json(cell_path(Path(opts.out), condition, seed), rec)
        print(f"{condition} seed {seed}: follow rate {rec['follow_rate']:.3f}, held-out loss {rec['heldout_loss']:.3f},"
              f" {rec['train_tokens']} training tokens, {rec['train_s']:.0f} s training, {rec['eval_s']:.0f} s eval")
        return 0
    failed: list[str] = []
    if not a.report_only:
        conds = [c for c in a.conditions.split(",") if c]
        if unknown := sorted(set(conds) - set(CONDITIONS)):
            raise SystemExit(f"unknown conditions {', '.join(unknown)}; valid: {', '.join(CONDITIONS)}")
        failed = run_study(opts, cells(conds, [int(s) for s in a.seeds.split(",")]), a.force, a.jobs)
    from llm_data_noninstr_report import write_report

    return finish_study(write_report, Path(opts.out), failed)


if __name__ == "__main__":
    raise SystemExit(main())
