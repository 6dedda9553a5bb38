"""The gRPC target of ``fuzz_wire.py``: hostile callers against a real body service on loopback.

``callers`` threads send random requests (any method, an unknown one too; the right token, a
wrong one or none; their own sessions, unknown ones or none; valid, corrupted, random and
oversized payloads) while a good client trains through ``GrpcTransport``. Every hostile call must
end with a known status (never ``INTERNAL``, ``UNKNOWN`` or a deadline); every good step must
succeed and equal the body's output computed in this process.
"""

from __future__ import annotations

import json
import random
import threading
import time

import grpc
import torch
from fuzz_wire_service import FORMATS, B, D, T, TinyBody, corrupt, open_dict

from fedft import keys
from fedft.accounting import CommLedger
from fedft.body import codec
from fedft.body.client import GrpcTransport, method_path
from fedft.body.service import new_token, start_body_service

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}
MAX_MESSAGE = 2**20  # [D] the service's message cap here: an oversized payload is a cheap test
DEADLINE_S = 60.0  # [D] a call that takes longer is a hang


def _hostile_payload(rng: random.Random, method: str) -> bytes:
    pick = rng.randrange(6)
    if pick == 0:
        return rng.randbytes(rng.randint(0, 400))
    if pick == 1 or method == keys.BODY_OPEN:
        return json.dumps(open_dict(rng.randrange(2**16), rng.randrange(2**16))).encode()
    if pick == 2:
        return rng.randbytes(MAX_MESSAGE + rng.randint(1, 1000))  # over the message cap
    shape = (rng.randint(1, B + 1), rng.randint(1, T + 1), D)
    frame = codec.encode(torch.randn(shape), rng.choice(FORMATS))
    return corrupt(frame, rng.randrange(2**16), rng.randrange(2**16)) if pick == 3 else frame


def _caller(address: str, token: str, seed: int, deadline: float, out: dict, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    sessions: list[str] = []
    methods = [keys.BODY_OPEN, keys.BODY_FORWARD, keys.BODY_BACKWARD, keys.BODY_CLOSE, "Nope"]
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 2 * MAX_MESSAGE)]) as ch:
        while time.monotonic() < deadline:
            method = rng.choice(methods)
            md = [] if rng.random() < 0.1 else [(keys.BODY_MD_TOKEN, token if rng.random() < 0.85 else "wrong")]
            sid = rng.choice([*sessions[-4:], "", "unknown"]) if sessions else ""
            md.append((keys.BODY_MD_SESSION, sid))
            try:
                reply = ch.unary_unary(method_path(method))(_hostile_payload(rng, method), metadata=md,
                                                            timeout=DEADLINE_S)
                code = grpc.StatusCode.OK
                if method == keys.BODY_OPEN:
                    sessions.append(json.loads(reply)[keys.BODY_OPEN_SESSION])
            except grpc.RpcError as e:
                code = e.code()
            with lock:
                out["calls"] += 1
                out["codes"][code.name] = out["codes"].get(code.name, 0) + 1
                if code not in ALLOWED:
                    out["bad"].append(f"{method}: {code.name}")


def _good_client(handle, deadline: float, out: dict) -> None:
    body = handle.service.body
    g = torch.Generator().manual_seed(1)
    try:
        with GrpcTransport(handle.address, handle.token, CommLedger(), client="good", T=T, D=D, max_batch=B,
                           timeout_s=DEADLINE_S) as tr:
            while time.monotonic() < deadline:
                h = torch.randn(B, T, D, generator=g)
                z = tr.forward(h, None)
                with torch.no_grad():
                    want = body(h, None)
                if not torch.allclose(z, want, rtol=1e-5, atol=1e-6):
                    out["bad"].append("good client's body output differs from the body's")
                tr.backward(torch.randn(B, T, D, generator=g))
                out["good_steps"] += 1
    except Exception as e:
        out["bad"].append(f"good client failed: {type(e).__name__}: {str(e)[:300]}")


def grpc_storm(seconds: float, callers: int, seed: int, failures: list) -> dict:
    """Run the storm for ``seconds``; append failures; return call counts by status code."""
    torch.manual_seed(seed)
    handle = start_body_service(TinyBody(), token=new_token(), mode="frozen", max_message_bytes=MAX_MESSAGE,
                                session_ttl_s=5.0)
    out: dict = {"calls": 0, "codes": {}, "bad": [], "good_steps": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    try:
        threads = [threading.Thread(target=_caller, args=(handle.address, handle.token, seed * 1000 + i,
                                                          deadline, out, lock)) for i in range(callers)]
        threads.append(threading.Thread(target=_good_client, args=(handle, deadline, out)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        handle.stop(0)
    failures.extend({"target": "grpc", "error": b} for b in out["bad"][:20])
    if out["good_steps"] == 0 and seconds > 5:
        failures.append({"target": "grpc", "error": "the good client completed no step"})
    return {"calls": out["calls"], "codes": dict(sorted(out["codes"].items())), "good_steps": out["good_steps"],
            "callers": callers, "n_bad": len(out["bad"])}
