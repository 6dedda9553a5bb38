"""Compressed parameter updates through Flower (``federation.params_wire``,
:mod:`fedft.federated.update_codec`): round trips, delta coding, exact record bytes, malformed
uploads dropped, and tiny federated runs whose ledgers shrink."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from fedft import keys
from fedft.config import ExperimentConfig, FederationConfig
from fedft.federated.records import to_arrays
from fedft.federated.server import ClientResult
from fedft.federated.update_codec import (
    BF16,
    F16,
    FORMATS,
    Q8,
    S8,
    decode_reply,
    decode_update,
    encode_update,
)
from fedft.runner import run

RNG = np.random.default_rng(0)
UPDATE = {
    "w": RNG.normal(size=(6, 5)).astype(np.float32),
    "conv": RNG.normal(size=(2, 3, 4)).astype(np.float32),
    "b": RNG.normal(size=(5,)).astype(np.float32),
    "scalar": np.asarray(1.5, np.float32),
    "zeros": np.zeros((3, 4), np.float32),
    "sp::idx": np.asarray([0, 3, 7], np.int64),
    "sp::val": np.asarray([0.1, -0.2, 0.05], np.float32),
}
TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=48",
    "data.test_size=16", "partition.scheme=iid", "partition.num_clients=2", "partition.min_size=4",
    "federation.rounds=1", "federation.engine=inprocess", "train.batch_size=8", "method.prompt_len=2",
    "output.plots=false",
]
NPY_HEADER = 128  # .npy v1.0 header of these small shapes (Flower's Array.data is np.save's bytes)


def _rows(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[:-1])) if len(shape) > 1 else 1


def test_formats_are_the_config_choices():
    assert FORMATS == typing.get_args(typing.get_type_hints(FederationConfig)["params_wire"])
    with pytest.raises(Exception, match="params_wire"):
        ExperimentConfig.from_overrides(["federation.params_wire=int4"])


def test_fp32_is_the_identity_and_fp16_an_exact_cast():
    assert encode_update(UPDATE, "fp32") is UPDATE and decode_update(UPDATE, "fp32") is UPDATE
    sent = encode_update(UPDATE, "fp16")
    assert sent["w" + F16].dtype == np.float16 and sent["sp::idx"] is UPDATE["sp::idx"]
    back = decode_update(sent, "fp16")
    assert sorted(back) == sorted(UPDATE)
    for k, v in UPDATE.items():
        want = v if v.dtype.kind != "f" else v.astype(np.float16).astype(np.float32)
        assert back[k].dtype == want.dtype and np.array_equal(back[k], want)


def test_bf16_carries_the_rounded_bits_as_uint16():
    sent = encode_update(UPDATE, "bf16")
    assert sent["w" + BF16].dtype == np.uint16 and sent["w" + BF16].shape == (6, 5)
    back = decode_update(sent, "bf16")
    for k in ("w", "b", "scalar"):
        rel = np.abs(back[k] - UPDATE[k]) / np.abs(UPDATE[k])
        assert rel.max() <= 2.0**-8  # 8 significant bits, round to nearest
    assert np.array_equal(back["zeros"], UPDATE["zeros"])


def test_int8_error_is_within_half_a_scale_per_element():
    sent = encode_update(UPDATE, "int8")
    back = decode_update(sent, "int8")
    for k, v in UPDATE.items():
        if v.dtype.kind != "f":
            assert np.array_equal(back[k], v)
            continue
        q, s = sent[k + Q8], sent[k + S8]
        assert q.dtype == np.int8 and q.shape == v.shape and s.dtype == np.float32 and s.shape == (_rows(v.shape),)
        err = np.abs(back[k] - v).reshape(_rows(v.shape), -1)
        assert (err <= s[:, None] / 2 + 1e-7).all()
    assert np.array_equal(back["zeros"], UPDATE["zeros"])  # scale 0 decodes to zeros


def test_uploads_are_deltas_decoded_against_the_global():
    received = {k: v for k, v in UPDATE.items() if not k.startswith("sp")}
    for step in (1e-1, 1e-3):
        trained = {k: v + step * RNG.normal(size=v.shape).astype(np.float32) for k, v in received.items()}
        sent = encode_update(trained, "int8", reference=received)
        assert np.abs(sent["w" + S8]).max() < 10 * step  # the scales follow the change, not the weights
        back = decode_update(sent, "int8", reference=received)
        for k, v in trained.items():
            assert back[k].dtype == np.float32
            s = sent[k + S8].reshape(-1, 1)
            assert (np.abs(back[k] - v).reshape(len(s), -1) <= s / 2 + 1e-6).all()
        err = max(float(np.abs(back[k] - trained[k]).max()) for k in trained)
        assert err < 0.01 * step * 10  # 1/254 of the change's absmax, not of the weights'
    untouched = encode_update(received, "int8", reference=received)
    assert all(np.array_equal(v, received[k]) for k, v in decode_update(untouched, "int8", received).items())


def test_sparse_values_travel_absolute_and_indices_as_they_are():
    sent = encode_update({"sp::idx": UPDATE["sp::idx"], "sp::val": UPDATE["sp::val"]}, "int8", reference={})
    assert sent["sp::idx"] is UPDATE["sp::idx"] and {"sp::val" + Q8, "sp::val" + S8} <= set(sent)
    back = decode_update(sent, "int8", reference={})
    assert np.abs(back["sp::val"] - UPDATE["sp::val"]).max() <= sent["sp::val" + S8][0] / 2


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "int8"])
def test_record_bytes_are_exact(fmt):
    """count_bytes() of the record = per array the key, the .npy header and the values."""
    sent = encode_update(UPDATE, fmt)
    want = 0
    for k, v in UPDATE.items():
        n = int(np.prod(v.shape))
        if v.dtype.kind != "f":
            want += len(k) + NPY_HEADER + v.nbytes
        elif fmt == "int8":
            want += len(k + Q8) + NPY_HEADER + n + len(k + S8) + NPY_HEADER + 4 * _rows(v.shape)
        else:
            want += len(k + (F16 if fmt == "fp16" else BF16)) + NPY_HEADER + 2 * n
    assert to_arrays(sent).count_bytes() == want


def test_int8_values_cost_a_quarter_plus_scales():
    big = {"w": RNG.normal(size=(64, 256)).astype(np.float32)}
    fp32 = to_arrays(big).count_bytes()
    int8 = to_arrays(encode_update(big, "int8")).count_bytes()
    assert int8 == len("w::q8") + NPY_HEADER + 64 * 256 + len("w::s8") + NPY_HEADER + 4 * 64
    assert fp32 == len("w") + NPY_HEADER + 4 * 64 * 256
    assert 0.25 < int8 / fp32 < 0.27


def _bad(sent: dict, key: str, value: np.ndarray | None) -> dict:
    out = dict(sent)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


def test_malformed_compressed_uploads_are_refused_with_a_reason():
    ref = {"w": UPDATE["w"], "b": UPDATE["b"]}
    sent = encode_update(ref, "int8", reference=ref)
    cases = {
        "lacks": _bad(sent, "w" + S8, None),  # missing partner
        "expected int8": _bad(sent, "w" + Q8, sent["w" + Q8].astype(np.int16)),  # wrong dtype
        "has shape": _bad(sent, "w" + S8, np.ones(5, np.float32)),  # q and scales disagree
        "non-finite": _bad(sent, "b" + S8, np.asarray([np.nan], np.float32)),  # NaN scale
        "uncompressed": _bad(sent, "w", ref["w"]),  # a float tensor that skipped the codec
        "unexpected": _bad(sent, "x" + Q8, np.zeros(3, np.int8)) | {"x" + S8: np.ones(1, np.float32)},
        "not in the int8": _bad(sent, "b" + F16, np.zeros(5, np.float16)),
        "expected float32": _bad(sent, "w" + Q8, np.zeros((5, 6), np.int8)) | {"w" + S8: np.ones(5, np.float32)},
    }
    for reason, update in cases.items():
        res = ClientResult(1, update=update)
        error = decode_reply(res, "int8", ref)
        assert error is not None and reason in error and "\n" not in error, (reason, error)
    ok = ClientResult(1, update=sent)
    assert decode_reply(ok, "int8", ref) is None and ok.update is not None and sorted(ok.update) == ["b", "w"]


def test_server_drops_a_malformed_int8_reply_and_finishes(tmp_path, monkeypatch):
    import fedft.federated.engine as engine

    real = engine.handle_train

    def flaky(content, pid, state=None):
        reply = real(content, pid, state)
        if pid == 1:  # scales of the wrong length for the first compressed tensor
            arrays = reply[keys.ARRAYS]
            key = next(k for k in arrays if k.endswith(S8))
            arrays[key] = to_arrays({"s": np.ones(len(arrays[key].numpy()) + 1, np.float32)})["s"]
        return reply

    monkeypatch.setattr(engine, "handle_train", flaky)
    cfg = ExperimentConfig.from_overrides([*TINY, "federation.strategy=sfprompt", "federation.params_wire=int8"])
    summary = run(cfg, tmp_path / "bad", show=False)
    rows = (tmp_path / "bad" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[3:5] for r in rows] == [["1", "1"]]  # one client accepted, one dropped
    assert summary["final_accuracy"] is not None


@pytest.mark.parametrize("strategy", ["sfprompt", "fl_full"])
def test_int8_run_sends_the_compressed_records_and_finishes(tmp_path, monkeypatch, strategy):
    """The ledger's params_up is the compressed replies' bytes, exactly; their values cost
    0.25-0.3 of fp32's (tiny-vit's rows are 32 wide: (32 + 4) / 128 = 0.28 at most), and the
    fp32 record of the same update would be larger by the computed amount."""
    import fedft.federated.engine as engine

    real, sent = engine.handle_train, []

    def spy(content, pid, state=None):
        reply = real(content, pid, state)
        sent.append(reply[keys.ARRAYS])
        return reply

    monkeypatch.setattr(engine, "handle_train", spy)
    cfg = ExperimentConfig.from_overrides([*TINY, f"federation.strategy={strategy}", "federation.params_wire=int8"])
    summary = run(cfg, tmp_path / strategy, show=False)
    rows = (tmp_path / strategy / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[3:5] for r in rows] == [["2", "0"]] and summary["final_accuracy"] is not None
    assert summary["bytes_by_kind"]["params_up"] == sum(r.count_bytes() for r in sent)
    values = fp32_values = int8_total = fp32_total = 0
    for record in sent:
        arrays = {k: a.numpy() for k, a in record.items()}
        for k, a in arrays.items():
            assert a.dtype.kind != "f" or k.endswith(S8), k  # every float tensor travelled as int8
            if k.endswith(Q8):
                name, n, rows_ = k[: -len(Q8)], a.size, _rows(a.shape)
                values += n + 4 * rows_
                fp32_values += 4 * n
                int8_total += len(k) + NPY_HEADER + n + len(name + S8) + NPY_HEADER + 4 * rows_
                fp32_total += len(name) + NPY_HEADER + 4 * n
            elif not k.endswith(S8):
                int8_total += len(k) + NPY_HEADER + a.nbytes
                fp32_total += len(k) + NPY_HEADER + a.nbytes
    assert sum(r.count_bytes() for r in sent) == int8_total
    assert 0.25 <= values / fp32_values <= 0.3, values / fp32_values
    assert int8_total < fp32_total
