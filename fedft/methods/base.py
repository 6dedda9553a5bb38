"""The fine-tuning method interface and its registry.

A method changes a :class:`~fedft.model.TaskModel` in place (``apply``: freeze everything,
then unfreeze or add its own tensors) and says which tensors travel in federated runs
(``update_keys``, dense by default). Apply the method to the full model, then split it: the
trainable tensors land in the right part without the method knowing about splitting.

A method registers itself with :func:`register_method`, which also declares its options
dataclass (the ``[method.<name>]`` table, validated in its ``__post_init__``); the dataclass lives
in the method's module. Lists of module roles in options are comma-separated strings over
:data:`ROLES` (see :func:`block_linears`), because the config parser casts scalars only.
In the options, ``[paper]`` marks a default taken from the method's paper (or its released code)
and ``[D]`` a default that is fedft's own choice; unmarked defaults are not attributed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedft.config import MethodConfig
from fedft.errors import check
from fedft.options import plugin_registrar
from fedft.registry import Registry

#: the block-linear roles that options may name (``targets = "q,v"``)
ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def parse_roles(text: str, name: str) -> tuple[str, ...]:
    """``"q, v"`` -> ``("q", "v")``, each checked against :data:`ROLES`."""
    roles = tuple(r.strip() for r in text.split(",") if r.strip())
    check(bool(roles) and all(r in ROLES for r in roles), name,
          f"a comma-separated list of {', '.join(ROLES)}")
    return roles


class BaseMethod:
    """Defaults for every hook; subclasses override ``apply`` and, where needed, the rest."""

    #: the registered name (set by :func:`register_method`)
    name: ClassVar[str] = ""
    #: the options dataclass of ``[method.<name>]`` (None: the method has no options)
    Options: ClassVar[type | None] = None
    description: ClassVar[str] = ""
    #: True when only the new task head trains, so frozen features can be computed once
    head_only: ClassVar[bool] = False
    #: True when ``finalize`` leaves the outputs unchanged (a merge); False when it changes them
    finalize_keeps_outputs: ClassVar[bool] = True

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg
        #: this method's options (``[method.<name>]`` as configured, else the defaults)
        self.options: Any = cfg.options_for(self.name) if self.Options is not None else None

    def prompt_tokens(self) -> int:
        """Soft prompt tokens the task model must be built with (0: none)."""
        return 0

    def deep_prompts(self) -> bool:
        return False

    def apply(self, model: nn.Module) -> None:
        """Freeze everything, then make the method's own tensors trainable."""
        raise NotImplementedError

    def update_keys(self, model: nn.Module) -> list[str]:
        """Names of the tensors a client may train in this run, i.e. what a federated round
        downloads (default: the trainable ones, sorted)."""
        return sorted(n for n, p in model.named_parameters() if p.requires_grad)

    def on_round_start(self, model: nn.Module, server_round: int) -> None:
        """Hook at the start of each round or epoch (default: nothing). It must depend on the
        round and the model only: in a federated run the server and every client call it."""

    def on_client_round(self, model: nn.Module, server_round: int) -> None:
        """Hook at the start of one client's round, after the global state is loaded (default:
        :meth:`on_round_start`). One process may train several clients in turn, so state kept
        here must not carry from one client's call to the next."""
        self.on_round_start(model, server_round)

    def finalize(self, model: nn.Module) -> None:
        """Hook after training, before the final evaluation: merge, interpolate or prune.

        ``finalize_keeps_outputs`` says whether the model's outputs stay the same (within fp32
        rounding); the default does nothing.
        """

    def download(self, model: nn.Module) -> dict[str, np.ndarray]:
        """What the server sends a client each round: dense copies of ``update_keys``."""
        state = dict(model.named_parameters())
        return {k: state[k].detach().cpu().numpy().copy() for k in self.update_keys(model)}

    def describe(self) -> dict:
        """What the method decided during the run (selections, budgets, pruned counts), for
        ``summary.json``'s ``method_report``; plain JSON values (default: nothing)."""
        return {}

    def encode_update(self, model: nn.Module) -> dict[str, np.ndarray]:
        """What a client sends back: dense copies of the ``update_keys`` tensors it trained.

        Methods whose trainable set is a part of ``update_keys`` (HFT's half, GreenTrainer's
        selection) thus send only that part; sparse methods override this."""
        state = dict(model.named_parameters())
        return {k: state[k].detach().cpu().numpy().copy() for k in self.update_keys(model)
                if state[k].requires_grad}

    def decode_update(self, model: nn.Module, update: dict[str, np.ndarray]) -> None:
        """Load a received update into ``model`` (in place)."""
        load_tensors(model, update)


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def load_tensors(model: nn.Module, update: dict[str, np.ndarray]) -> None:
    """Copy named arrays into the model's parameters and buffers (names and shapes checked)."""
    state = state_tensors(model)
    with torch.no_grad():
        for k, v in update.items():
            if k not in state:
                raise KeyError(f"update has unknown tensor {k!r}")
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"update tensor {k!r} has shape {v.shape}, expected {tuple(state[k].shape)}")
            state[k].copy_(torch.from_numpy(np.asarray(v)))


METHODS: Registry[type[BaseMethod]] = Registry("method")

#: ``@register_method("name", NameOptions)``: register a method and its ``[method.<name>]`` table
register_method = plugin_registrar(METHODS, "method")


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def new_head(model: nn.Module) -> nn.Module | None:
    """The new task head every parameter method trains: the classifier. None for a causal LM,
    whose LM head is pre-trained (and tied to the input embeddings in Llama-family models such as
    SmolLM2), so it stays frozen unless a method trains it explicitly (full_ft, linear_probe)."""
    return None if getattr(model, "task", "classification") == "causal_lm" else model.output_layer


def unfreeze(modules: list[nn.Module | None]) -> None:
    for m in modules:
        if m is not None:
            for p in m.parameters():
                p.requires_grad_(True)


#: names of the block linears by role, relative to one block (ViT/DINOv2, Llama, BERT)
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "q": ("attention.q_proj", "self_attn.q_proj", "attention.self.query"),
    "k": ("attention.k_proj", "self_attn.k_proj", "attention.self.key"),
    "v": ("attention.v_proj", "self_attn.v_proj", "attention.self.value"),
    "o": ("attention.o_proj", "self_attn.o_proj", "attention.output.dense"),
    "gate": ("mlp.gate_proj",),
    "up": ("mlp.fc1", "mlp.up_proj", "intermediate.dense"),
    "down": ("mlp.fc2", "mlp.down_proj", "output.dense"),
}


def block_linears(model: nn.Module) -> list[dict[str, str]]:
    """Per block, role -> full module name in ``model`` (``q k v o`` and ``gate up down``)."""
    blocks = model.blocks  # type: ignore[attr-defined]
    prefix = {id(b): n for n, b in model.named_modules()}
    out = []
    for block in blocks:
        names = {n for n, _ in block.named_modules()}
        roles = {}
        for role, cands in ROLE_NAMES.items():
            hit = [c for c in cands if c in names]
            if hit:
                roles[role] = f"{prefix[id(block)]}.{hit[0]}"
        out.append(roles)
    return out


def role_modules(model: nn.Module, roles: tuple[str, ...] | list[str]) -> list[str]:
    """Full names of the block linears with the given roles, in block order."""
    return [names[r] for names in block_linears(model) for r in roles if r in names]


def head_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of the backbone's attention."""
    cfg = model.backbone.config  # type: ignore[attr-defined]
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    return heads, kv, getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
