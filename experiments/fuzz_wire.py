"""Fuzz the wire: the codec's decoders, the Open JSON parser and the body service's request handling.

Targets (each an oracle over hostile input; a *failure* is anything the oracle does not allow):

* ``codec_bytes``: arbitrary bytes (half of them behind a valid magic) into ``decode_frames`` with
  a random cap: frames or ``CodecError``, and nothing decoded (nor its storage) above the cap;
* ``codec_mutation``: valid frames of every format, mutated (truncations, bit flips, enormous or
  zero dims, ``ndim`` > 8, unknown codes, bad int4 groups and top-k ``k``, out-of-range indices,
  NaN/Inf scales, appended bytes); the same oracle. Run by Hypothesis and by a plain seeded
  mutation loop (many more examples per second);
* ``open_json``: arbitrary JSON, bytes, deep nesting and valid Open payloads with fields replaced
  into ``SessionSpec.from_json``: a spec or ``ServiceError(INVALID_ARGUMENT)``;
* ``service``: random sequences of Open/Forward/Backward/Close on an in-process ``BodyService``
  (frozen and shared bodies) with valid, replayed, truncated, oversized, wrong-format, NaN/Inf and
  garbage payloads and unknown sessions: bytes or a ``ServiceError`` with a known status within a
  per-call timeout; afterwards a valid client's step equals the same step on a fresh service;
* ``update_codec``: hostile parameter-update arrays into ``decode_update`` (``fuzz_wire_parsers.py``, with the Open payloads);
* ``grpc``: hostile callers in threads against a real gRPC service on loopback while a good client
  trains (``fuzz_wire_grpc.py``).

    .venv/bin/python experiments/fuzz_wire.py --seconds 600 --seed 0

writes ``experiments/results/wire/fuzz.json``: examples and failures per target, and the growth of
the process's peak RSS. ``tests/test_fuzz_wire.py`` runs the same targets briefly.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import struct
import sys
import time
from pathlib import Path

import torch
from fuzz_wire_parsers import check_open, check_update, hostile_updates, open_payloads
from fuzz_wire_service import ServiceFuzz, service_ops
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fedft.body import codec

FORMATS = ["fp32", "fp16", "bf16", "int8", "int4", "int4:2", "int4:6", "int4:4096", "topk", "topk:0.5", "topk:1"]
INT_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool]
SPECIAL_DIMS = [0, 1, 2, 7, 2**16, 2**31, 2**32, 2**48 + 1, 2**62, 2**63, 2**64 - 1]
SPECIAL_U32 = [0, 1, 2, 3, 7, 9, 4096, 4097, 2**16, 2**16 + 1, 2**31, 2**32 - 1]
SPECIAL_F32 = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3.4e38, 1e-45]
CAPS = [None, 0, 1, 4, 64, 4096, 2**20]
MUTATIONS = ["truncate", "flip", "dim", "ndim", "code", "param", "scale", "index", "append", "version", "splice"]
OUT = Path(__file__).resolve().parent / "results" / "wire" / "fuzz.json"


class Failure(AssertionError):
    """The oracle refused an outcome (an exception it does not allow, or a broken bound)."""


# ---- valid frames and their mutations ----------------------------------------------------------


def make_tensor(shape: tuple[int, ...], seed_: int, scale: float = 1.0, dtype: torch.dtype = torch.float32,
                ties: bool = False) -> torch.Tensor:
    """A deterministic tensor: Gaussian floats times ``scale`` (optionally rounded into ties, a
    zero row), or random integers / booleans."""
    g = torch.Generator().manual_seed(seed_)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    if not dtype.is_floating_point:
        hi = 256 if dtype == torch.uint8 else 2**31 - 1
        return torch.randint(0, hi, shape, generator=g, dtype=dtype)
    x = torch.randn(shape, generator=g)
    if ties:
        x = x.round()
        if x.dim() >= 1 and x.numel():
            x.reshape(-1, x.shape[-1])[0] = 0.0
    return (x * scale).to(dtype)


def mappable(buf: bytes) -> bool:
    """True if ``buf`` starts with a header and a whole shape that :func:`mutate` can map."""
    return (len(buf) >= codec.HEADER_BYTES and buf[:2] == codec.MAGIC and buf[4] <= codec.MAX_DIMS
            and len(buf) >= codec.HEADER_BYTES + codec.DIM_BYTES * buf[4])


def frame_regions(buf: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of a valid frame's parts: header, shape, parameter, scales, payload."""
    ndim, code = buf[4], buf[3]
    head = codec.HEADER_BYTES + codec.DIM_BYTES * ndim
    shape = struct.unpack_from(f"<{ndim}Q", buf, codec.HEADER_BYTES)
    R, _ = codec._rows_cols(shape)
    out = {"header": (0, codec.HEADER_BYTES), "shape": (codec.HEADER_BYTES, head)}
    pos = head
    if code in (9, 10):  # int4, topk carry a uint32 parameter
        out["param"] = (pos, pos + 4)
        pos += 4
    if code in (8, 10):  # one float32 scale per row
        out["scales"] = (pos, min(len(buf), pos + 4 * R))
    elif code == 9:
        out["scales"] = (pos, pos + 4)
    out["payload"] = (pos, len(buf))
    return out


def mutate(buf: bytes, kind: str, a: int, b: int, extra: bytes = b"") -> bytes:
    """One mutation of the frame ``buf`` (whose first frame is valid) chosen by ``kind`` and two
    integers that pick positions and values."""
    regions = frame_regions(buf)
    out = bytearray(buf)

    def at(region: str) -> int:
        lo, hi = regions.get(region, regions["payload"])
        return lo + a % max(1, hi - lo)

    if kind == "truncate":
        return bytes(out[: a % (len(out) + 1)])
    if kind == "flip":
        names = sorted(regions)
        pos = at(names[b % len(names)])
        if pos < len(out):
            out[pos] ^= 1 << (a % 8)
    elif kind == "dim" and buf[4]:
        struct.pack_into("<Q", out, codec.HEADER_BYTES + 8 * (a % buf[4]), SPECIAL_DIMS[b % len(SPECIAL_DIMS)])
    elif kind == "ndim":
        out[4] = a % 256
    elif kind == "code":
        out[3] = a % 256
    elif kind == "param" and "param" in regions and regions["param"][1] <= len(out):
        struct.pack_into("<I", out, regions["param"][0], SPECIAL_U32[b % len(SPECIAL_U32)])
    elif kind == "scale":
        pos = at("scales") & ~3 if "scales" in regions else at("payload")
        if pos + 4 <= len(out):
            struct.pack_into("<f", out, pos, SPECIAL_F32[b % len(SPECIAL_F32)])
    elif kind == "index" and len(out) >= 2:
        out[-2 - 2 * (a % max(1, (len(out) - regions["payload"][0]) // 2))] = 0xFF
    elif kind == "append":
        return bytes(out) + extra
    elif kind == "version":
        out[2 if b % 2 else a % 2] = a % 256
    elif kind == "splice":
        cut = a % (len(out) + 1)
        return bytes(out[:cut]) + extra + bytes(out[cut:])
    return bytes(out)


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[torch.Tensor, str | None, bytes]:
    """``(tensor, format, frame)``: a float tensor in one of FORMATS, or an integer/bool tensor."""
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    if ndim:
        shape = (*shape[:-1], draw(st.integers(0, 70)))
    if draw(st.integers(0, 9)) == 0:
        t = make_tensor(shape, draw(st.integers(0, 2**16)), dtype=draw(st.sampled_from(INT_DTYPES)))
        return t, None, codec.encode(t)
    fmt = draw(st.sampled_from(FORMATS))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3, 1e-30, 1e30]))
    t = make_tensor(shape, draw(st.integers(0, 2**16)), scale, ties=draw(st.booleans()))
    return t, fmt, codec.encode(t, fmt)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame after one to three mutations."""
    _, _, buf = draw(valid_frames())
    for _ in range(draw(st.integers(1, 3))):
        if not mappable(buf):
            break  # no longer a frame we can map; the decoder gets it as it is
        kind = draw(st.sampled_from(MUTATIONS))
        buf = mutate(buf, kind, draw(st.integers(0, 2**20)), draw(st.integers(0, 2**20)),
                     draw(st.binary(max_size=40)) if kind in ("append", "splice") else b"")
    return buf


def _headed(code: int, dims: list[int], rest: bytes) -> bytes:
    return struct.pack("<2sBBB3x", codec.MAGIC, codec.VERSION, code, len(dims) % 256) + struct.pack(
        f"<{len(dims)}Q", *dims) + rest


def hostile_bytes() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, half of them behind a valid magic and version with random code and dims."""
    dims = st.lists(st.one_of(st.sampled_from(SPECIAL_DIMS), st.integers(0, 2**64 - 1)), max_size=10)
    return st.one_of(st.binary(max_size=300),
                     st.builds(_headed, st.integers(0, 12), dims, st.binary(max_size=200)))


# ---- oracles -----------------------------------------------------------------------------------


def check_decode(buf: bytes, cap: int | None) -> int:
    """Decode ``buf`` under ``cap``; return the number of frames (-1 for a CodecError)."""
    try:
        frames = codec.decode_frames(buf, max_bytes=cap)
    except codec.CodecError as e:
        if "\n" in str(e):
            raise Failure(f"CodecError message spans lines: {str(e)[:200]!r}") from None
        return -1
    except Exception as e:
        raise Failure(f"decode_frames(cap={cap}) raised {type(e).__name__}: {str(e)[:300]} on {buf[:64].hex()}") from e
    for f in frames:
        size, storage = f.tensor.numel() * f.tensor.element_size(), f.tensor.untyped_storage().nbytes()
        if cap is not None and max(size, storage) > cap:
            raise Failure(f"decoded {size} bytes (storage {storage}) over the cap {cap}")
    return len(frames)


# ---- the runs ----------------------------------------------------------------------------------


def _hyp_targets(stats: dict) -> dict:
    """The Hypothesis-driven targets, each a function of its drawn example."""

    def bytes_target(buf: bytes, cap: int | None) -> None:
        stats["codec_bytes"] += 1
        check_decode(buf, cap)

    def mutation_target(buf: bytes, cap: int | None) -> None:
        stats["codec_mutation"] += 1
        check_decode(buf, cap)

    def open_target(payload: bytes) -> None:
        stats["open_json"] += 1
        check_open(payload)

    def update_target(example: tuple) -> None:
        stats["update_codec"] += 1
        check_update(*example)

    def service_target(mode: str, ops: list) -> None:
        stats["service"] += 1
        ServiceFuzz(mode).run(ops)

    caps = st.sampled_from(CAPS)
    return {"codec_bytes": ((hostile_bytes(), caps), bytes_target),
            "codec_mutation": ((mutated_frames(), caps), mutation_target),
            "open_json": ((open_payloads(),), open_target),
            "update_codec": ((hostile_updates(),), update_target),
            "service": ((st.sampled_from(["frozen", "shared"]), service_ops()), service_target)}


def mutation_loop(rng: random.Random, deadline: float, stats: dict, failures: list) -> None:
    """The plain mutation loop: valid frames of every format, up to four random mutations each."""
    while time.monotonic() < deadline:
        for _ in range(200):
            fmt = rng.choice([*FORMATS, None])
            shape = tuple(rng.randint(0, 5) for _ in range(rng.randint(0, 3))) + (rng.randint(0, 40),)
            t = make_tensor(shape, rng.randrange(2**16), rng.choice([1.0, 1e30, 1e-30]),
                            dtype=torch.float32 if fmt else rng.choice(INT_DTYPES))
            buf = codec.encode(t, fmt)
            for _ in range(rng.randint(1, 4)):
                if not mappable(buf):
                    break
                buf = mutate(buf, rng.choice(MUTATIONS), rng.randrange(2**20), rng.randrange(2**20),
                             rng.randbytes(rng.randint(0, 40)))
            stats["codec_mutation_loop"] += 1
            try:
                check_decode(buf, rng.choice(CAPS))
            except Failure as e:
                failures.append({"target": "codec_mutation_loop", "error": str(e)[:500]})


def run_hypothesis(name: str, target: tuple, base_seed: int, deadline: float, chunk: int, failures: list) -> None:
    """Run ``target`` (strategies, function) under Hypothesis in chunks of ``chunk`` examples with
    fresh seeds until the deadline; a falsified example is recorded once per chunk."""
    strategies, fn = target
    i = 0
    while time.monotonic() < deadline:
        wrapped = settings(max_examples=chunk, deadline=None, database=None, derandomize=False,
                           suppress_health_check=list(HealthCheck))(
            seed(base_seed * 100_003 + i)(given(*strategies)(fn)))
        i += 1
        try:
            wrapped()
        except Exception as e:  # a Failure, shrunk by Hypothesis
            failures.append({"target": name, "error": f"{type(e).__name__}: {str(e)[:500]}"})


def peak_rss_mib() -> float:  # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0, help="total budget [D] (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grpc-share", type=float, default=0.2, help="share of the budget for gRPC callers [D]")
    ap.add_argument("--callers", type=int, default=4, help="hostile gRPC caller threads [D]")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from fuzz_wire_grpc import grpc_storm

    stats: dict[str, int] = dict.fromkeys(["codec_bytes", "codec_mutation", "codec_mutation_loop",
                                           "open_json", "update_codec", "service", "grpc_calls"], 0)
    failures: list[dict] = []
    rss0, t0 = peak_rss_mib(), time.monotonic()
    shares = {"codec_bytes": 0.1, "codec_mutation": 0.15, "open_json": 0.1, "update_codec": 0.1, "service": 0.2}
    loop_share = 1.0 - args.grpc_share - sum(shares.values())
    rss: dict[str, float] = {}
    for name, fn in _hyp_targets(stats).items():
        before = peak_rss_mib()
        run_hypothesis(name, fn, args.seed, time.monotonic() + shares[name] * args.seconds,
                       20 if name == "service" else 200, failures)
        rss[name] = round(peak_rss_mib() - before, 1)
    before = peak_rss_mib()
    mutation_loop(random.Random(args.seed), time.monotonic() + loop_share * args.seconds, stats, failures)
    rss["codec_mutation_loop"] = round(peak_rss_mib() - before, 1)
    before = peak_rss_mib()
    grpc = grpc_storm(args.grpc_share * args.seconds, args.callers, args.seed, failures)
    stats["grpc_calls"] = grpc.pop("calls")
    rss["grpc"] = round(peak_rss_mib() - before, 1)
    result = {"command": "experiments/fuzz_wire.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "seed": args.seed, "seconds": round(time.monotonic() - t0, 1), "examples": stats,
              "failures": failures, "n_failures": len(failures), "grpc": grpc,
              "peak_rss_mib": {"start": round(rss0, 1), "end": round(peak_rss_mib(), 1), "growth_by_target": rss},
              "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "examples", "n_failures", "peak_rss_mib")}))
    return result


if __name__ == "__main__":
    main()
