"""Compute precision: the dtype the matmul-heavy parts of a model run in (``train.precision``).

Compute precision is separate from the wire format (``split.wire_dtype``): it decides how the
transformer blocks (and a language model's LM head) compute, not what travels. ``bf16`` runs them
under :func:`torch.autocast` with bfloat16: weights stay float32 (the optimizer updates float32
master weights), matmuls and attention run in bfloat16, and every part returns float32 at its
boundary, so the tensors that cross a split, the loss and the ledger are what they are in fp32.
``auto`` picks ``bf16`` where the hardware computes it natively (a CPU with AVX512-BF16 or AMX, a
GPU that reports bfloat16 support) and ``fp32`` elsewhere, where emulated bfloat16 would be slower.

Attention (``model.attention``): PyTorch's fused CPU attention kernel is slow in bfloat16 (its
forward + backward of DINOv2-small took 34.2 ms/sample in bf16 against 26.4 with plain attention;
experiments/reports/performance.md), while
the plain matmul-softmax-matmul attention runs at the bf16 matmul rate; so ``auto`` picks ``eager``
attention for bf16 on a CPU and PyTorch's ``sdpa`` everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["fp32", "bf16", "auto"]
PRECISIONS = ("fp32", "bf16", "auto")
ATTENTIONS = ("auto", "sdpa", "eager")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 matmul


@cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bfloat16 flags this CPU reports (empty where none, or where it cannot tell)."""
    found: set[str] = set()
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    for flag, probe in probes.items():  # torch's own CPUID probes, where this build has them
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            found.add(flag)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                found.update(set(line.split(":", 1)[-1].split()) & set(CPU_BF16_FLAGS))
                break
    return tuple(sorted(found))


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively (not by emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False


def resolve(precision: str, device: torch.device | str = "cpu") -> Literal["fp32", "bf16"]:
    """The precision actually used: ``auto`` becomes ``bf16`` where native, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision  # type: ignore[return-value]


def attention(setting: str, used: str, device: torch.device | str = "cpu") -> str:
    """The attention implementation for a resolved precision (``auto``: see the module docstring)."""
    if setting not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    return "eager" if used == "bf16" and torch.device(device).type == "cpu" else "sdpa"


def describe(precision: str, attn: str = "auto", device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a run records in summary.json: the settings, what they resolved to, and why."""
    device = torch.device(device)
    used = resolve(precision, device)
    return {"setting": precision, "used": used, "attention": attention(attn, used, device),
            "device": device.type, "bf16_native": bf16_native(device),
            "cpu_flags": list(cpu_bf16_flags()) if device.type == "cpu" else []}


def autocast(dtype: torch.dtype, device_type: str = "cpu") -> Any:
    """``torch.autocast`` to ``dtype``, or a no-op context for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type, dtype=dtype)



@contextmanager
def weight_cast_cache(model: torch.nn.Module) -> Iterator[None]:
    """Cast each weight to the compute dtype once for the whole block instead of once per forward
    (evaluation, where the weights do not change; 11 % of a bf16 DINOv2 forward was the cast).

    Autocast caches the low-precision copy of a float32 leaf that requires grad until the
    outermost autocast block exits. Inside this block the frozen weights are marked as requiring
    grad (no graph is built: the caller runs under ``torch.no_grad``), and an outer, disabled
    autocast block keeps the cache from one batch to the next; the numbers are the same.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("weight_cast_cache is for evaluation under torch.no_grad()")
    frozen = [p for p in model.parameters() if not p.requires_grad]
    device = next((p.device.type for p in model.parameters()), "cpu")
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.autocast(device, enabled=False):
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
