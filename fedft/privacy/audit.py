"""``fedft privacy RUN_DIR``: the attacks a curious server mounts on a split run, replayed and scored.

The server legitimately has the public pre-trained weights, the body, the prompts and tail it
aggregates (so the checkpoint's client state), and the traffic: the activations the head sends
up and the gradients the tail sends up, each through the run's wire codec. This replays that
traffic on a sample of the clients' training data at the run's last checkpoint, with the run's
cut, precision and defences, under each codec asked for, and scores what the server recovers:

* images: white-box inversion (closed-form least squares where the head is affine in the pixels,
  that is ``head_blocks = 0``; else optimisation against the known head) and a black-box
  decoder trained on auxiliary images disjoint from the clients' data; PSNR/SSIM against the
  raw 28 x 28 (or whatever the dataset's) images, beside a chance baseline (the auxiliary mean image);
* text: token recovery by nearest embedding and by a probe trained on auxiliary text (token
  accuracy over real tokens; chance = always the most frequent auxiliary token);
* labels: from the gradients the tail sends up, the known-tail attack, direction clustering and
  the gradient-norm attack, each beside its chance baseline.

Writes ``privacy.json`` (stable keys) and ``privacy.png`` (originals over reconstructions).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedft.config import PrivacyConfig
from fedft.errors import FedftError
from fedft.privacy.common import attacker_view, token_rows, wire
from fedft.privacy.decoders import fit_token_probe, nearest_tokens
from fedft.privacy.images import image_attacks
from fedft.privacy.labels import cluster_labels, known_tail_labels, norm_auc
from fedft.privacy.metrics import label_scores

PRIVACY_JSON = "privacy.json"
PRIVACY_PNG = "privacy.png"


@dataclass(frozen=True)
class AuditOptions:
    """What to replay and how hard to attack ([D] fedft's defaults)."""

    samples: int = PrivacyConfig.samples  # clients' training samples attacked
    aux_size: int = PrivacyConfig.aux_size  # auxiliary samples for the learned attacks (disjoint from the clients')
    codecs: tuple[str, ...] = tuple(PrivacyConfig.codecs.split(","))
    inversion_steps: int = PrivacyConfig.inversion_steps  # Adam steps of the optimisation inversion (h >= 1)
    decoder_epochs: int = PrivacyConfig.decoder_epochs
    probe_epochs: int = 5
    grid: int = 8  # images per row of privacy.png
    seed: int = 0

    @classmethod
    def from_config(cls, c: PrivacyConfig) -> AuditOptions:
        """From a :class:`fedft.config.PrivacyConfig` (the ``[privacy]`` section)."""
        return cls(samples=c.samples, aux_size=c.aux_size, inversion_steps=c.inversion_steps,
                   decoder_epochs=c.decoder_epochs,
                   codecs=tuple(x.strip() for x in c.codecs.split(",") if x.strip()))

    def __post_init__(self) -> None:
        from fedft.body.codec import check_wire_dtype

        for name in ("samples", "aux_size", "inversion_steps", "decoder_epochs", "probe_epochs"):
            if getattr(self, name) < 1:
                raise FedftError(f"privacy {name} must be >= 1, got {getattr(self, name)}")
        if not self.codecs:
            raise FedftError("privacy codecs must name at least one wire dtype (fp32, fp16, bf16)")
        for c in self.codecs:
            try:
                check_wire_dtype(c)
            except ValueError as e:
                raise FedftError(f"privacy codecs: {e}") from None


def _text_attacks(run: Any, parts: Any, victims: list[str], opts: AuditOptions,
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    from fedft.data.datasets import tokenize

    model, cfg = run.model, run.cfg
    enc = tokenize(run.preprocess, victims, cfg.data.max_length)
    aux_texts = list(run.raw.test_x)[: opts.aux_size]  # the test split: disjoint from the clients' data
    aux = tokenize(run.preprocess, aux_texts, cfg.data.max_length)

    def head(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([parts.head({k: v[i:i + 16] for k, v in batch.items()})[0]
                              for i in range(0, len(batch["input_ids"]), 16)])

    sent, aux_sent = head(enc), head(aux)
    rows = token_rows(model, sent.shape[1])  # aligned with input_ids
    real = enc["attention_mask"].bool()
    ids = enc["input_ids"]
    aux_ids = aux["input_ids"][aux["attention_mask"].bool()]
    common = torch.bincount(aux_ids).argmax()
    out: list[dict[str, Any]] = [{"attack": "chance (most frequent auxiliary token)", "target": "tokens",
                                  "codec": "-", "token_accuracy": float((ids[real] == common).float().mean())}]
    vocab = int(model.backbone.get_input_embeddings().num_embeddings)

    def embed(cand: torch.Tensor) -> torch.Tensor:  # (V, T) ids -> (V, T, D) at the cut with no blocks
        h, _ = model.arch.embed(model.backbone, {"input_ids": cand, "attention_mask": torch.ones_like(cand)})
        return h

    for codec in opts.codecs:
        observed = wire(sent, codec)[:, rows]
        t0 = time.time()
        with attacker_view(model):
            got = nearest_tokens(embed, observed, vocab)
        out.append({"attack": "nearest embedding", "target": "tokens", "codec": codec,
                    "token_accuracy": float((got[real] == ids[real]).float().mean()),
                    "seconds": round(time.time() - t0, 1)})
        t0 = time.time()
        aux_obs = wire(aux_sent, codec)[:, rows][aux["attention_mask"].bool()]
        probe = fit_token_probe(aux_obs, aux_ids, opts.probe_epochs, opts.seed)
        got = probe.predict(observed[real])
        out.append({"attack": "learned probe", "target": "tokens", "codec": codec,
                    "token_accuracy": float((got == ids[real]).float().mean()),
                    "seconds": round(time.time() - t0, 1),
                    "auxiliary": f"{len(aux_texts)} {cfg.data.name} test texts"})
        log(f"tokens ({codec}): nearest {out[-2]['token_accuracy']:.3f}, probe {out[-1]['token_accuracy']:.3f}")
    return out


def _label_attacks(run: Any, parts: Any, batches: list[dict[str, torch.Tensor]], opts: AuditOptions,
                   log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Replay split training's traffic (train-mode tail, the run's batch size) and attack the
    gradients the tail sends up."""
    import copy

    model, n_classes = run.model, run.raw.num_labels
    saved = copy.deepcopy(parts.tail.state_dict())  # train mode updates running statistics
    out: list[dict[str, Any]] = []
    labels = torch.cat([b["labels"] for b in batches])
    for codec in opts.codecs:
        gs, inferred = [], []
        parts.tail.train()  # as in split training
        for batch in batches:
            with torch.no_grad():
                h, mask = parts.head(batch)
                z = wire(parts.body(wire(h, codec), mask), codec)
            zc = z.clone().requires_grad_(True)
            model.loss(parts.tail(zc, mask), batch).backward()
            assert zc.grad is not None
            g = wire(zc.grad, codec)
            gs.append(g)
            inferred.append(known_tail_labels(lambda t, m=mask: parts.tail(t, m), z, g, n_classes))
            parts.tail.load_state_dict(saved)  # train-mode statistics as at the start of the batch
        parts.tail.eval()
        grads, inferred_all = torch.cat(gs), torch.cat(inferred)
        known = label_scores(labels, inferred_all)
        clustered = label_scores(labels, cluster_labels(grads, labels, n_classes, opts.seed))
        auc, auc_chance = norm_auc(grads, labels, seed=opts.seed)
        out += [
            {"attack": "known tail (gradient matching)", "target": "labels", "codec": codec,
             "accuracy": known["accuracy"], "chance": known["chance_accuracy"]},
            {"attack": "gradient direction clustering (best naming)", "target": "labels", "codec": codec,
             "accuracy": clustered["accuracy"], "chance": clustered["chance_accuracy"]},
            {"attack": "gradient norm (one-vs-rest AUC)", "target": "labels", "codec": codec,
             "auc": auc, "chance": auc_chance},
        ]
        log(f"labels ({codec}): known tail {known['accuracy']:.3f}, clustering {clustered['accuracy']:.3f}, "
            f"norm AUC {auc:.3f} (chance {known['chance_accuracy']:.3f} / {auc_chance:.3f})")
    return out


def _open(run_dir: str | Path, opts: AuditOptions) -> tuple[Any, Any, np.ndarray]:
    """The run at its checkpoint (eval mode), its split parts, and the attacked sample indices."""
    from fedft.evaluation import load_run
    from fedft.split import SplitSpec, split_model
    from fedft.strategies import STRATEGIES

    path = Path(run_dir)
    run = load_run(path)
    cfg = run.cfg
    if STRATEGIES.get(cfg.federation.strategy).family != "split":
        raise FedftError(f"{path} ran strategy {cfg.federation.strategy!r}, which sends no activations; the "
                         "privacy attacks replay a split run (sfprompt, sfl, split_fedavg, ...)")
    run.model.eval()
    parts = split_model(run.model, SplitSpec(cfg.split.head_blocks, cfg.split.tail_blocks))
    torch.manual_seed(opts.seed)  # the defence noise draws
    n = len(run.raw.train_y)
    return run, parts, np.sort(np.random.default_rng(opts.seed).choice(n, size=min(opts.samples, n), replace=False))


def _batches(run: Any, idx: np.ndarray) -> list[dict[str, torch.Tensor]]:
    from fedft.data.datasets import encode

    train = encode(run.raw, "train", run.preprocess, run.cfg.data.max_length)
    b = run.cfg.train.batch_size
    return [train.batch(idx[i:i + b]) for i in range(0, len(idx), b)]


def _dcor_rows(run: Any, parts: Any, batches: list[dict[str, torch.Tensor]],
               codecs: tuple[str, ...]) -> list[dict[str, Any]]:
    """NoPeek's own measure: the distance correlation between the attacked samples' inputs and
    what they send (1 = an invertible-by-distances copy, 0 = independent)."""
    from fedft.split.defence import distance_correlation, raw_input

    x = torch.cat([raw_input(run.model, b) for b in batches])
    with torch.no_grad():
        sent = torch.cat([parts.head(b)[0] for b in batches])
    return [{"attack": "distance correlation (input, sent)", "target": "input", "codec": c,
             "dcor": float(distance_correlation(x, wire(sent, c)))} for c in codecs]


def sent_distance_correlation(run_dir: str | Path, opts: AuditOptions | None = None) -> list[dict[str, Any]]:
    """Only the distance-correlation rows of :func:`audit` (for runs attacked before they existed)."""
    opts = opts or AuditOptions()
    run, parts, idx = _open(run_dir, opts)
    return _dcor_rows(run, parts, _batches(run, idx), opts.codecs)


def audit(run_dir: str | Path, opts: AuditOptions | None = None,
          log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Replay RUN_DIR's split traffic, attack it, write ``privacy.json`` and ``privacy.png``."""
    opts = opts or AuditOptions()
    t0 = time.time()
    path = Path(run_dir)
    run, parts, idx = _open(path, opts)
    cfg = run.cfg
    victims = run.raw.train_x[idx] if isinstance(run.raw.train_x, np.ndarray) else [run.raw.train_x[i] for i in idx]
    recon: dict[str, torch.Tensor] = {}
    if run.raw.modality == "image":
        rows, recon = image_attacks(run, parts, victims, opts, log)
    elif run.raw.modality == "text":
        rows = _text_attacks(run, parts, victims, opts, log)
    else:
        raise FedftError(f"privacy attacks support image and text classification runs, not {run.raw.modality!r}")
    batches = _batches(run, idx)
    rows += _dcor_rows(run, parts, batches, opts.codecs)
    rows += _label_attacks(run, parts, batches, opts, log)
    result = {
        "run_dir": str(path), "round": run.round, "strategy": cfg.federation.strategy,
        "model": cfg.model.name, "dataset": cfg.data.name,
        "split": {"head_blocks": cfg.split.head_blocks, "tail_blocks": cfg.split.tail_blocks,
                  "wire_dtype": cfg.split.wire_dtype, "noise": cfg.split.noise, "nopeek": cfg.split.nopeek,
                  "train_head": cfg.split.train_head},
        "options": {**asdict(opts), "codecs": list(opts.codecs)},
        "attacks": rows, "seconds": round(time.time() - t0, 1),
    }
    (path / PRIVACY_JSON).write_text(json.dumps(result, indent=2) + "\n")
    if recon:
        from fedft.privacy.report import save_grid

        save_grid(recon, path / PRIVACY_PNG, opts.grid,
                  title=f"what the server reconstructs: h = {cfg.split.head_blocks}, noise {cfg.split.noise}, "
                        f"nopeek {cfg.split.nopeek}")
    return result
