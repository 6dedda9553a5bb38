"""GOT-D (Kang et al., "Get more for less: Principled Data Selection for Warming Up Fine-Tuning in
LLMs", ICLR 2024, arXiv 2405.02774; code REDSgnaoh/DV4LLM): pre-fine-tuning data chosen by the
gradient of an entropic OT distance between the candidates and the target task.

1. Texts are normalised to about 1,000 characters (:func:`chunk_texts`) [paper].
2. A sentence encoder phi embeds them (:class:`SentenceEmbedder`, MiniLM by default [D]; the code
   mean-pools a DistilBERT fine-tuned on the target task).
3. Entropic OT between mu_U (uniform over the n_U candidates) and mu_T (uniform over the n_T
   targets), cost C_ij = ||phi(u_i) - phi(t_j)||^2; the candidates' dual potential f is the
   gradient of OT_eps(mu_U, mu_T) with respect to the candidates' masses (up to a constant).
4. Calibrated gradient (LAVA): g_i = f_i - sum_{j != i} f_j / (n_U - 1) [paper], i.e.
   n_U/(n_U-1) (f_i - mean f): the derivative of the OT cost when mass moves from all the
   others onto candidate i. The code divides by n_U instead, g_i = (1 + 1/n_U) f_i - mean f, which
   neither sums to 0 nor ignores a constant shift of f (each g moves by c/n_U) but ranks alike.
5. The B candidates with the most negative g (moving mass there lowers the OT distance most)
   "nudge the pre-training distribution towards the target" [paper].

:class:`TargetSimilarity` is the control: the B candidates nearest to the mean target embedding.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedft.data.sft import SFTExample
from fedft.recipes.base import Recipe, RecipeContext, RecipeResult, register_recipe

#: a sentence encoder: texts -> (n, d) embeddings
Embedder = Callable[[list[str]], np.ndarray]


def text_of(item: str | SFTExample) -> str:
    """The text of a pool item: a string, or an example's prompt + "\\n" + response (the
    response alone when the prompt is empty)."""
    if isinstance(item, str):
        return item
    return f"{item.prompt}\n{item.response}" if item.prompt else item.response


def _split(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, cut at the last whitespace of each
    window (a hard cut when there is none in its second half)."""
    out = []
    while len(text) > size:
        cut = max(text.rfind(c, 0, size + 1) for c in " \n\t")
        cut = cut if cut >= size // 2 else size
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*out, text] if text else out


def chunk_texts(texts: Sequence[str], size: int = 1000, sep: str = "\n\n") -> list[str]:
    """Texts of one source normalised to about ``size`` characters [paper]: a long text is split
    at whitespace near ``size``, consecutive short pieces are joined (with ``sep``) while the
    result stays within ``size``. Empty texts are dropped; order is kept."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    out: list[str] = []
    buf = ""
    for text in texts:
        for piece in _split(text.strip(), size):
            if buf and len(buf) + len(sep) + len(piece) > size:
                out.append(buf)
                buf = ""
            buf = f"{buf}{sep}{piece}" if buf else piece
    return [*out, buf] if buf else out


@dataclass
class SentenceEmbedder:
    """phi: mean of the last hidden state over the attention mask, L2-normalised (the
    sentence-transformers recipe of all-MiniLM-L6-v2). ``model``: an offline asset name
    (``minilm-l6``), a local directory or a Hub id; loaded on first call."""

    model: str = "minilm-l6"
    batch_size: int = 64
    max_length: int = 256  # all-MiniLM-L6-v2's max_seq_length; ~1,000 characters fit
    device: str | None = None
    _net: Any = field(default=None, init=False, repr=False)
    _tok: Any = field(default=None, init=False, repr=False)

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from fedft.model.loading import resolve

        source = resolve(self.model)
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tok = AutoTokenizer.from_pretrained(source)
        self._net = AutoModel.from_pretrained(source).to(self.device).eval()

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        if self._net is None:
            self._load()
        out = []
        starts = range(0, len(texts), self.batch_size)
        for s in tqdm(starts, desc="GOT-D embed", unit="batch", disable=len(starts) < 2):
            enc = self._tok(list(texts[s: s + self.batch_size]), padding=True, truncation=True,
                            max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                h = self._net(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
            out.append(e.float().cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, 0))


def _as_2d(emb: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"GOT-D {what} embeddings must be a non-empty (n, d) array, got shape {x.shape}")
    return x


def entropic_ot(pool_emb: np.ndarray, target_emb: np.ndarray, reg: float = 0.1, normalise_cost: bool = True,
                num_iter: int = 2000, stop_thr: float = 1e-6) -> tuple[np.ndarray, float]:
    """Entropic OT between uniform mu_U (pool) and mu_T (target) with C_ij = ||u_i - t_j||^2:
    the candidates' dual potential f = reg * log u (POT's ``sinkhorn_log``; defined up to a
    constant) and the transport cost <P, C> of the plan, on the raw (unnormalised) cost.

    ``normalise_cost`` divides C by its max before solving, so ``reg`` is relative to the
    largest cost and f is in those units [D]; the code solves on the raw cost with an absolute
    eps = 0.1 (ott-jax PointCloud) on unnormalised embeddings. Normalised with ``reg`` = r is
    the raw problem with eps = r * max C (f divided by max C): the same ranking."""
    x, y = _as_2d(pool_emb, "pool"), _as_2d(target_emb, "target")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"GOT-D pool and target embeddings differ in width: {x.shape[1]} != {y.shape[1]}")
    if reg <= 0:
        raise ValueError(f"GOT-D reg must be > 0, got {reg}")
    import ot  # POT, imported here: every config parse loads the recipe modules

    cost = np.maximum(ot.dist(x, y, metric="sqeuclidean"), 0.0)
    scale = float(cost.max()) if normalise_cost and cost.max() > 0 else 1.0
    plan, log = ot.sinkhorn(ot.unif(len(x)), ot.unif(len(y)), cost / scale, reg, method="sinkhorn_log",
                            log=True, numItermax=num_iter, stopThr=stop_thr)
    return reg * np.asarray(log["log_u"], dtype=np.float64), float((plan * cost).sum())


def calibrate(f: np.ndarray) -> np.ndarray:
    """LAVA's calibrated gradient g_i = f_i - sum_{j != i} f_j / (n - 1) [paper]: sums to 0 and
    is unchanged by a constant shift of f. (The code divides by n, not n - 1.)"""
    f = np.asarray(f, dtype=np.float64)
    n = len(f)
    return np.zeros(n) if n < 2 else f - (f.sum() - f) / (n - 1)


def calibrated_gradient(pool_emb: np.ndarray, target_emb: np.ndarray, reg: float = 0.1,
                        normalise_cost: bool = True, num_iter: int = 2000, stop_thr: float = 1e-6) -> np.ndarray:
    """GOT-D's score of each candidate (float64, shape (n_U,)): the calibrated OT gradient;
    the most negative first."""
    f, _ = entropic_ot(pool_emb, target_emb, reg, normalise_cost, num_iter, stop_thr)
    return calibrate(f)


def _check_budget(budget: int | None, who: str) -> int:
    if budget is None:
        raise ValueError(f"{who} needs a budget: select(pool, budget=B)")
    if budget < 0:
        raise ValueError(f"{who} budget must be >= 0, got {budget}")
    return budget


def _take(score: np.ndarray, budget: int) -> list[int]:
    """The indices of the ``budget`` lowest scores (stable on ties), in increasing order."""
    return sorted(int(i) for i in np.argsort(score, kind="stable")[:budget])


@dataclass
class GOTD:
    """The GOT-D selector: the ``budget`` candidates with the most negative calibrated gradient
    of OT_eps(candidates, ``target``). The target embeddings are computed once."""

    embed: Embedder
    target: Sequence[str | SFTExample]
    reg: float = 0.1  # [code] ott-jax epsilon
    normalise_cost: bool = True  # [D] reg relative to max C
    num_iter: int = 2000  # [code] max_iterations
    stop_thr: float = 1e-6  # [D]
    _target_emb: np.ndarray | None = field(default=None, init=False, repr=False)
    last_gradient: np.ndarray | None = field(default=None, init=False, repr=False)
    last_ot_cost: float | None = field(default=None, init=False, repr=False)

    def target_embeddings(self) -> np.ndarray:
        if self._target_emb is None:
            self._target_emb = _as_2d(self.embed([text_of(t) for t in self.target]), "target")
        return self._target_emb

    def gradient(self, pool: Sequence[str | SFTExample]) -> np.ndarray:
        """The calibrated gradient g of each candidate (also kept with the OT cost)."""
        f, cost = entropic_ot(self.embed([text_of(p) for p in pool]), self.target_embeddings(), self.reg,
                              self.normalise_cost, self.num_iter, self.stop_thr)
        self.last_gradient, self.last_ot_cost = calibrate(f), cost
        return self.last_gradient

    def select(self, pool: Sequence[str | SFTExample], budget: int | None = None) -> list[int]:
        """The ``budget`` candidates with the lowest g (all of them when the pool is smaller)."""
        budget = _check_budget(budget, "GOT-D")
        return _take(self.gradient(pool), budget) if len(pool) else []


@dataclass
class TargetSimilarity:
    """Control: the ``budget`` candidates nearest to the mean target embedding, by cosine
    similarity, or squared euclidean distance on the embeddings as given (the same order for
    unit-norm embeddings such as :class:`SentenceEmbedder`'s)."""

    embed: Embedder
    target: Sequence[str | SFTExample]
    metric: Literal["cosine", "sqeuclidean"] = "cosine"
    _centre: np.ndarray | None = field(default=None, init=False, repr=False)

    def select(self, pool: Sequence[str | SFTExample], budget: int | None = None) -> list[int]:
        budget = _check_budget(budget, "TargetSimilarity")
        if self.metric not in ("cosine", "sqeuclidean"):
            raise ValueError(f"TargetSimilarity metric must be cosine or sqeuclidean, got {self.metric!r}")
        if not len(pool):
            return []
        if self._centre is None:
            self._centre = _as_2d(self.embed([text_of(t) for t in self.target]), "target").mean(0)
        x = _as_2d(self.embed([text_of(p) for p in pool]), "pool")
        if self.metric == "cosine":
            unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            score = -(unit @ self._centre) / max(float(np.linalg.norm(self._centre)), 1e-12)
        else:
            score = ((x - self._centre) ** 2).sum(1)
        return _take(score, budget)


@dataclass(frozen=True)
class GotDOptions:
    """``[recipe.got_d]``: GOT-D's settings, and the target/held-out split of the pool builder
    (:func:`fedft.recipes.got_d_pool.gotd_pool`, run by the experiment)."""

    budget: int = 200  # [D] candidates selected
    reg: float = 0.1  # [code] entropic regularisation eps
    normalise_cost: bool = True  # [D] divide C by its max (reg relative to it); code: raw cost
    num_iter: int = 2000  # [code] Sinkhorn max_iterations
    stop_thr: float = 1e-6  # [D] Sinkhorn marginal tolerance (code: 0.1 with momentum)
    chunk_chars: int = 1000  # [paper] texts normalised to ~1,000 characters; 0 = keep as given
    embedder: str = "minilm-l6"  # [D] sentence encoder (code: DistilBERT fine-tuned on the target)
    embed_batch_size: int = 64  # [D]
    target_section: str = "tech"  # [D] BBC News section that plays the target task
    target_size: int = 100  # [D] target-section articles given to GOT-D as the target set
    heldout_size: int = 100  # [D] target-section articles held out for evaluation

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"got_d budget must be >= 1, got {self.budget}")
        if self.reg <= 0:
            raise ValueError(f"got_d reg must be > 0, got {self.reg}")
        if self.num_iter < 1 or self.stop_thr <= 0:
            raise ValueError(f"got_d num_iter >= 1 and stop_thr > 0, got {self.num_iter}, {self.stop_thr}")
        if self.chunk_chars < 0:
            raise ValueError(f"got_d chunk_chars must be >= 0, got {self.chunk_chars}")
        if not self.embedder:
            raise ValueError("got_d embedder must name an encoder (an asset, a directory or a Hub id)")
        if self.embed_batch_size < 1:
            raise ValueError(f"got_d embed_batch_size must be >= 1, got {self.embed_batch_size}")
        if self.target_size < 1 or self.heldout_size < 0:
            raise ValueError(f"got_d target_size >= 1, heldout_size >= 0, got {self.target_size}, {self.heldout_size}")


def _grouped_chunks(examples: Sequence[SFTExample], size: int) -> tuple[list[str], list[str]]:
    """Texts and groups, each group's texts chunked together (in pool order) when ``size`` > 0."""
    if size <= 0:
        return [text_of(e) for e in examples], [e.group for e in examples]
    by_group: dict[str, list[str]] = defaultdict(list)
    for e in examples:
        by_group[e.group].append(text_of(e))
    pairs = [(t, g) for g, texts in by_group.items() for t in chunk_texts(texts, size)]
    return [t for t, _ in pairs], [g for _, g in pairs]


@register_recipe("got_d", options=GotDOptions)
class GotDRecipe(Recipe):
    """GOT-D as a data recipe. Convention: the pool's examples with ``task == "target"`` are the
    target texts (a sample of the target task, unlabelled use), all others are candidates; the
    result is ``budget`` candidates as pre-fine-tuning text (``prompt=""``, ``task="pretrain"``,
    ``group`` = their source).

    Federated caveat: each client could select from its own pool against a shared set of target
    embeddings (which exposes the target embeddings to every client), or send its pool
    embeddings to the server (a privacy exposure of the clients' data); fedft runs GOT-D
    centrally, so ``federated = False``."""

    description = ("GOT-D: pre-fine-tuning data chosen by the gradient of an entropic OT distance to the "
                   "target (Kang et al., ICLR 2024)")
    federated = False

    def __init__(self, options: GotDOptions | None = None, embed: Embedder | None = None) -> None:
        super().__init__(options)
        self.embed = embed

    def build(self, pool: Sequence[SFTExample], ctx: RecipeContext) -> RecipeResult:
        o: GotDOptions = self.options
        target = [e for e in pool if e.task == "target"]
        if not target:
            raise ValueError('got_d needs target texts: pool examples with task == "target"')
        texts, groups = _grouped_chunks([e for e in pool if e.task != "target"], o.chunk_chars)
        target_texts, _ = _grouped_chunks(target, o.chunk_chars)
        embed = self.embed or SentenceEmbedder(o.embedder, batch_size=o.embed_batch_size)
        sel = GOTD(embed, target_texts, reg=o.reg, normalise_cost=o.normalise_cost, num_iter=o.num_iter,
                   stop_thr=o.stop_thr)
        keep = sel.select(texts, o.budget)
        examples = [SFTExample("", texts[i], task="pretrain", group=groups[i]) for i in keep]
        report = {"selected": len(keep), "candidates": len(texts), "target": len(target_texts),
                  "by_group": dict(sorted(Counter(groups[i] for i in keep).items())),
                  "ot_cost": sel.last_ot_cost}
        return RecipeResult(examples=examples, report=report)
