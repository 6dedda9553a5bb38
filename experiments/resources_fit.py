"""Fit table: the client part's memory per strategy (fedft.resources.memory) and which devices hold it.

For DINOv2-small (the main job's config at 224 and at 112 px, batch 32 [D]) and SmolLM2-135M-
Instruct (experiments/configs/sfprompt_smollm2.toml on chatterbot padded to 256 tokens, batch 8
[D]), real offline weights and real training examples, it measures the client part of sfprompt,
sfl, sfl_v1, sfl_v2, sl, fl_full, fl_prompt and fedavg with LoRA (``measure_cut``: params, grads,
optimizer state, saved activations, wire buffers, the idle process) at each split cut asked for,
and marks the catalogue devices (``fedft profiles``) whose ``memory_bytes`` hold it. Compute
precision is fp32 [D] (the catalogue's devices have no native bf16, where ``auto`` picks fp32);
each config keeps its own optimizer ([train] of its TOML).

``--validate`` checks the measurement against real processes: for each validation case a fresh
subprocess measures the report, builds the client part (the body's weights freed for split
strategies), resets its peak resident set (/proc/self/clear_refs), runs 3 real training steps
(split: through the loopback transport with the codec and an identity body) and reads the peak
(VmHWM). It reports peak RSS / measured total, and the peak's increase over the idle process
against the measured total without ``runtime``.

    .venv/bin/python experiments/resources_fit.py --threads 1            # fit.json, fit.csv
    .venv/bin/python experiments/resources_fit.py --validate --threads 1 # validate.json
    .venv/bin/python experiments/resources_fit.py --render               # the report, from the JSON
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments/results/resources/fit"
REPORT = ROOT / "experiments/reports/resources_fit.md"
DINO = "fedft/configs/sfprompt_mnist.toml"
SMOL = "experiments/configs/sfprompt_smollm2.toml"
COMMON = ["train.precision=fp32", "output.plots=false"]
# key -> (base config, overrides)
MODELS: dict[str, tuple[str, list[str]]] = {
    "dinov2-small@224": (DINO, ["data.image_size=224", "train.batch_size=32"]),
    "dinov2-small@112": (DINO, ["data.image_size=112", "train.batch_size=32"]),
    "smollm2-135m@256": (SMOL, ["data.name=chatterbot", "data.max_length=256", "train.batch_size=8",
                                "data.val_size=0"]),
}
# (strategy, forced method or None)
STRATEGIES = [("sfprompt", None), ("sfl", None), ("sfl_v1", None), ("sfl_v2", None), ("sl", None),
              ("fl_full", None), ("fl_prompt", None), ("fedavg", "lora")]
DEVICES = "rpi4,jetson-orin-nano,phone-low,phone-mid,phone-high,laptop"
VALIDATE = [("dinov2-small@112", "fl_full", None), ("dinov2-small@224", "sfprompt", (0, 0)),
            ("smollm2-135m@256", "fl_prompt", None), ("smollm2-135m@256", "sfl_v1", (0, 0))]
MIB = 2**20


def config(key: str, strategy: str, method: str | None) -> Any:
    from fedft.config import ExperimentConfig
    from fedft.strategies import STRATEGIES as REG

    base, extra = MODELS[key]
    sets = [*extra, *COMMON, f"federation.strategy={strategy}", *([f"method.name={method}"] if method else [])]
    cfg = ExperimentConfig.from_toml(ROOT / base, sets)
    return REG.get(strategy).configure(cfg)


def measure_model(key: str, cuts: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Every strategy's report for one model config, one model built per fine-tuning method."""
    from fedft.data.datasets import load_raw
    from fedft.model import build_model
    from fedft.resources.memory import measure_cut, training_batch

    by_method: dict[str, list[Any]] = {}
    for strategy, method in STRATEGIES:
        cfg = config(key, strategy, method)
        by_method.setdefault(cfg.method.name, []).append(cfg)
    first = next(iter(by_method.values()))[0]
    raw = load_raw(first.data, first.seed)
    rows = []
    for cfgs in by_method.values():
        model, _, pre = build_model(cfgs[0], raw.num_labels)
        batch = training_batch(cfgs[0], raw, pre)
        for cfg in cfgs:
            for cut in cuts if _family(cfg) == "split" else [None]:
                t0 = time.time()
                r = measure_cut(cfg, model, batch, cut)
                rows.append({"model": key, "method": cfg.method.name, "batch": cfg.train.batch_size,
                             "shape": {k: list(v.shape) for k, v in batch.items()}, **r.as_dict(),
                             "seconds": round(time.time() - t0, 2)})
                print(f"{key:18s} {cfg.federation.strategy:10s} {str(cut):7s} total {r.total / MIB:8.1f} MiB "
                      f"({time.time() - t0:.1f} s)", flush=True)
        del model, batch
        gc.collect()
    order = [s for s, _ in STRATEGIES]
    return sorted(rows, key=lambda r: (order.index(r["strategy"]), r["cut"] or (0, 0)))


def _family(cfg: Any) -> str:
    from fedft.strategies import STRATEGIES as REG

    return REG.get(cfg.federation.strategy).family


def devices(names: str) -> dict[str, int]:
    from fedft.resources.profiles import load_catalog

    cat = load_catalog()
    return {n: cat.devices[n].memory_bytes for n in names.split(",")}


def write_fit(rows: list[dict[str, Any]], devs: dict[str, int], argv: list[str]) -> None:
    import torch

    from fedft.resources.memory import RUNTIME_OVERHEAD_BYTES

    for r in rows:
        r["fits"] = {d: r["total"] <= m for d, m in devs.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python experiments/resources_fit.py " + " ".join(argv), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "runtime_overhead_bytes": RUNTIME_OVERHEAD_BYTES,
            "devices": devs, "precision": "fp32"}
    (OUT / "fit.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    parts = ["params", "grads", "optimizer", "activations", "wire", "runtime", "total"]
    with open(OUT / "fit.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "strategy", "method", "batch", "cut", *parts, *devs])
        for r in rows:
            cut = "" if r["cut"] is None else f"{r['cut'][0]}:{r['cut'][1]}"
            w.writerow([r["model"], r["strategy"], r["method"], r["batch"], cut, *(r[p] for p in parts),
                        *(int(r["fits"][d]) for d in devs)])


# ---- validation against a real process -------------------------------------------------------


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _trim() -> None:
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Named:
    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named

    def named_parameters(self) -> Any:
        return iter(self.named.items())


def _steps(cfg: Any, model: Any, parts: Any, batch: dict[str, Any], n: int) -> None:
    """``n`` real training steps of the client part (split: loopback codec + identity body)."""
    from fedft.accounting import CommLedger
    from fedft.body.transport import BodySession, LoopbackTransport
    from fedft.split import split_step
    from fedft.split.parts import Body
    from fedft.train import make_optimizer

    if parts is None:
        named = {k: p for k, p in model.named_parameters() if p.requires_grad}
        model.train()
    else:
        named = parts.client_named_parameters()
        parts.head.train()
        parts.tail.train()
        transport = LoopbackTransport(BodySession(Body(model, [])), CommLedger(), wire=cfg.split.wire_dtype)
    opt = make_optimizer(_Named(named), cfg.train)  # type: ignore[arg-type]
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        if parts is None:
            model.loss(model(batch), batch).backward()
        else:
            split_step(parts, batch, transport, model.loss)
        opt.step()


def child(key: str, strategy: str, method: str | None, cut: tuple[int, int] | None) -> dict[str, Any]:
    """Run in a fresh process: report, then the client part's peak RSS over 3 training steps."""
    import torch

    import fedft.federated.client  # noqa: F401  (the imports RUNTIME_OVERHEAD_BYTES was measured with)
    from fedft.data.datasets import load_raw
    from fedft.model import build_model
    from fedft.resources.memory import client_parts, measure_cut, training_batch

    torch.set_num_threads(1)
    idle = _rss()
    cfg = config(key, strategy, method)
    raw = load_raw(cfg.data, cfg.seed)
    model, _, pre = build_model(cfg, raw.num_labels)
    batch = training_batch(cfg, raw, pre)
    del raw, pre
    report = measure_cut(cfg, model, batch, cut)
    parts = client_parts(cfg, model, cut)
    if parts is not None:  # the device holds no body: free its weights
        for p in [*parts.body.parameters(), *parts.body.buffers()]:
            p.data = torch.empty(0, dtype=p.dtype)
    _trim()
    loaded = _rss()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    t0 = time.time()
    _steps(cfg, model, parts, batch, 3)
    peak = _hwm()
    return {"model": key, "strategy": strategy, "method": cfg.method.name, "cut": cut, "report": report.as_dict(),
            "idle_rss": idle, "loaded_rss": loaded, "peak_rss": peak, "steps_seconds": round(time.time() - t0, 1),
            "ratio_peak_over_total": peak / report.total,
            "ratio_increase_over_measured": (peak - idle) / (report.total - report.runtime)}


def validate(argv: list[str]) -> None:
    out = []
    for key, strategy, cut in VALIDATE:
        method = dict(STRATEGIES)[strategy]
        cmd = [sys.executable, __file__, "--child", json.dumps([key, strategy, method, cut])]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            raise SystemExit(f"validation child failed ({key} {strategy}):\n{res.stderr[-3000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{key:18s} {strategy:9s} measured {row['report']['total'] / MIB:8.1f} MiB, peak RSS "
              f"{row['peak_rss'] / MIB:8.1f} MiB, ratio {row['ratio_peak_over_total']:.2f}", flush=True)
        out.append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python experiments/resources_fit.py " + " ".join(argv), "rows": out}
    (OUT / "validate.json").write_text(json.dumps(doc, indent=1) + "\n")


# ---- the report -----------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def fit_table(doc: dict[str, Any]) -> list[str]:
    devs = list(doc["meta"]["devices"])
    head = ["model", "strategy", "cut", "params", "grads", "optimizer", "activations", "wire", "total", *devs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        cut = "-" if r["cut"] is None else f"{r['cut'][0]},{r['cut'][1]}"
        name = r["strategy"] + (f" ({r['method']})" if r["strategy"] == "fedavg" else "")
        cells = [r["model"], name, cut, *(_mib(r[k]) for k in ("params", "grads", "optimizer", "activations",
                                                                  "wire", "total"))]
        lines.append("| " + " | ".join([*cells, *("yes" if r["fits"][d] else "no" for d in devs)]) + " |")
    return lines


def validation_table(doc: dict[str, Any]) -> list[str]:
    lines = ["| model | strategy | measured total | idle RSS | RSS with the part built | peak RSS | "
             "peak / measured | (peak - idle) / (measured - runtime) |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['strategy']} | {_mib(r['report']['total'])} | {_mib(r['idle_rss'])} | "
                     f"{_mib(r['loaded_rss'])} | {_mib(r['peak_rss'])} | {r['ratio_peak_over_total']:.2f} | "
                     f"{r['ratio_increase_over_measured']:.2f} |")
    return lines


def findings(doc: dict[str, Any]) -> list[str]:
    """Per model config: which strategies (at each cut) every listed device holds, and which none."""
    out = []
    for key in dict.fromkeys(r["model"] for r in doc["rows"]):
        rows = [r for r in doc["rows"] if r["model"] == key]
        name = [r["strategy"] + ("" if r["cut"] is None else f" {r['cut'][0]},{r['cut'][1]}") for r in rows]
        every = [n for n, r in zip(name, rows, strict=True) if all(r["fits"].values())]
        none = [n for n, r in zip(name, rows, strict=True) if not any(r["fits"].values())]
        out.append(f"* {key}: fits every device: {', '.join(every) or '(no strategy)'}; fits no device: "
                   f"{', '.join(none) or '(no strategy)'}.")
    return out


def render() -> str:
    fit = json.loads((OUT / "fit.json").read_text())
    meta = fit["meta"]
    devs = ", ".join(f"{d} {_mib(m)}" for d, m in meta["devices"].items())
    lines = ["# Memory fit table (issue 18, item 4)", "",
             f"Made by `{meta['command']}` (fit.json, fit.csv under experiments/results/resources/fit/) and "
             "rendered by `python experiments/resources_fit.py --render`; the method is in docs/resources.md "
             f"(Memory). MiB; precision {meta['precision']}; runtime (the idle process) "
             f"{_mib(meta['runtime_overhead_bytes'])} MiB in every total. Devices' memory (MiB): {devs}. "
             "\"yes\": the client part's total fits the device.", "", *findings(fit), "", *fit_table(fit)]
    path = OUT / "validate.json"
    if path.is_file():
        val = json.loads(path.read_text())
        ratios = [r["ratio_peak_over_total"] for r in val["rows"]]
        idle = [r["idle_rss"] for r in val["rows"]]
        lines += ["", "## Validation against a real process", "",
                  f"Made by `{val['command']}`: a fresh process per case builds the client part (split: the "
                  "body's weights freed), resets its peak RSS and runs 3 training steps (split: through the "
                  "loopback transport and codec with an identity body, whose server half is in the process "
                  "too); peak = VmHWM after them. The measured total is a floor (docs/resources.md, Limits).",
                  "", *validation_table(val), "",
                  f"Peak RSS / measured total: {min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} cases; idle "
                  f"RSS {_mib(min(idle))} to {_mib(max(idle))} MiB against RUNTIME_OVERHEAD_BYTES = "
                  f"{_mib(meta['runtime_overhead_bytes'])} MiB."]
    return "\n".join(lines) + "\n"


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="model configs to measure (default: all)")
    ap.add_argument("--cuts", default="0:0,2:2", help="split cuts head:tail for split strategies")
    ap.add_argument("--devices", default=DEVICES, help="catalogue devices of the table's columns")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--validate", action="store_true", help="compare with real processes (validate.json)")
    ap.add_argument("--render", action="store_true", help=f"write {REPORT.relative_to(ROOT)} from the JSON")
    ap.add_argument("--out", default=str(OUT), help="results folder (default: %(default)s)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    OUT = Path(args.out)
    if args.child:
        key, strategy, method, cut = json.loads(args.child)
        print(json.dumps(child(key, strategy, method, None if cut is None else tuple(cut))))
        return
    import torch

    torch.set_num_threads(args.threads)
    argv = sys.argv[1:]
    if args.render:
        REPORT.write_text(render())
        print(REPORT.read_text())
        return
    if args.validate:
        validate(argv)
        return
    cuts = [tuple(int(x) for x in c.split(":")) for c in args.cuts.split(",")]
    devs = devices(args.devices)
    rows = [r for key in args.models.split(",") for r in measure_model(key, cuts)]  # type: ignore[arg-type]
    write_fit(rows, devs, argv)
    print("\n".join(fit_table(json.loads((OUT / "fit.json").read_text()))))


if __name__ == "__main__":
    main()
