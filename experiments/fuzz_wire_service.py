"""The body-service targets of ``fuzz_wire.py``: random call sequences on an in-process
``BodyService`` (:class:`ServiceFuzz`) and hostile callers against a real gRPC service on loopback
(:func:`grpc_storm`).

A sequence is a list of ``(op, slot, kind, a, b)``: ``op`` is Open, Forward, Backward or Close,
``slot`` picks a session (one opened so far, closed or not, an unknown id or none), ``kind`` the
payload (valid, replayed, truncated, oversized, in another format, NaN/Inf, garbage, empty, a
corrupted frame, a bad mask) and ``a``/``b`` its details. Every call must return bytes or raise a
``ServiceError`` with a known status, within ``CALL_TIMEOUT_S``.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import threading
from collections.abc import Callable

import torch
from hypothesis import strategies as st
from torch import nn

from fedft.body import codec
from fedft.body.service import BodyService
from fedft.body.spec import ServiceError, SessionSpec

B, T, D = 4, 5, 8
FORMATS = ["fp32", "fp16", "bf16", "int8", "int4", "int4:2", "int4:4096", "topk", "topk:0.5", "topk:1"]
KNOWN = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}
CALL_TIMEOUT_S = 30.0  # [D] a call that takes longer is a hang
KINDS = {
    "open": ["valid", "valid", "json", "bytes"],
    "forward": ["valid", "mask_bool", "mask_int", "replay", "truncated", "oversized", "format", "nan",
                "inf", "huge", "garbage", "empty", "corrupt", "bad_mask", "three"],
    "backward": ["valid", "valid", "replay", "truncated", "oversized", "format", "nan", "inf", "garbage",
                 "empty", "corrupt"],
    "close": ["empty", "garbage"],
}


class Failure(AssertionError):
    """The oracle refused an outcome."""


class TinyBody(nn.Module):
    """A Linear + GELU on every token; padded tokens (mask 0) are zeroed."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act = nn.Linear(D, D), nn.GELU()

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self.act(self.lin(h))
        return out if mask is None else out * mask[..., None].to(out.dtype)


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1)


def service_ops() -> st.SearchStrategy[list]:
    """Random call sequences (see the module docstring)."""
    op = st.sampled_from(["open", "forward", "forward", "backward", "backward", "close"])
    return st.lists(st.tuples(op, st.integers(0, 7), st.integers(0, 31), st.integers(0, 2**16),
                              st.integers(0, 2**16)), min_size=1, max_size=14)


def guarded(fn: Callable[[], bytes], what: str) -> bytes | str:
    """Run ``fn`` with a timeout: its bytes, or the status of its ServiceError; else Failure."""
    box: list = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as e:  # judged below, on the caller's thread
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(CALL_TIMEOUT_S)
    if not box:
        raise Failure(f"{what} hung for more than {CALL_TIMEOUT_S:g} s")
    out = box[0]
    if isinstance(out, ServiceError):
        if out.status not in KNOWN or "\n" in out.message:
            raise Failure(f"{what} refused with {out.status}: {out.message[:200]}")
        return out.status
    if isinstance(out, BaseException):
        raise Failure(f"{what} raised {type(out).__name__}: {str(out)[:300]}") from out
    if not isinstance(out, bytes):
        raise Failure(f"{what} returned {type(out).__name__}, not bytes")
    return out


def open_dict(a: int, b: int) -> dict:
    """A valid Open request chosen by ``a`` and ``b``."""
    return {"client": f"c{a % 3}", "round": 0, "phase": ["train", "eval"][(a >> 4) % 2],
            "wire": FORMATS[a % len(FORMATS)], "grad_wire": FORMATS[b % len(FORMATS)], "T": 1 + b % T,
            "D": D, "max_batch": 1 + (b >> 3) % B, "feedback": bool((b >> 6) % 2)}


def corrupt(buf: bytes, a: int, b: int) -> bytes:
    """Flip a bit, cut, or set a dim or the parameter of a frame to an extreme value."""
    out = bytearray(buf)
    if not out:
        return bytes(out)
    if b % 3 == 0:
        out[a % len(out)] ^= 1 << (b % 8)
    elif b % 3 == 1:
        return bytes(out[: a % len(out)])
    elif len(out) >= 16 and out[4]:
        struct.pack_into("<Q", out, 8 + 8 * (a % out[4]), [0, 2**63, 2**64 - 1, 2**20][a % 4])
    return bytes(out)


class ServiceFuzz:
    """One in-process body service and the sessions a sequence has opened on it."""

    def __init__(self, mode: str) -> None:
        torch.manual_seed(0)
        self.mode = mode
        self.svc = BodyService(TinyBody(), mode, None if mode == "frozen" else sgd,
                               busy_timeout_s=0.05, session_ttl_s=3600.0)
        self.sessions: list[dict] = []  # {sid, spec, fwd, bwd, out}

    def _forward_payload(self, s: dict, kind: str, a: int, b: int) -> bytes:
        spec: SessionSpec = s["spec"]
        g = torch.Generator().manual_seed(a)
        shape = (1 + a % spec.max_batch, 1 + b % spec.T, D)
        if kind == "oversized":
            shape = (spec.max_batch + 1 + a % 3, spec.T + b % 2, D + b % 2)
        h = torch.randn(shape, generator=g)
        if kind in ("nan", "inf", "huge"):
            h.view(-1)[a % h.numel()] = {"nan": float("nan"), "inf": float("inf"), "huge": 3e38}[kind]
        fmt = FORMATS[b % len(FORMATS)] if kind == "format" else spec.wire
        frames = [codec.encode(h, fmt)]
        if kind in ("mask_bool", "mask_int", "bad_mask", "three"):
            m = torch.randint(0, 3 if kind == "bad_mask" else 2, shape[:2], generator=g)
            frames.append(codec.encode(m.bool() if kind == "mask_bool" else m))
        if kind == "three":
            frames.append(frames[-1])
        payload = b"".join(frames)
        if kind in ("valid", "mask_bool", "mask_int"):
            s["fwd"] = payload
        return payload

    def _backward_payload(self, s: dict, kind: str, a: int, b: int) -> bytes:
        spec: SessionSpec = s["spec"]
        shape = s["out"] or (1, 1, D)
        if kind == "oversized":
            shape = (shape[0] + 1, *shape[1:])
        g = torch.randn(shape, generator=torch.Generator().manual_seed(a))
        if kind in ("nan", "inf"):
            g.view(-1)[a % g.numel()] = float(kind)
        fmt = FORMATS[b % len(FORMATS)] if kind == "format" else spec.grad_wire or spec.wire
        payload = codec.encode(g, fmt)
        if kind == "valid":
            s["bwd"] = payload
        return payload

    def _payload(self, op: str, s: dict | None, kind: str, a: int, b: int) -> bytes:
        rng = random.Random(a * 65537 + b)
        if kind == "garbage":
            return rng.randbytes(rng.randint(1, 300))
        if kind == "empty" or s is None:
            return b""
        base = "valid" if kind in ("replay", "truncated", "corrupt") else kind
        build = self._forward_payload if op == "forward" else self._backward_payload
        if kind == "replay":
            return s["fwd" if op == "forward" else "bwd"] or build(s, "valid", a, b)
        payload = build(s, base, a, b)
        if kind == "truncated":
            return payload[: a % len(payload)]
        return corrupt(payload, a, b) if kind == "corrupt" else payload

    def _open(self, kind: str, a: int, b: int) -> None:
        d = open_dict(a, b)
        payload = {"valid": lambda: json.dumps(d).encode(), "json": lambda: json.dumps(
            {**d, "T": [-1, 0, 2**40, "5"][a % 4]}).encode(), "bytes": lambda: random.Random(a).randbytes(b % 64)}[kind]()
        out = guarded(lambda: self.svc.open(payload), f"open({kind})")
        if isinstance(out, bytes):
            sid = json.loads(out)["session"]
            self.sessions.append({"sid": sid, "spec": SessionSpec.from_json(payload, 2**30), "fwd": None,
                                  "bwd": None, "out": None})

    def call(self, op: str, slot: int, k: int, a: int, b: int) -> None:
        """One call of a sequence."""
        kind = KINDS[op][k % len(KINDS[op])]
        if op == "open":
            return self._open(kind, a, b)
        n = len(self.sessions)
        s = self.sessions[slot % n] if n and slot < 6 else None
        sid = s["sid"] if s else ["", "no-such-session", "x" * 5000][a % 3]
        payload = self._payload(op, s if s else self.sessions[0] if n else None, kind, a, b)
        fn = {"forward": lambda: self.svc.forward(sid, payload), "backward": lambda: self.svc.backward(sid, payload),
              "close": lambda: self.svc.close_session(sid, payload)}[op]
        out = guarded(fn, f"{op}({kind}) on {'a session' if s else 'an unknown id'}")
        if op == "forward" and isinstance(out, bytes) and s is not None:
            s["out"] = tuple(codec.decode(out).shape)

    def run(self, ops: list) -> None:
        """Open one valid session, run ``ops``, close everything, then check a valid client's step."""
        self.call("open", 0, 0, 0, 0)
        for op in ops:
            self.call(*op)
        for s in self.sessions:
            guarded(lambda s=s: self.svc.close_session(s["sid"]), "close at the end")
        if self.svc.session_count():
            raise Failure(f"{self.svc.session_count()} sessions left open after closing every one")
        fresh = BodyService(copy.deepcopy(self.svc.body), self.mode, None if self.mode == "frozen" else sgd)
        got, want = valid_step(self.svc), valid_step(fresh)
        # equal_nan: a shared body that trained on a valid 3e38 activation holds inf weights (both do)
        if not all(torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True) for x, y in zip(got, want, strict=True)):
            raise Failure("a valid step after the sequence differs from the same step on a fresh service")


def valid_step(svc: BodyService) -> tuple[torch.Tensor, torch.Tensor]:
    """Open, Forward, Backward, Close of a valid fp32 client; return ``(z, grad_h)``."""
    spec = SessionSpec("final", 0, "train", "fp32", T, D, B)
    sid = json.loads(guarded(lambda: svc.open(spec.to_json()), "final open"))["session"]
    g = torch.Generator().manual_seed(7)
    h, grad = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    out = [guarded(lambda: svc.forward(sid, codec.encode(h)), "final forward"),
           guarded(lambda: svc.backward(sid, codec.encode(grad)), "final backward")]
    guarded(lambda: svc.close_session(sid), "final close")
    if not all(isinstance(o, bytes) for o in out):
        raise Failure(f"a valid client's step was refused after the sequence: {out}")
    return codec.decode(out[0]), codec.decode(out[1])
