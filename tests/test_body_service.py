"""Body service (grpcio) and GrpcTransport: equivalence, robustness, body modes, lifecycle.

Everything runs on 127.0.0.1 with port 0 and a tiny tokenwise body, so the split-model code is not
needed.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
import torch
from torch import nn

from fedft import keys
from fedft.accounting import CommLedger, Kind, Phase
from fedft.body import codec
from fedft.body.client import BodyServiceError, GrpcTransport, method_path
from fedft.body.service import THREAD_PREFIX, new_token, start_body_service
from fedft.body.transport import BodySession, LoopbackTransport

B, T, D = 4, 5, 8


class TinyBody(nn.Module):
    """A Linear + GELU applied to every token; padded tokens (mask 0) are zeroed."""

    def __init__(self, d: int = D, fail_on_batch: int | None = None) -> None:
        super().__init__()
        self.lin, self.act, self.fail_on_batch = nn.Linear(d, d), nn.GELU(), fail_on_batch

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if h.shape[0] == self.fail_on_batch:
            raise RuntimeError("boom")
        out = self.act(self.lin(h))  # (B, T, D)
        return out if mask is None else out * mask[..., None].to(out.dtype)


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1)


@pytest.fixture
def serve():
    """Start body services; stop them all at teardown."""
    handles = []

    def start(mode: str = "frozen", body: nn.Module | None = None, **kw):
        torch.manual_seed(0)
        kw.setdefault("make_optimizer", None if mode == "frozen" else sgd)
        h = start_body_service(body or TinyBody(), token=new_token(), mode=mode, **kw)
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.stop(0)


def transport(handle, ledger=None, token=None, client="c0", **kw) -> GrpcTransport:
    kw = {"T": T, "D": D, "max_batch": B, **kw}
    return GrpcTransport(handle.address, token or handle.token, CommLedger() if ledger is None else ledger,
                         client=client, **kw)


def split_step(tr, head: nn.Module, x: torch.Tensor, mask=None) -> torch.Tensor:
    """One U-split step over a transport: head -> body (remote) -> loss -> grads back to head."""
    h = head(x)  # (B, T, D)
    z = tr.forward(h, mask).requires_grad_(True)
    loss = (z * torch.arange(D, dtype=z.dtype)).square().mean()
    loss.backward()
    h.backward(tr.backward(z.grad))
    return z.detach()


def raw_call(tr: GrpcTransport, method: str, payload: bytes, token: str | None = None,
             session: str | None = None):
    """Send raw bytes on tr's session; return the grpc status code (OK on success)."""
    md = [(keys.BODY_MD_SESSION, session or tr.session or "")]
    if token is not None:
        md.append((keys.BODY_MD_TOKEN, token))
    with grpc.insecure_channel(tr.address) as ch:
        try:
            ch.unary_unary(method_path(method))(payload, metadata=md, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


def good_client(handle, steps: int, errors: list, client: str = "good") -> threading.Thread:
    """Train ``steps`` batches in a thread; failures end up in ``errors``."""

    def run() -> None:
        try:
            head = nn.Linear(D, D)
            with transport(handle, client=client) as tr:
                for _ in range(steps):
                    split_step(tr, head, torch.randn(B, T, D))
        except Exception as e:  # pragma: no cover - the assertion shows it
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t


def wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# ---- equivalence -------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_round_trip_equals_in_process_and_loopback_ledger(serve, wire, with_mask):
    # Prepare: one frozen body served over gRPC and used in-process by a LoopbackTransport
    handle = serve("frozen")
    body = handle.service.body
    x = torch.randn(B, T, D)
    mask = torch.ones(B, T, dtype=torch.bool) if with_mask else None
    if with_mask:
        mask[0, 3:] = False
    torch.manual_seed(1)
    head = nn.Linear(D, D)
    head_ref = copy.deepcopy(head)
    # Execute
    grpc_ledger, loop_ledger = CommLedger(), CommLedger()
    with transport(handle, grpc_ledger, wire=wire) as tr:
        z = split_step(tr, head, x, mask)
    loop = LoopbackTransport(BodySession(body), loop_ledger, client="c0", wire=wire)
    z_ref = split_step(loop, head_ref, x, mask)
    # Assert: same values, same head gradients, same bytes by kind
    assert torch.equal(z, z_ref)
    for p, q in zip(head.parameters(), head_ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    split = [e for e in grpc_ledger if e.kind != Kind.CONTROL]
    assert split == list(loop_ledger)
    assert {k: v for k, v in grpc_ledger.by_kind().items() if k != Kind.CONTROL} == loop_ledger.by_kind()
    assert grpc_ledger.by_kind()[Kind.CONTROL] > 0
    assert list(handle.service.ledger) == list(grpc_ledger)  # the server's cross-check ledger


def test_fp32_round_trip_equals_body_session_values(serve):
    handle = serve("frozen")
    h, g = torch.randn(B, T, D), torch.randn(B, T, D)
    ref = BodySession(handle.service.body)
    with transport(handle) as tr:
        assert torch.equal(tr.forward(h, None), ref.forward(h, None))
        assert torch.equal(tr.backward(g), ref.backward(g))


def test_concurrent_frozen_clients_get_their_own_results(serve):
    handle = serve("frozen", max_workers=4)
    xs = [torch.randn(B, T, D) for _ in range(6)]
    out: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with transport(handle, client=f"c{i}") as tr:
            for _ in range(5):
                out[i] = tr.backward(tr.forward(xs[i], None))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i, x in enumerate(xs):
        ref = BodySession(handle.service.body)
        assert torch.equal(out[i], ref.backward(ref.forward(x, None)))
    assert handle.service.session_count() == 0


# ---- robustness --------------------------------------------------------------------------------


def test_wrong_or_missing_token_refused_while_good_client_trains(serve):
    handle = serve("frozen")
    errors: list = []
    worker = good_client(handle, 30, errors)
    with pytest.raises(BodyServiceError) as e:
        transport(handle, token="not-the-token").open()
    assert e.value.code is grpc.StatusCode.UNAUTHENTICATED
    with transport(handle) as tr:  # a valid session is useless without the token
        assert raw_call(tr, keys.BODY_OPEN, b"{}") is grpc.StatusCode.UNAUTHENTICATED
        frame = codec.encode(torch.randn(B, T, D))
        assert raw_call(tr, keys.BODY_FORWARD, frame) is grpc.StatusCode.UNAUTHENTICATED
        assert raw_call(tr, keys.BODY_FORWARD, frame, token="x" * 43) is grpc.StatusCode.UNAUTHENTICATED
        assert raw_call(tr, keys.BODY_FORWARD, frame, token=handle.token) is grpc.StatusCode.OK
    worker.join()
    assert errors == []


def _bad_forward_payloads() -> dict[str, bytes]:
    ok = torch.randn(B, T, D)
    nan, inf = ok.clone(), ok.clone()
    nan[1, 2, 3], inf[0, 0, 0] = float("nan"), float("inf")
    mask = torch.ones(B, T, dtype=torch.bool)
    return {
        "wrong T": codec.encode(torch.randn(B, T + 1, D)),
        "wrong D": codec.encode(torch.randn(B, T, D - 1)),
        "2-D": codec.encode(torch.randn(B, T * D)),
        "batch over max_batch": codec.encode(torch.randn(B + 1, T, D)),
        "oversize": codec.encode(torch.randn(3 * B, T, D)),
        "wrong dtype": codec.encode(ok, "fp16"),
        "int activations": codec.encode(torch.ones(B, T, D, dtype=torch.int64)),
        "NaN": codec.encode(nan),
        "inf": codec.encode(inf),
        "mask wrong shape": codec.encode_many([ok, mask[:, :-1]]),
        "mask float": codec.encode_many([ok, mask.float()]),
        "mask not 0/1": codec.encode_many([ok, torch.full((B, T), 2)]),
        "three frames": codec.encode_many([ok, mask, mask]),
        "garbage": b"\x00garbage, not a frame" * 5,
        "truncated": codec.encode(ok)[:-7],
        "empty": b"",
        "huge claimed shape": codec.encode(ok)[:8] + (2**40).to_bytes(8, "little") * 3,
    }


@pytest.mark.parametrize("case", sorted(_bad_forward_payloads()))
def test_malformed_forward_is_invalid_argument_for_that_client_only(serve, case):
    handle = serve("frozen")
    errors: list = []
    worker = good_client(handle, 10, errors)
    with transport(handle, client="bad") as tr:
        code = raw_call(tr, keys.BODY_FORWARD, _bad_forward_payloads()[case], handle.token)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        split_step(tr, nn.Linear(D, D), torch.randn(B, T, D))  # the same session still works
    worker.join()
    assert errors == []


def test_refusals_name_the_problem_in_one_line(serve):
    handle = serve("frozen")
    nan = torch.randn(B, T, D)
    nan[0, 0, 0] = float("nan")
    with transport(handle) as tr:
        for h, words in ((torch.randn(B + 1, T, D), f"expected (B <= {B}, T <= {T}, {D})"),
                         (nan, "NaN"), (torch.randn(B, T, D + 1), "shape")):
            with pytest.raises(BodyServiceError) as e:
                tr.forward(h, None)
            assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert words in e.value.details and "\n" not in str(e.value)


def test_malformed_backward_and_call_order(serve):
    handle = serve("frozen")
    errors: list = []
    worker = good_client(handle, 10, errors)
    with transport(handle, client="bad") as tr:
        g = torch.randn(B, T, D)
        assert raw_call(tr, keys.BODY_BACKWARD, codec.encode(g), handle.token) \
            is grpc.StatusCode.FAILED_PRECONDITION
        tr.forward(torch.randn(B, T, D), None)
        nan = g.clone()
        nan[0, 0, 0] = float("nan")
        for bad in (codec.encode(nan), codec.encode(g[:2]), codec.encode(g, "bf16"), b"junk",
                    codec.encode_many([g, g])):
            assert raw_call(tr, keys.BODY_BACKWARD, bad, handle.token) is grpc.StatusCode.INVALID_ARGUMENT
        assert tr.backward(g).shape == (B, T, D)  # the graph survived the bad attempts
        closed = tr.session
    frame = codec.encode(g)
    for sid in (closed, "no-such-session"):
        assert raw_call(tr, keys.BODY_FORWARD, frame, handle.token, sid) is grpc.StatusCode.NOT_FOUND
    worker.join()
    assert errors == []


def test_bad_open_is_invalid_argument(serve):
    handle = serve("frozen")
    tr = transport(handle)
    good = json.loads(tr.open_request())
    bad = [{"wire": "fp8"}, {"phase": "nap"}, {"phase": ["split"]}, {"D": -8}, {"T": 1.5},
           {"round": -1}, {"client": ["a"]}, {"max_batch": 4000, "T": 5000, "D": 8000}]
    payloads = [b"not json", b"[1]", b'{"client": "a"}', b"\xff" * 10, b"{}" * 3000]
    payloads += [json.dumps({**good, **change}).encode() for change in bad]
    for payload in payloads:
        code = raw_call(tr, keys.BODY_OPEN, payload, handle.token)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, payload[:80]
    assert handle.service.session_count() == 0
    assert raw_call(tr, keys.BODY_OPEN, json.dumps(good).encode(), handle.token) is grpc.StatusCode.OK


def test_internal_error_and_oversize_message_leave_the_server_up(serve):
    handle = serve("frozen", body=TinyBody(fail_on_batch=3), max_message_bytes=64 * 1024)
    with transport(handle) as tr:
        with pytest.raises(BodyServiceError) as e:
            tr.forward(torch.randn(3, T, D), None)
        assert e.value.code is grpc.StatusCode.INTERNAL and "boom" in e.value.details
        code = raw_call(tr, keys.BODY_FORWARD, b"x" * 100_000, handle.token)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own cap
        split_step(tr, nn.Linear(D, D), torch.randn(B, T, D))


# ---- vanished clients --------------------------------------------------------------------------


def test_client_vanishing_mid_batch_is_reaped_and_frees_a_shared_body(serve):
    handle = serve("shared", session_ttl_s=0.3)
    tr = transport(handle, client="vanishing")
    tr.open()
    tr.forward(torch.randn(B, T, D), None)  # now owns the shared body until its Backward
    tr._channel.close()  # gone without Backward or Close
    assert handle.service.session_count() == 1
    errors: list = []
    start = time.monotonic()
    worker = good_client(handle, 3, errors)  # waits for the body, then trains
    worker.join(10)
    assert errors == [] and not worker.is_alive()
    assert time.monotonic() - start >= 0.2
    assert wait_for(lambda: handle.service.session_count() == 0)


def test_forward_after_an_idle_expiry_reopens_the_session(serve):
    handle = serve("frozen", session_ttl_s=0.2)
    ledger = CommLedger()
    with transport(handle, ledger) as tr:
        first = tr.session
        assert wait_for(lambda: handle.service.session_count() == 0)  # a long local phase
        split_step(tr, nn.Linear(D, D), torch.randn(B, T, D))
        assert tr.session != first
    assert [e.direction for e in ledger if e.kind == Kind.CONTROL] == ["up", "down"] * 3
    assert list(handle.service.ledger) == list(ledger)


def test_sigkilled_subprocess_client_is_reaped(serve, tmp_path):
    # Prepare: a separate process (grpc only, so it starts fast) opens a session, sends a batch
    handle = serve("frozen", session_ttl_s=0.5)
    (tmp_path / "open").write_bytes(transport(handle, client="doomed").open_request())
    (tmp_path / "h").write_bytes(codec.encode(torch.randn(B, T, D)))
    script = (
        "import json, sys, time, grpc\n"
        "open_req, h = (open(sys.argv[i], 'rb').read() for i in (2, 3))\n"
        "ch = grpc.insecure_channel(sys.argv[1])\n"
        f"md = [({keys.BODY_MD_TOKEN!r}, {handle.token!r})]\n"
        f"sid = json.loads(ch.unary_unary({method_path(keys.BODY_OPEN)!r})(open_req, metadata=md))"
        f"[{keys.BODY_OPEN_SESSION!r}]\n"
        f"ch.unary_unary({method_path(keys.BODY_FORWARD)!r})(h, metadata=md + [({keys.BODY_MD_SESSION!r}, sid)])\n"
        "print('READY', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, handle.address, str(tmp_path / "open"),
                             str(tmp_path / "h")], stdout=subprocess.PIPE, text=True)
    # Execute: kill it mid-batch (Forward sent, no Backward, no Close)
    try:
        assert proc.stdout.readline().strip() == "READY"
        assert handle.service.session_count() == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    # Assert: others train on, and the dead session is freed after the TTL
    errors: list = []
    good_client(handle, 5, errors).join()
    assert errors == []
    assert wait_for(lambda: handle.service.session_count() == 0)


# ---- body modes --------------------------------------------------------------------------------


def _run(handle, client: str, seed: int, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with transport(handle, client=client) as tr:
        for _ in range(steps):
            tr.backward(tr.forward(torch.randn(B, T, D, generator=g), None))


def _reference(body: nn.Module, seed: int, steps: int = 3) -> nn.Module:
    body = copy.deepcopy(body)
    opt = sgd(list(body.parameters()))
    session = BodySession(body, lambda: (opt.step(), opt.zero_grad()))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        session.backward(session.forward(torch.randn(B, T, D, generator=g), None))
    return body


def test_frozen_mode_leaves_body_bit_identical(serve):
    handle = serve("frozen")
    before = copy.deepcopy(handle.service.body.state_dict())
    _run(handle, "a", 1)
    _run(handle, "b", 2)
    after = handle.service.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in handle.service.body.parameters())


def test_shared_mode_updates_the_one_body_like_in_process(serve):
    body = TinyBody()
    initial = body.lin.weight.detach().clone()
    expected = _reference(body, seed=1)
    handle = serve("shared", body=body)
    _run(handle, "a", 1)
    for p, q in zip(handle.service.body.parameters(), expected.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.allclose(expected.lin.weight, initial, atol=1e-4)  # the reference did train
    assert not torch.allclose(handle.service.body.lin.weight, initial, atol=1e-4)


def test_shared_mode_serves_concurrent_clients_one_batch_at_a_time(serve):
    # Without the Forward..Backward ownership, an optimizer step between another client's Forward
    # and Backward would fail autograd's in-place check.
    handle = serve("shared", max_workers=4)
    errors: list = []
    workers = [good_client(handle, 8, errors, client=f"c{i}") for i in range(3)]
    [w.join(30) for w in workers]
    assert errors == []
    assert len([e for e in handle.service.ledger if e.kind == Kind.GRADS_DOWN]) == 24


def test_per_client_mode_keeps_copies_and_aggregates_weighted_fedavg(serve):
    handle = serve("per_client")
    body = handle.service.body
    before = copy.deepcopy(body.state_dict())
    expected_a, expected_b = _reference(body, seed=1), _reference(body, seed=2)
    _run(handle, "a", 1)
    _run(handle, "b", 2)
    copy_a, copy_b = handle.service.body_for("a"), handle.service.body_for("b")
    assert copy_a is not body and copy_b is not body and copy_a is not copy_b
    for got, want in ((copy_a, expected_a), (copy_b, expected_b)):
        for p, q in zip(got.parameters(), want.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())  # untouched
    sa, sb = copy.deepcopy(copy_a.state_dict()), copy.deepcopy(copy_b.state_dict())

    handle.service.aggregate({"a": 1.0, "b": 3.0})

    for k, v in body.state_dict().items():
        assert torch.allclose(v, 0.25 * sa[k] + 0.75 * sb[k], atol=1e-6), k
    assert handle.service.body_for("a") is body  # copies dropped
    _run(handle, "c", 3)
    with pytest.raises(ValueError, match="no body copy"):
        handle.service.aggregate({"zzz": 1.0})
    assert handle.service.body_for("c") is not body  # a refused aggregate keeps the copies


def test_eval_phase_runs_without_graph(serve):
    handle = serve("shared")
    before = handle.service.body.lin.weight.clone()
    with transport(handle, phase=Phase.EVAL) as tr:
        z = tr.forward(torch.randn(B, T, D), None)
        assert z.shape == (B, T, D)
        with pytest.raises(BodyServiceError) as e:
            tr.backward(z)
        assert e.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert torch.equal(before, handle.service.body.lin.weight)


# ---- lifecycle and TLS -------------------------------------------------------------------------


def test_stop_leaves_no_threads_and_closes_the_port(serve):
    before = {t.ident for t in threading.enumerate()}
    handle = serve("frozen")
    _run(handle, "a", 1)
    assert any(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())
    handle.stop(0)
    assert wait_for(lambda: {t.ident for t in threading.enumerate()} <= before)
    assert not any(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", handle.port), timeout=1):
        pass


def _self_signed() -> tuple[bytes, bytes]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_round_trip_and_plaintext_refused(serve):
    cert_pem, key_pem = _self_signed()
    handle = serve("frozen", tls=(cert_pem, key_pem))
    ledger = CommLedger()
    with transport(handle, ledger, root_certificates=cert_pem) as tr:
        split_step(tr, nn.Linear(D, D), torch.randn(B, T, D))
    assert ledger.by_kind()[Kind.GRADS_DOWN] == codec.frame_nbytes((B, T, D), torch.float32)
    with pytest.raises(BodyServiceError) as e:
        transport(handle, timeout_s=2).open()
    assert e.value.code is grpc.StatusCode.UNAVAILABLE


def test_a_session_between_forward_and_backward_gets_twice_the_ttl(serve):
    handle = serve("frozen", session_ttl_s=30.0)
    with transport(handle) as tr:
        tr.forward(torch.randn(B, T, D), None)  # pending: the client computes its tail
        now = time.monotonic()
        assert handle.service.reap_expired(now + 45.0) == 0  # an idle session would be gone
        assert handle.service.reap_expired(now + 61.0) == 1
