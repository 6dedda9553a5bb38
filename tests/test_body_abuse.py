"""Body service under abuse: limits, per-host failure blocking, token expiry, and a real client
training through hundreds of bogus calls with the same numbers as without them.

Everything runs on 127.0.0.1 with a tiny tokenwise body (the fixtures of test_body_service.py).
"""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch
from torch import nn

from fedft import keys
from fedft.accounting import CommLedger
from fedft.body.client import BodyServiceError, GrpcTransport, method_path
from fedft.body.limits import BodyLimits, Gate, peer_host
from fedft.body.service import new_token, start_body_service
from fedft.body.spec import ServiceError, SessionSpec

ROOT = Path(__file__).resolve().parent.parent
B, T, D = 4, 5, 8
STEPS = 6
MAX_MSG = 64 * 1024
C = grpc.StatusCode


class TinyBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return torch.tanh(self.lin(h))


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1)


@pytest.fixture
def serve():
    handles = []

    def start(limits: BodyLimits | None = None, **kw):
        torch.manual_seed(0)
        h = start_body_service(TinyBody(), token=new_token(), mode="shared", make_optimizer=sgd,
                               max_message_bytes=MAX_MSG, limits=limits, **kw)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop(0)


def open_payload(client: str = "bogus", **kw) -> bytes:
    d = {"client": client, "round": 0, "phase": "split", "wire": "fp32", "T": T, "D": D, "max_batch": B, **kw}
    return json.dumps(d).encode()


def call(address: str, method: str, payload: bytes, token: str | None, session: str = "") -> tuple[C, bytes]:
    md = [(keys.BODY_MD_SESSION, session)] + ([] if token is None else [(keys.BODY_MD_TOKEN, token)])
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 4 * MAX_MSG)]) as ch:
        try:
            return C.OK, ch.unary_unary(method_path(method))(payload, metadata=md, timeout=20)
        except grpc.RpcError as e:
            return e.code(), b""


def train(handle, ledger: CommLedger, started: threading.Event | None = None) -> list[torch.Tensor]:
    """STEPS split steps of one real client; its returned tensors (body outputs, head gradients)."""
    gen = torch.Generator().manual_seed(1)
    head = nn.Linear(D, D)
    with torch.no_grad():
        head.weight.copy_(torch.randn(D, D, generator=gen) / D)
        head.bias.zero_()
    out = []
    with GrpcTransport(handle.address, handle.token, ledger, client="real", T=T, D=D, max_batch=B,
                       max_message_bytes=MAX_MSG) as tr:
        if started is not None:
            started.set()  # the session is open: let the attack begin
        for _ in range(STEPS):
            h = head(torch.randn(B, T, D, generator=gen))
            z = tr.forward(h, None).requires_grad_(True)
            (z * torch.arange(D)).square().mean().backward()
            g_h = tr.backward(z.grad)
            h.backward(g_h)
            out += [z.detach(), g_h, head.weight.grad.clone()]
    return out


def attacks(address: str, token: str, idle: list) -> list:
    """(name, allowed codes, call) of each kind of bogus call."""
    bad_opens = [b"\x00\xff" * 10, b"[]", b"{}", open_payload(T=0), open_payload(wire="fp8"),
                 open_payload(T=4096, D=4096, max_batch=64)]  # the last one: larger than a message

    def idle_socket(i: int) -> tuple[C, bytes]:  # a connection that never speaks (closed at the end)
        host, port = address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
        s.sendall(b"PRI * HTTP/2.0\r\n")  # half a preface, then silence
        idle.append(s)
        return C.OK, b""

    return [
        ("no token", {C.UNAUTHENTICATED}, lambda i: call(address, keys.BODY_OPEN, open_payload(), None)),
        ("wrong token", {C.UNAUTHENTICATED}, lambda i: call(address, keys.BODY_OPEN, open_payload(), new_token())),
        ("garbage Open", {C.INVALID_ARGUMENT},
         lambda i: call(address, keys.BODY_OPEN, bad_opens[i % len(bad_opens)], token)),
        ("one client floods", {C.OK, C.RESOURCE_EXHAUSTED},
         lambda i: call(address, keys.BODY_OPEN, open_payload("flood"), token)),
        ("many clients flood", {C.OK, C.RESOURCE_EXHAUSTED},
         lambda i: call(address, keys.BODY_OPEN, open_payload(f"flood-{i % 13}"), token)),
        ("over the memory budget", {C.RESOURCE_EXHAUSTED},
         lambda i: call(address, keys.BODY_OPEN, open_payload("big", max_batch=16, T=16, D=16), token)),
        ("Forward, unknown session", {C.NOT_FOUND},
         lambda i: call(address, keys.BODY_FORWARD, b"x" * 64, token, session=f"nope-{i}")),
        ("Backward, wrong token", {C.UNAUTHENTICATED},
         lambda i: call(address, keys.BODY_BACKWARD, b"x" * 64, "t" * 43, session="nope")),
        ("oversized frame", {C.RESOURCE_EXHAUSTED},
         lambda i: call(address, keys.BODY_FORWARD, bytes(2 * MAX_MSG), token, session="nope")),
        ("idle connection", {C.OK}, idle_socket),
    ]


def test_real_client_trains_through_hundreds_of_bogus_calls(serve):
    clean_ledger = CommLedger()
    clean = train(serve(), clean_ledger)

    limits = BodyLimits(max_sessions=8, max_sessions_per_client=2, memory_budget_bytes=16 * 1024)
    handle = serve(limits)
    seen: list = []
    lock, started, trained, ledger = threading.Lock(), threading.Event(), threading.Event(), CommLedger()
    idle_socks: list = []
    kinds = attacks(handle.address, handle.token, idle_socks)

    def attacker(w: int) -> None:
        started.wait(60)
        i = w
        while len(seen) < 300 or not trained.is_set():  # attack for the whole training, >= 300 calls
            name, allowed, fn = kinds[i % len(kinds)]
            code, _ = fn(i)
            with lock:
                seen.append((name, allowed, code))
            i += 16

    pool = ThreadPoolExecutor(16)
    futures = [pool.submit(attacker, w) for w in range(16)]
    try:
        got = train(handle, ledger, started)
    finally:
        trained.set()
        started.set()
        for f in futures:
            f.result(timeout=120)
        pool.shutdown()
        for s in idle_socks:
            s.close()

    assert len(seen) >= 300
    wrong = [(n, c) for n, allowed, c in seen if c not in allowed]
    assert not wrong, wrong[:5]
    codes = {c for _, _, c in seen}
    assert {C.UNAUTHENTICATED, C.INVALID_ARGUMENT, C.NOT_FOUND, C.RESOURCE_EXHAUSTED} <= codes
    assert handle.gate.refused["UNAUTHENTICATED"] >= sum(n in ("no token", "wrong token") for n, _, _ in seen)
    # the real client's numbers and bytes are those of the run without the attack
    assert len(got) == len(clean) == 3 * STEPS
    for a, b in zip(got, clean, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert ledger.by_kind() == clean_ledger.by_kind()
    # bogus sessions never exceeded the table, and none lingers after the reaper's pass
    state = handle.service
    assert state.session_count() <= limits.max_sessions
    state.reap_expired(now=float("inf"))
    assert state.session_count() == 0
    ok, _ = call(handle.address, keys.BODY_OPEN, open_payload("after"), handle.token)
    assert ok is C.OK  # still serving


def test_request_cap_closes_the_session_for_that_client_only(serve):
    handle = serve(BodyLimits(max_requests_per_session=4))
    head = nn.Linear(D, D)
    with GrpcTransport(handle.address, handle.token, CommLedger(), client="c", T=T, D=D, max_batch=B) as tr:
        for _ in range(2):  # 2 steps = 4 calls: allowed
            z = tr.forward(head(torch.randn(B, T, D)), None)
            tr.backward(torch.ones_like(z))
        with pytest.raises(BodyServiceError, match="max_requests_per_session") as e:
            tr.forward(head(torch.randn(B, T, D)), None)
        assert e.value.code is C.RESOURCE_EXHAUSTED
        assert handle.service.session_count() == 0  # freed; the Close at exit tolerates NOT_FOUND
    code, _ = call(handle.address, keys.BODY_OPEN, open_payload("other"), handle.token)
    assert code is C.OK


def test_memory_budget_sizes():
    """The sizes the abuse test relies on: a real session fits the budget eight times, 'big' does not."""
    small = SessionSpec("c", 0, "split", "fp32", T, D, B).max_request_bytes
    big = SessionSpec("big", 0, "split", "fp32", 16, 16, 16).max_request_bytes
    assert 8 * small < 16 * 1024 < big < MAX_MSG


def test_session_table_limits_name_the_setting(serve):
    handle = serve(BodyLimits(max_sessions=3, max_sessions_per_client=2))
    assert [call(handle.address, keys.BODY_OPEN, open_payload("a"), handle.token)[0] for _ in range(3)] == [
        C.OK, C.OK, C.RESOURCE_EXHAUSTED]
    code, _ = call(handle.address, keys.BODY_OPEN, open_payload("b"), handle.token)
    assert code is C.OK
    tr = GrpcTransport(handle.address, handle.token, CommLedger(), client="c", T=T, D=D, max_batch=B)
    with pytest.raises(BodyServiceError, match="max_sessions = 3"):
        tr.open()
    tr.close()
    assert handle.service.session_count() == 3


def test_failed_calls_block_a_host_for_the_window():
    now = [0.0]
    gate = Gate("tok", BodyLimits(max_failures_per_peer=3, failure_window_s=10, exempt_peers=("10.0.0.1",)),
                clock=lambda: now[0])
    good, bad = {keys.BODY_MD_TOKEN: "tok"}, {keys.BODY_MD_TOKEN: "nope"}
    for peer in ("ipv4:10.0.0.9:1234", "ipv4:10.0.0.1:99"):
        for _ in range(3):
            with pytest.raises(ServiceError, match="wrong token"):
                gate.check(bad, peer)
            gate.record(keys.BODY_OPEN, "UNAUTHENTICATED", peer)
    with pytest.raises(ServiceError, match="3 failed calls from 10.0.0.9") as e:
        gate.check(good, "ipv4:10.0.0.9:5555")  # blocked whatever it sends, any port
    assert e.value.status == "RESOURCE_EXHAUSTED"
    gate.check(good, "ipv4:10.0.0.1:7")  # exempt host
    gate.check(good, "ipv4:10.0.0.8:7")  # other hosts
    now[0] = 10.0
    gate.check(good, "ipv4:10.0.0.9:5555")  # the window ended
    assert peer_host("ipv6:[::1]:50") == "::1" and peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_failed_calls_block_the_host_on_a_real_service(serve):
    handle = serve(BodyLimits(max_failures_per_peer=5, exempt_peers=()))
    codes = [call(handle.address, keys.BODY_OPEN, open_payload(), "wrong")[0] for _ in range(5)]
    assert codes == [C.UNAUTHENTICATED] * 5
    assert call(handle.address, keys.BODY_OPEN, open_payload(), handle.token)[0] is C.RESOURCE_EXHAUSTED


def test_expired_token_is_unauthenticated(serve):
    handle = serve(BodyLimits(expires_at=0.0))  # the epoch: long past
    with pytest.raises(BodyServiceError, match="expired") as e:
        GrpcTransport(handle.address, handle.token, CommLedger(), T=T, D=D, max_batch=B).open()
    assert e.value.code is C.UNAUTHENTICATED


def test_token_dies_with_the_service_and_a_restart_has_a_new_one(serve):
    first = serve()
    old = GrpcTransport(first.address, first.token, CommLedger(), T=T, D=D, max_batch=B)
    old.open()
    old.close()
    first.stop(0)
    first.stop(0)  # idempotent
    with pytest.raises(BodyServiceError) as e:
        old.open()
    assert e.value.code is C.UNAVAILABLE  # nothing listens any more
    old.close()
    second = serve(port=first.port)  # the same port, as with a fixed deploy.body_port
    assert second.token != first.token
    with pytest.raises(BodyServiceError) as e:
        old.open()
    assert e.value.code is C.UNAUTHENTICATED
    old.close()


def test_run_end_stops_the_service_even_when_the_run_fails(tmp_path, monkeypatch):
    from fedft.config import ExperimentConfig
    from fedft.federated import engine
    from fedft.federated.server import ServerRuntime
    from fedft.outputs import RunDir

    tiny = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
            "data.test_size=16", "partition.num_clients=3", "partition.scheme=iid", "partition.min_size=4",
            "train.batch_size=8", "method.prompt_len=4", "federation.rounds=1", "output.plots=false"]
    cfg = ExperimentConfig.from_toml(ROOT / "experiments/configs/sfprompt_mnist.toml", tiny)
    srv = ServerRuntime(cfg, RunDir(tmp_path / "run"))
    seen = []

    def failing_rounds(srv, dispatch, progress):
        seen.append((srv.service.address, srv.service.token))
        raise RuntimeError("a round failed")

    monkeypatch.setattr(engine, "run_rounds", failing_rounds)
    with pytest.raises(RuntimeError, match="a round failed"):
        engine.run_inprocess(srv, progress=False)
    assert srv.service is None
    address, token = seen[0]
    with pytest.raises(BodyServiceError) as e:
        GrpcTransport(address, token, CommLedger(), T=T, D=D, max_batch=B, timeout_s=10).open()
    assert e.value.code is C.UNAVAILABLE
    srv.start_body_service()
    try:
        assert srv.service.token != token  # a new run (or restart) has a new token
    finally:
        srv.stop()
