"""A smaller member of the SmolLM2 family, built from SmolLM2-135M-Instruct: ``fedft heal``.

EFT up-scaling (Mitchell et al., ICLR 2024) needs a small and a large model of one family sharing
a tokenizer; the paper uses Llama-2 7B / 70B and Falcon 7B / 180B. The offline assets have one
SmolLM2 (135M, 30 blocks), so fedft derives a smaller one by layer pruning and healing, as in
"The Unreasonable Ineffectiveness of the Deeper Layers" (Gromov et al., 2024: drop blocks, then
heal with a little continued training) [D: which blocks and how long are fedft's choices].

What fedft does: keep the embeddings (tied with the LM head), the final norm and the first
``keep_first`` and last ``keep_last`` blocks (default 2 + 2 of 30); heal the kept blocks and the
norm (the embeddings stay frozen, so both sizes share the input and output space) by causal-LM
training on BBC News articles (plain text) and chatterbot English conversations (through the chat
template, so the small model keeps the chat turn format), packed into ``seq_len``-token chunks; a
seeded document-level held-out split; stop when the held-out loss has not improved for
``patience`` evaluations or at ``max_steps``, keeping the best evaluation's weights. The result is
an ordinary Hugging Face directory, ``$FEDFT_HOME/smollm2-small/`` (usable as ``model.name``),
with ``recipe.json`` (blocks kept, data, steps, seed, held-out perplexity of the pruned model
before and after healing and of the full 135M model on the same text) and ``MANIFEST.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedft.assets.catalog import MANIFEST, fedft_home, sha256_file

NAME = "smollm2-small"
RECIPE = "recipe.json"
Log = Callable[[str], None]


@dataclass(frozen=True)
class HealOptions:
    source: str = "smollm2-135m"  # [D] the model cut down: an asset name or a directory
    keep_first: int = 2  # [D] first blocks kept
    keep_last: int = 2  # [D] last blocks kept (2 + 2 of SmolLM2-135M's 30)
    seq_len: int = 128  # [D] tokens per training chunk (packed documents)
    batch_size: int = 8  # [D] chunks per step
    lr: float = 2e-3  # [D] AdamW, linear warm-up then constant (pilot: held-out ppl 375 after 100 steps; 5e-4: 1130 after 50)
    warmup: int = 10  # [D] warm-up steps
    max_steps: int = 300  # [D] step cap (~2.3 s per step on one core: ~12 min)
    eval_every: int = 25  # [D] steps between held-out evaluations
    patience: int = 3  # [D] evaluations without a new best held-out loss before stopping
    heldout_docs: float = 0.05  # [D] fraction of documents held out
    heldout_chunks: int = 48  # [D] held-out chunks evaluated (the first, in the seeded order)
    seed: int = 0  # [D] data order, held-out split
    threads: int = 1  # torch threads


def kept_blocks(n_layers: int, first: int, last: int) -> list[int]:
    """The indices of the blocks kept: the first ``first`` and the last ``last``."""
    if first < 0 or last < 0 or first + last < 1 or first + last > n_layers:
        raise ValueError(f"cannot keep {first} + {last} blocks of {n_layers}")
    return list(range(first)) + list(range(n_layers - last, n_layers))


def cut_model(model: Any, keep: Sequence[int]) -> Any:
    """A new ``*ForCausalLM`` of the same class with only blocks ``keep`` (renumbered 0..k-1),
    sharing nothing with ``model`` (its tensors are copied)."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [model.config.layer_types[i] for i in keep]
    small = model.__class__(config)
    renamed = {}
    for k, v in model.state_dict().items():
        if ".layers." in k:
            head, rest = k.split(".layers.", 1)
            idx, tail = rest.split(".", 1)
            if int(idx) not in keep:
                continue
            k = f"{head}.layers.{list(keep).index(int(idx))}.{tail}"
        renamed[k] = v.clone()
    small.load_state_dict(renamed, strict=False)  # a tied LM head is not in the state dict twice
    small.tie_weights()
    return small.eval()


def documents(bbc_root: Path, chatterbot_root: Path, tokenizer: Any) -> list[tuple[str, str]]:
    """(source, text): every BBC News article as plain text and every English chatterbot
    conversation rendered through the tokenizer's chat template."""
    from fedft.data.sft_sets import _yaml_conversations
    from fedft.data.sources import load_bbc_news

    texts, _, _ = load_bbc_news(bbc_root)
    docs = [("bbc-news", t.strip()) for t in dict.fromkeys(texts)]  # deduplicated, in order
    for path in sorted((Path(chatterbot_root) / "english").glob("*.yml")):
        for turns in _yaml_conversations(path):
            msgs = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns) if t]
            if len(msgs) >= 2:
                docs.append(("chatterbot", tokenizer.apply_chat_template(msgs, tokenize=False)))
    return docs


def pack(docs: Sequence[str], tokenizer: Any, seq_len: int) -> torch.Tensor:
    """The documents' tokens, each ended by EOS, concatenated and cut into (n, seq_len) chunks
    (the remainder is dropped)."""
    eos = tokenizer.eos_token_id
    ids = [i for d in docs for i in [*tokenizer(d, add_special_tokens=False)["input_ids"], eos]]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def split_chunks(docs: list[tuple[str, str]], tokenizer: Any, opts: HealOptions) -> dict[str, Any]:
    """Seeded document-level split: train chunks (shuffled) and the held-out chunks."""
    order = np.random.default_rng(opts.seed).permutation(len(docs))
    n_held = max(1, round(len(docs) * opts.heldout_docs))
    held, train = [docs[i] for i in order[:n_held]], [docs[i] for i in order[n_held:]]
    train_chunks = pack([t for _, t in train], tokenizer, opts.seq_len)
    train_chunks = train_chunks[torch.from_numpy(np.random.default_rng([opts.seed, 1]).permutation(len(train_chunks)))]
    held_chunks = pack([t for _, t in held], tokenizer, opts.seq_len)[: opts.heldout_chunks]
    count = {s: sum(1 for x, _ in train if x == s) for s in ("bbc-news", "chatterbot")}
    return {"train": train_chunks, "heldout": held_chunks, "train_docs": count,
            "heldout_docs": {s: sum(1 for x, _ in held if x == s) for s in ("bbc-news", "chatterbot")}}


@torch.no_grad()
def mean_nll(model: Any, chunks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token negative log-likelihood (nats) over every chunk token but the first, in fp32."""
    was, total, n = model.training, 0.0, 0
    model.eval()
    for i in range(0, len(chunks), batch_size):
        x = chunks[i: i + batch_size]
        loss = model(input_ids=x, labels=x).loss
        total, n = total + float(loss) * x[:, 1:].numel(), n + x[:, 1:].numel()
    model.train(was)
    return total / max(n, 1)


def heal(model: Any, data: dict[str, Any], opts: HealOptions, log: Log) -> dict[str, Any]:
    """Train the kept blocks and the final norm; the best held-out evaluation's weights are kept."""
    torch.manual_seed(opts.seed)
    for name, p in model.named_parameters():
        p.requires_grad_("embed_tokens" not in name and "lm_head" not in name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr, weight_decay=0.0)
    train, held = data["train"], data["heldout"]
    best, best_state, stale, history, t0 = mean_nll(model, held), None, 0, [], time.perf_counter()
    history.append({"step": 0, "heldout_loss": best})
    step = 0
    while step < opts.max_steps and stale < opts.patience:
        model.train()
        at = (step * opts.batch_size) % max(len(train) - opts.batch_size + 1, 1)
        x = train[at: at + opts.batch_size]
        for g in opt.param_groups:
            g["lr"] = opts.lr * min(1.0, (step + 1) / max(opts.warmup, 1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss, step = loss.detach(), step + 1
        if step % opts.eval_every == 0 or step == opts.max_steps:
            h = mean_nll(model, held)
            history.append({"step": step, "train_loss": float(loss), "heldout_loss": h,
                            "seconds": time.perf_counter() - t0})
            log(f"step {step}: train loss {float(loss):.3f}, held-out loss {h:.3f} (ppl {math.exp(h):.1f})")
            if h < best - 1e-4:
                best, stale = h, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"steps": step, "best_heldout_loss": best, "history": history, "train_s": time.perf_counter() - t0,
            "stopped": "patience" if stale >= opts.patience else "max_steps"}


def _load(source: str) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedft.model.loading import resolve

    path = resolve(source)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path), path


def build_small(opts: HealOptions, out: Path | None = None, corpus: tuple[Path, Path] | None = None,
                log: Log = print) -> Path:
    """Cut, heal and save the small model to ``out`` (default ``$FEDFT_HOME/smollm2-small``);
    ``corpus`` is (BBC News dir, chatterbot dir), the assets by default. Returns ``out``."""
    torch.set_num_threads(max(opts.threads, 1))
    if corpus is None:
        from fedft.assets.catalog import asset_dir

        corpus = (asset_dir("bbc-news"), asset_dir("chatterbot"))
    out = Path(out) if out is not None else fedft_home() / NAME
    full, tok, source_path = _load(opts.source)
    n_layers = full.config.num_hidden_layers
    keep = kept_blocks(n_layers, opts.keep_first, opts.keep_last)
    data = split_chunks(documents(*corpus, tok), tok, opts)
    log(f"{len(data['train'])} training and {len(data['heldout'])} held-out chunks of {opts.seq_len} tokens")
    full_nll = mean_nll(full, data["heldout"])
    small = cut_model(full, keep)
    del full
    before = mean_nll(small, data["heldout"])
    log(f"held-out ppl: full {math.exp(full_nll):.1f}, cut to blocks {keep} {math.exp(before):.1f}")
    run = heal(small, data, opts, log)
    after = mean_nll(small, data["heldout"])
    recipe = {"name": NAME, "source": opts.source, "source_layers": n_layers, "blocks_kept": keep,
              "n_params": sum(p.numel() for p in small.parameters()), "options": asdict(opts),
              "data": {"train_docs": data["train_docs"], "heldout_docs": data["heldout_docs"],
                       "train_chunks": len(data["train"]), "heldout_chunks": len(data["heldout"]),
                       "train_tokens_seen": run["steps"] * opts.batch_size * opts.seq_len},
              "trained": "kept blocks and final norm (embeddings / tied LM head frozen)",
              "steps": run["steps"], "stopped": run["stopped"], "train_s": round(run["train_s"], 1),
              "heldout_ppl": {"cut_before_healing": math.exp(before), "healed": math.exp(after),
                              "full_135m": math.exp(full_nll)},
              "history": run["history"]}
    _save(small, tok, recipe, out)
    log(f"held-out ppl after healing {math.exp(after):.1f} ({run['steps']} steps); wrote {out}")
    return out


def _save(model: Any, tok: Any, recipe: dict[str, Any], out: Path) -> None:
    """Write the directory next to ``out`` and rename it into place, with a MANIFEST.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(build)
        tok.save_pretrained(build)
        (build / RECIPE).write_text(json.dumps(recipe, indent=1) + "\n")
        files = {p.relative_to(build).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(build.rglob("*")) if p.is_file()}
        manifest = {"manifest_version": 1, "name": out.name, "kind": "model", "built_by": "fedft heal",
                    "source": {"type": "built", "from": recipe["source"], "archive_sha256": ""},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
        (build / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        build.rename(out)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def read_recipe(path: Path | str) -> dict[str, Any]:
    """The recipe.json of a built small model directory."""
    return json.loads((Path(path) / RECIPE).read_text())


_HELP = {"source": "the model cut down (asset name or directory)", "keep_first": "first blocks kept",
         "keep_last": "last blocks kept", "seq_len": "tokens per training chunk", "batch_size": "chunks per step",
         "lr": "AdamW learning rate", "warmup": "linear warm-up steps", "max_steps": "step cap",
         "eval_every": "steps between held-out evaluations",
         "patience": "evaluations without a new best held-out loss before stopping",
         "heldout_docs": "fraction of documents held out", "heldout_chunks": "held-out chunks evaluated",
         "seed": "data order and held-out split", "threads": "torch threads"}


def add_heal_parser(sub: argparse._SubParsersAction) -> None:
    """``fedft heal``: its flags are the fields of :class:`HealOptions`."""
    from dataclasses import fields

    h = sub.add_parser("heal", help=f"build {NAME}: SmolLM2-135M-Instruct cut to a few blocks and healed",
                       description=f"Build the offline asset {NAME} (a smaller SmolLM2 for EFT up-scaling, "
                                   "docs/eft.md): keep the embeddings, final norm and the first and last blocks "
                                   "of SmolLM2-135M-Instruct, heal them by causal-LM training on BBC News and "
                                   "chatterbot (needs: fedft assets smollm2-135m bbc-news chatterbot), stop when "
                                   "the held-out loss stops falling, and save an HF directory with recipe.json to "
                                   f"$FEDFT_HOME/{NAME}. About 15 minutes on one core with the defaults.")
    for f in fields(HealOptions):
        h.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{_HELP.get(f.name, '')} (default {f.default})")
    h.add_argument("--out", type=Path, help=f"output directory (default $FEDFT_HOME/{NAME})")
    h.add_argument("--force", action="store_true", help="build again even if the directory has a recipe.json")
    h.set_defaults(fn=cmd_heal)


def cmd_heal(args: argparse.Namespace) -> int:
    from dataclasses import fields

    opts = HealOptions(**{f.name: getattr(args, f.name) for f in fields(HealOptions)})
    out = args.out or fedft_home() / NAME
    if (out / RECIPE).is_file() and not args.force:
        ppl = read_recipe(out)["heldout_ppl"]
        print(f"{out} is built (held-out ppl {ppl['healed']:.1f}; --force rebuilds)")
        return 0
    build_small(opts, out, log=lambda m: print(f"  {m}", flush=True))
    return 0
