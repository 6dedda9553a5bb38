"""Transfer Q* on SmolLM2-135M-Instruct: does value-guided decoding with rollouts of an aligned
(DPO) baseline reach a higher reward than ARGS and controlled decoding at a similar KL to the
policy, and does indirect transfer beat direct transfer when the baseline was aligned to another
reward? (Chakraborty et al., "Transfer Q Star", NeurIPS 2024, arXiv 2405.20495.)

Task [D]: steer continuations of BBC News openings (mixed sections) towards the ``--target``
section. Prompt: "Continue this news story in one or two sentences:" + headline and first
sentence, from a pool of 100 articles no classifier saw (llm_tqstar_reward.py). Rewards: r(y) =
P_A(target | y) and r_BL(y) = P_A(``--baseline-topic`` | y) from MiniLM classifier A (half A of
BBC); the evaluation reward is P_B(target | y) from classifier B, trained on the disjoint half B.

Per seed (``<out>/cells/<condition>_seed<k>.json``, seeds 0, 1, 2; one process per seed):
``--prompts`` evaluation prompts and ``--pair-prompts`` other prompts drawn from the pool with the
seed. On the pair prompts the policy samples ``--samples`` responses each (temperature 1); the best
and worst by r make the pairs of ρ_r, by r_BL those of ρ_BL; each baseline is the policy + LoRA
(r 16 on q, v) trained with the DPO loss (fedft.losses.dpo; ``--dpo-epochs``, lr ``--dpo-lr``,
β ``--dpo-beta``). Conditions, each on the evaluation prompts, ``--max-new-tokens`` tokens:

- ``policy_greedy``, ``policy_sample`` (temperature 1), ``dpo_r_sample``, ``dpo_bl_sample``;
- for each α of ``--alphas`` (greedy over the decoding scores, top ``--k``):
  ``args_a<α>`` (ARGS, w = α), ``cd_a<α>`` (CD: rollouts of the policy, ``--horizon`` tokens),
  ``tq_direct_a<α>`` (TQ* direct: rollouts of ρ_r, Q = r), ``tq_naive_a<α>`` (TQ* direct on the
  mismatched ρ_BL: Q = r), ``tq_indirect_a<α>`` (TQ* indirect on ρ_BL: Q = w·r,
  w = k·softmax((r - r_BL)/β)).

Metrics: evaluation reward (mean P_B(target)); r and r_BL; KL = mean over generated tokens of
KL(π_dec(· | s_t) || π_sft(· | s_t)) at the visited states, π_dec the softmax of the decoding
scores (temperature 1; for greedy decoding, the distribution the argmax is taken of); the policy's
NLL of the text (fluency); distinct-2 (word bigrams, all texts of the cell); tokens/s (decoding
with the rewards, wall clock); LM forwards and reward texts per generated token.

Cost (one thread, measured with another study on the second core): the classifiers ~1 min each
(cached under $FEDFT_HOME/cache/llm_tqstar, as are the DPO adapters); per seed ~1 min of pair
sampling, ~2 min per DPO baseline (24 steps of 8 sequences), ~7 s per plain condition, ~10 s per
ARGS run and ~45-50 s per CD or TQ* run (k·H = 24 rollout forwards a token): ~14 min a seed, ~45
min in all. Cut for this budget [D]: 12 prompts, 20 tokens, k = 4, H = 6, two α.

    .venv/bin/python experiments/llm_tqstar.py --threads 1        # resumable, then the report
    .venv/bin/python experiments/llm_tqstar.py --report-only
    .venv/bin/python experiments/llm_tqstar.py --cell 0           # one seed in this process
    .venv/bin/python experiments/llm_tqstar.py --seeds 0 --prompts 2 --pair-prompts 4 --samples 2 \\
        --max-new-tokens 4 --horizon 2 --k 2 --alphas 4 --clf-max 64 --out /tmp/tqstar  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_tqstar_reward import cache_dir, classifier, classifier_record, key_hash, make_data
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

RESULTS = ROOT / "experiments/results/lm/decoding/tqstar"
SEEDS = (0, 1, 2)
PROMPT = "Continue this news story in one or two sentences:\n\n{opening}"  # [D]
PLAIN = ("policy_greedy", "policy_sample", "dpo_r_sample", "dpo_bl_sample")
GUIDED = ("args", "cd", "tq_direct", "tq_naive", "tq_indirect")


@dataclass(frozen=True)
class Options:
    model: str = "smollm2-135m"
    classifier: str = "minilm-l6"
    target: str = "sports"  # [D] r = P_A(target)
    baseline_topic: str = "entertainment"  # [D] r_BL = P_A(baseline_topic): a different topic
    prompts: int = 12  # [D] evaluation prompts per seed (cut for time: TQ* costs ~k·H forwards a token)
    pair_prompts: int = 32  # [D] DPO prompts per seed
    samples: int = 4  # [D] policy samples per DPO prompt
    max_new_tokens: int = 20  # [D] (paper 128)
    k: int = 4  # [D] (paper 10)
    horizon: int = 6  # [D] (code 20 direct / 5 indirect)
    alphas: str = "3,10"  # [D] (paper 1 on reward-model scores; our rewards are probabilities, spread ~0.3)
    beta: float = 2.0  # [code] indirect weights exp((r - r_BL)/beta)
    dpo_beta: float = 0.1  # [paper, DPO]
    dpo_lr: float = 5e-4  # [D] LoRA
    dpo_epochs: int = 3  # [D]
    dpo_batch: int = 4  # [D] pairs per step
    clf_epochs: int = 1  # [D]
    clf_lr: float = 1e-4  # [D]
    clf_max: int = 0  # [D] training snippets per classifier (0: the whole half)
    threads: int = 0
    out: str = str(RESULTS)


OPTION_HELP = {
    "model": "policy causal LM (an offline asset)", "classifier": "reward encoder (an offline asset)",
    "target": "BBC section the reward asks for", "baseline_topic": "BBC section of the baseline reward r_BL",
    "prompts": "evaluation prompts per seed", "pair_prompts": "DPO prompts per seed",
    "samples": "policy samples per DPO prompt", "max_new_tokens": "generated tokens",
    "k": "candidates per step (ARGS, CD, TQ*)", "horizon": "rollout tokens (CD, TQ*)",
    "alphas": "comma-separated alpha (ARGS w) values", "beta": "TQ* indirect weight temperature",
    "dpo_beta": "DPO beta", "dpo_lr": "DPO learning rate (AdamW, LoRA)", "dpo_epochs": "DPO epochs",
    "dpo_batch": "DPO pairs per step", "clf_epochs": "classifier epochs", "clf_lr": "classifier learning rate",
    "clf_max": "training snippets per classifier (0 = all of its half)",
    "threads": "torch threads (0 = torch's default)", "out": "output directory (cells, summary.csv)"}


def alpha_list(opts: Options) -> list[float]:
    return [float(a) for a in str(opts.alphas).split(",") if a.strip()]


def conditions(opts: Options) -> list[str]:
    return [*PLAIN, *(f"{m}_a{a:g}" for a in alpha_list(opts) for m in GUIDED)]


def cell_path(out: Path, condition: str, seed: int) -> Path:
    return out / "cells" / f"{condition}_seed{seed}.json"


# --- data, rewards, models -------------------------------------------------------------------------

def prepare(opts: Options) -> dict[str, Any]:
    """The prompt pool and both classifiers' records (training them into the cache once)."""
    out = Path(opts.out)
    data = make_data()
    json_cache(out / "prompt_pool.json", lambda: {"seed": data["seed"], "prompts": data["prompt_pool"]})

    def records() -> dict[str, Any]:
        return {h: classifier_record(h, data, opts) for h in ("A", "B")}

    return {"data": data, "classifiers": json_cache(out / "classifiers.json", records)}


def seed_prompts(pool: list[dict[str, str]], seed: int, opts: Options) -> tuple[list[dict], list[dict]]:
    """Evaluation and DPO prompts of one seed: disjoint seeded draws from the pool."""
    import numpy as np

    order = np.random.default_rng([seed, 7]).permutation(len(pool)).tolist()
    need = opts.prompts + opts.pair_prompts
    if need > len(pool):
        raise SystemExit(f"--prompts + --pair-prompts = {need} > the pool's {len(pool)} prompts")
    return [pool[i] for i in order[: opts.prompts]], [pool[i] for i in order[opts.prompts: need]]


def prompt_ids(tok: Any, rows: list[dict[str, str]]) -> list[list[int]]:
    from fedft.data.sft import chat_prompt_ids

    return [chat_prompt_ids(tok, PROMPT.format(opening=r["opening"])) for r in rows]


def lora_model(seed: int, opts: Options) -> Any:
    from fedft.config import ExperimentConfig
    from fedft.model.build import build_model

    cfg = ExperimentConfig.from_overrides(lora_overrides(opts.model, "chatterbot-sft", seed, lr=opts.dpo_lr,
                                                         batch_size=opts.dpo_batch, epochs=opts.dpo_epochs,
                                                         max_length=256, threads=opts.threads))
    return build_model(cfg, num_labels=0)[0]


def sample_pairs(policy: Any, tok: Any, prompts: list[list[int]], seed: int, opts: Options,
                 rewards: dict[str, Any]) -> dict[str, Any]:
    """``samples`` policy responses per prompt (temperature 1) and their rewards."""
    from fedft.generation import GenerationConfig, generate

    rows = []
    for j in range(opts.samples):
        cfg = GenerationConfig(max_new_tokens=opts.max_new_tokens, temperature=1.0, seed=1000 * seed + j,
                               eos_token_ids=(int(tok.eos_token_id),))
        gen = generate(policy, tok, prompts, cfg)
        rows.append([{"ids": ids, "text": t.strip()} for ids, t in zip(gen.token_ids, gen.texts, strict=True)])
    by_prompt = [[rows[j][i] for j in range(opts.samples)] for i in range(len(prompts))]
    for group in by_prompt:
        for name, fn in rewards.items():
            for s, v in zip(group, fn([s["text"] for s in group]), strict=True):
                s[name] = float(v)
    return {"seed": seed, "prompts": prompts, "samples": by_prompt}


def dpo_baseline(kind: str, pairs: dict[str, Any], tok: Any, seed: int, opts: Options) -> tuple[Any, dict]:
    """``dpo_r`` or ``dpo_bl``: the policy + LoRA trained by DPO on (best, worst by r or r_BL) per
    prompt; the adapter comes from the cache when trained before with the same pairs and options."""
    import torch

    from fedft.data.sft import IGNORE, TokenizedExample
    from fedft.losses.dpo import train_dpo

    chosen, rejected, gaps = [], [], []
    reward = {"dpo_r": "r", "dpo_bl": "r_bl"}[kind]
    for p, group in zip(pairs["prompts"], pairs["samples"], strict=True):
        best, worst = max(group, key=lambda s: s[reward]), min(group, key=lambda s: s[reward])
        if best[reward] - worst[reward] < 1e-3 or not best["ids"] or not worst["ids"]:
            continue
        gaps.append(best[reward] - worst[reward])
        for s, to in ((best, chosen), (worst, rejected)):
            to.append(TokenizedExample(list(p) + s["ids"], [IGNORE] * len(p) + s["ids"]))
    model = lora_model(seed, opts)
    key = {"kind": kind, "pairs": key_hash({"c": [c.input_ids for c in chosen], "r": [r.input_ids for r in rejected]}),
           "opts": [opts.model, opts.dpo_beta, opts.dpo_lr, opts.dpo_epochs, opts.dpo_batch, seed]}
    path = cache_dir() / f"dpo_{kind}_seed{seed}_{key_hash(key)}.pt"
    rec: dict[str, Any] = {"kind": reward, "pairs": len(chosen), "mean_gap": sum(gaps) / max(len(gaps), 1)}
    t0 = time.perf_counter()
    if path.is_file():
        model.load_state_dict(torch.load(path), strict=False)
        rec["cached"] = True
    else:
        log = train_dpo(model, chosen, rejected, int(tok.pad_token_id), beta=opts.dpo_beta, lr=opts.dpo_lr,
                        epochs=opts.dpo_epochs, batch_size=opts.dpo_batch, seed=seed)
        rec.update({"losses": log.losses, "margins": log.margins, "accuracies": log.accuracies, "steps": log.steps})
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, path)
    rec["train_s"] = time.perf_counter() - t0
    return model.eval(), rec


# --- measuring one condition -------------------------------------------------------------------------

def kl_and_nll(policy: Any, prompts: list[list[int]], gen: Any, pad: int) -> tuple[float, float, float]:
    """Means over generated tokens, at the visited states (one forward of the policy), of
    KL(softmax(decoding scores) || π_sft), of the policy's NLL of the generated token, and of
    -log π_sft(support of the decoding scores): the KL that restricting π_sft to its top k alone
    would cost there (0 for plain decoding)."""
    import torch

    from fedft.data.sft import IGNORE, TokenizedExample, pad_batch

    items = [TokenizedExample(list(p) + g, [IGNORE] * (len(p) + len(g))) for p, g in zip(prompts, gen.token_ids,
                                                                                          strict=True)]
    batch = pad_batch(items, pad)
    kl = nll = cut = 0.0
    n = 0
    with torch.no_grad():
        logits = policy({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        for i, (p, g) in enumerate(zip(prompts, gen.token_ids, strict=True)):
            for t, tok in enumerate(g):
                lp = torch.log_softmax(logits[i, len(p) - 1 + t].float(), -1)
                ld = torch.log_softmax(gen.logits[t][i].float(), -1)
                pd = ld.exp()
                kl += float(torch.where(pd > 0, pd * (ld - lp), torch.zeros_like(pd)).sum())
                cut -= float(torch.logsumexp(lp[pd > 0], -1))
                nll -= float(lp[tok])
                n += 1
    return kl / max(n, 1), nll / max(n, 1), max(cut / max(n, 1), 0.0)


def distinct2(texts: list[str]) -> float:
    grams = [tuple(w[i: i + 2]) for w in (t.split() for t in texts) for i in range(len(w) - 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def decode(condition: str, models: dict[str, Any], rewards: dict[str, Any], tok: Any, prompts: list[list[int]],
           seed: int, opts: Options) -> tuple[Any, dict[str, float]]:
    """Run one condition: its generation (decoding logits kept) and its costs per token."""
    from fedft.decoding.tqstar import TQStar, TQStarOptions
    from fedft.decoding.value_guided import ARGS, ARGSOptions, CDOptions, ControlledDecoding
    from fedft.generation import GenerationConfig, generate

    eos = (int(tok.eos_token_id),)
    if condition in PLAIN:
        model = models["policy" if condition.startswith("policy") else condition.removesuffix("_sample")]
        cfg = GenerationConfig(max_new_tokens=opts.max_new_tokens, temperature=0.0 if "greedy" in condition else 1.0,
                               seed=seed, eos_token_ids=eos)
        t0 = time.perf_counter()
        gen = generate(model, tok, prompts, cfg, keep_logits=True)
        n = sum(len(g) for g in gen.token_ids)
        return gen, {"forwards_per_token": 1.0, "rollout_forwards_per_token": 0.0, "reward_texts_per_token": 0.0,
                     "tokens_per_s": n / (time.perf_counter() - t0)}
    method, alpha = condition.rsplit("_a", 1)
    a, k, h, r = float(alpha), opts.k, opts.horizon, rewards["r"]
    cfg = GenerationConfig(max_new_tokens=opts.max_new_tokens, seed=seed, eos_token_ids=eos)
    if method == "args":
        dec, use = ARGS(ARGSOptions(k=k, w=a), reward=r), {"policy": models["policy"]}
    elif method == "cd":
        dec, use = ControlledDecoding(CDOptions(k=k, horizon=h, alpha=a), reward=r), {"policy": models["policy"]}
    else:
        transfer = "indirect" if method == "tq_indirect" else "direct"
        dec = TQStar(TQStarOptions(k=k, horizon=h, alpha=a, beta=opts.beta, transfer=transfer), reward=r,
                     baseline_reward=rewards["r_bl"])
        use = {"policy": models["policy"], "baseline": models["dpo_r" if method == "tq_direct" else "dpo_bl"]}
    gen = dec.generate(use, tok, prompts, cfg, keep_logits=True)
    return gen, dec.last_stats.per_token()


def measure(condition: str, models: dict[str, Any], clf: dict[str, Any], rewards: dict[str, Any], tok: Any,
            prompts: list[list[int]], seed: int, opts: Options, names: list[str]) -> dict[str, Any]:
    import numpy as np

    for c in clf.values():
        c.cache.clear()  # no reward computed by an earlier condition is free
    gen, costs = decode(condition, models, rewards, tok, prompts, seed, opts)
    texts = [t.strip() for t in gen.texts]
    pa, pb = clf["A"].probs(texts), clf["B"].probs(texts)
    ti, bi = names.index(opts.target), names.index(opts.baseline_topic)
    kl, nll, kl_topk = kl_and_nll(models["policy"], prompts, gen, int(tok.pad_token_id))
    return {"eval_reward": float(np.mean(pb[:, ti])), "r": float(np.mean(pa[:, ti])), "r_bl": float(np.mean(pa[:, bi])),
            "eval_target_share": float(np.mean(pb.argmax(-1) == ti)), "kl": kl, "kl_topk": kl_topk, "policy_nll": nll,
            "distinct2": distinct2(texts), "tokens": float(np.mean([len(g) for g in gen.token_ids])), **costs,
            "texts": texts, "eval_rewards": pb[:, ti].tolist()}


# --- one seed --------------------------------------------------------------------------------------

def run_seed(seed: int, opts: Options) -> int:
    import torch

    from fedft.generation import load_for_generation
    from fedft.train import seed_everything

    out = Path(opts.out)
    todo = [c for c in conditions(opts) if not cell_path(out, c, seed).is_file()]
    if not todo:
        return 0
    if opts.threads:
        torch.set_num_threads(opts.threads)
    seed_everything(seed)
    prep = prepare(opts)
    data, names = prep["data"], prep["data"]["names"]
    clf = {h: classifier(h, data, opts)[0] for h in ("A", "B")}
    ti, bi = names.index(opts.target), names.index(opts.baseline_topic)
    rewards = {"r": lambda ts: clf["A"].probs(ts)[:, ti], "r_bl": lambda ts: clf["A"].probs(ts)[:, bi]}
    policy, tok = load_for_generation(opts.model)
    ev, pair_rows = seed_prompts(data["prompt_pool"], seed, opts)
    prompts = prompt_ids(tok, ev)
    models: dict[str, Any] = {"policy": policy}
    need = {"dpo_r"} if any(c.startswith(("dpo_r", "tq_direct")) for c in todo) else set()
    need |= {"dpo_bl"} if any(c.startswith(("dpo_bl", "tq_naive", "tq_indirect")) for c in todo) else set()
    if need:
        pairs = json_cache(out / "pairs" / f"seed{seed}.json",
                           lambda: sample_pairs(policy, tok, prompt_ids(tok, pair_rows), seed, opts, rewards))
        for kind in sorted(need):
            models[kind], rec = dpo_baseline(kind, pairs, tok, seed, opts)
            if not rec.get("cached") or not (out / "dpo" / f"{kind}_seed{seed}.json").is_file():
                write_json(out / "dpo" / f"{kind}_seed{seed}.json", rec)
    for c in todo:
        t0 = time.perf_counter()
        rec = {"condition": c, "seed": seed, "options": asdict(opts), "prompts": [r["opening"] for r in ev],
               "sections": [r["section"] for r in ev],
               **measure(c, models, clf, rewards, tok, prompts, seed, opts, names)}
        rec.update({"seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "command": " ".join([".venv/bin/python experiments/llm_tqstar.py --cell", str(seed),
                                         *option_args(opts)])})
        write_json(cell_path(out, c, seed), rec)
        print(f"{c} seed {seed}: eval reward {rec['eval_reward']:.3f}, KL {rec['kl']:.3f}, distinct-2 "
              f"{rec['distinct2']:.2f}, {rec['tokens_per_s']:.1f} tokens/s, {rec['seconds']:.0f} s", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = study_parser(__doc__, "SEED", "run every missing condition of one seed in this process", SEEDS,
                     "seeds (default 0,1,2)")
    add_option_flags(p, Options, OPTION_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    a = _parser().parse_args(argv)
    opts = options_from(a, Options)
    if a.cell is not None:
        return run_seed(int(a.cell), opts)
    failed: list[str] = []
    if not a.report_only:
        if a.force:
            for s in a.seeds.split(","):
                for c in conditions(opts):
                    cell_path(Path(opts.out), c, int(s)).unlink(missing_ok=True)
        failed = spawn_cells(str(Path(__file__).resolve()), opts, [(int(s),) for s in a.seeds.split(",")], False,
                             a.jobs, None, prepare)
    from llm_tqstar_report import write_report

    return finish_study(write_report, Path(opts.out), failed)


if __name__ == "__main__":
    raise SystemExit(main())
