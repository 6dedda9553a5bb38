"""The privacy-compute-bytes-accuracy trade-off of the split: cut point x defence, each attacked
under each wire codec by ``fedft privacy``.

Each arm trains the main job with a cut (``split.head_blocks``) and a defence (``split.noise``,
``split.nopeek``) for ``--rounds`` rounds into ``--root/<arm>``, then replays and attacks its
traffic (``fedft privacy``, codecs fp32 and fp16). Resumable: an arm with summary.json keeps its
run, one with privacy.json keeps its attack. Then it writes one row per arm and codec (accuracy,
client FLOPs, bytes, attack scores) to ``--results``/tradeoff.csv and .json, the trade-off plot
tradeoff.png, and copies each arm's small artifacts (config, summary, metrics, privacy.json,
privacy.png) under ``--results``/runs/<arm>/.

    .venv/bin/python experiments/privacy_tradeoff.py                 # every arm (about 70 min, 2 cores)
    .venv/bin/python experiments/privacy_tradeoff.py --arms h0 h0-n0.5
    .venv/bin/python experiments/privacy_tradeoff.py --report-only   # tables and plot from finished arms
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# arm -> overrides of the main job [D]: cuts h in {0, 1, 2, 4}; noise at 0.1 / 0.5 / 1 / 3 / 10 x
# the activations' RMS; NoPeek weight 1 (needs h >= 1)
ARMS: dict[str, list[str]] = {
    "h0": ["split.head_blocks=0"],
    "h0-n0.1": ["split.head_blocks=0", "split.noise=0.1"],
    "h0-n0.5": ["split.head_blocks=0", "split.noise=0.5"],
    "h0-n1": ["split.head_blocks=0", "split.noise=1.0"],
    "h0-n3": ["split.head_blocks=0", "split.noise=3.0"],
    "h0-n10": ["split.head_blocks=0", "split.noise=10.0"],
    "h1": ["split.head_blocks=1"],
    "h1-n0.5": ["split.head_blocks=1", "split.noise=0.5"],
    "h1-nopeek": ["split.head_blocks=1", "split.nopeek=1.0"],
    "h2": ["split.head_blocks=2"],
    "h2-n0.5": ["split.head_blocks=2", "split.noise=0.5"],
    "h4": ["split.head_blocks=4"],
    "h4-n0.5": ["split.head_blocks=4", "split.noise=0.5"],
    "h4-nopeek": ["split.head_blocks=4", "split.nopeek=1.0"],
    # the client also fine-tunes its head blocks (split.train_head), without and with NoPeek
    "h1-train": ["split.head_blocks=1", "split.train_head=true"],
    "h1-train-nopeek": ["split.head_blocks=1", "split.train_head=true", "split.nopeek=1.0"],
    "h4-train-nopeek": ["split.head_blocks=4", "split.train_head=true", "split.nopeek=1.0"],
    # the same two at a tenth of the main job's learning rate for everything but prompts and
    # classifier (the head block and the final norm): at 0.003 the trained head block diverged
    "h1-train-lr3e-4": ["split.head_blocks=1", "split.train_head=true", "train.lr=0.0003"],
    "h1-train-nopeek-lr3e-4": ["split.head_blocks=1", "split.train_head=true", "split.nopeek=1.0",
                               "train.lr=0.0003"],
    # trained with the fp16 wire (the other arms train on fp32 and are attacked under both codecs)
    "h0-fp16": ["split.head_blocks=0", "split.wire_dtype=fp16"],
    "h2-fp16": ["split.head_blocks=2", "split.wire_dtype=fp16"],
}
# the same for text: SFPrompt on MiniLM-L6 / BBC News [D] (600 train, 300 test texts, 128 tokens)
TEXT = ["model.name=minilm-l6", "data.name=bbc-news", "data.max_length=128", "data.train_size=600",
        "data.test_size=300"]
for _h in (0, 1, 2, 4):
    ARMS[f"bbc-h{_h}"] = [*TEXT, f"split.head_blocks={_h}"]
ARMS["bbc-h0-n0.5"] = [*TEXT, "split.head_blocks=0", "split.noise=0.5"]
ARMS["bbc-h2-n0.5"] = [*TEXT, "split.head_blocks=2", "split.noise=0.5"]
ARTIFACTS = ("config.toml", "summary.json", "metrics.csv", "privacy.json", "privacy.png", "dcor.json")
ATTACKS = {  # column -> (attack name prefix, score key)
    "whitebox_psnr": ("white-box", "psnr_db"), "whitebox_ssim": ("white-box", "ssim"),
    "blackbox_psnr": ("black-box decoder", "psnr_db"), "blackbox_ssim": ("black-box decoder", "ssim"),
    "label_known_tail": ("known tail", "accuracy"), "label_cluster": ("gradient direction", "accuracy"),
    "label_norm_auc": ("gradient norm", "auc"),
    "tokens_nearest": ("nearest embedding", "token_accuracy"), "tokens_probe": ("learned probe", "token_accuracy"),
    "dcor": ("distance correlation", "dcor"),
}


def run_arm(root: Path, arm: str, rounds: int, test_size: int, audit: list[str], extra: list[str]) -> None:
    out = root / arm
    if not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "fedft.cli", "run"]
        if (out / "checkpoint").exists():
            cmd += ["--resume", str(out)]
        else:
            sets = [*ARMS[arm], f"federation.rounds={rounds}", f"data.test_size={test_size}",
                    f"federation.eval_every={rounds}", "output.plots=false", *extra]
            cmd += ["--out", str(out), *[a for kv in sets for a in ("--set", kv)]]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if not (out / "privacy.json").is_file():
        wire = [kv.split("=")[1] for kv in ARMS[arm] if kv.startswith("split.wire_dtype=")]
        cmd = [sys.executable, "-m", "fedft.cli", "privacy", str(out), *audit,
               *(["--codecs", wire[0]] if wire else [])]  # a run trained on fp16 only ever sent fp16
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def dcor_rows(d: Path, privacy: dict[str, Any]) -> list[dict[str, Any]]:
    """The distance-correlation rows of an arm attacked before ``fedft privacy`` reported them
    (computed once with the same samples and cached in the run as dcor.json)."""
    cache = d / "dcor.json"
    if not cache.is_file():
        from fedft.privacy.audit import AuditOptions, sent_distance_correlation

        o = privacy["options"]
        opts = AuditOptions(samples=o["samples"], seed=o["seed"], codecs=tuple(o["codecs"]))
        cache.write_text(json.dumps(sent_distance_correlation(d, opts), indent=2) + "\n")
    return json.loads(cache.read_text())


def rows_of(arm: str, d: Path) -> list[dict[str, Any]]:
    summary = json.loads((d / "summary.json").read_text())
    privacy = json.loads((d / "privacy.json").read_text())
    if not any("dcor" in a for a in privacy["attacks"]):
        privacy["attacks"] += dcor_rows(d, privacy)
    split = privacy["split"]
    chance = next(a for a in privacy["attacks"] if a["attack"].startswith("chance"))
    out = []
    for codec in privacy["options"]["codecs"]:
        row: dict[str, Any] = {
            "arm": arm, "head_blocks": split["head_blocks"], "noise": split["noise"], "nopeek": split["nopeek"],
            "train_head": "split.train_head=true" in ARMS[arm],
            "trained_wire": split["wire_dtype"], "codec": codec, "accuracy": summary["final_accuracy"], "client_flops": summary["client_flops"],
            "bytes_total": summary["bytes_total"],
            "bytes_activations_up": summary["bytes_by_kind"].get("activations_up", 0),
            "chance_psnr": chance.get("psnr_db"), "chance_ssim": chance.get("ssim"),
            "chance_tokens": chance.get("token_accuracy"),
        }
        for col, (prefix, key) in ATTACKS.items():
            hits = [a for a in privacy["attacks"] if a["codec"] == codec and a["attack"].startswith(prefix)]
            row[col] = hits[0][key] if hits else None
            if col == "label_known_tail" and hits:
                row["label_chance"] = hits[0]["chance"]
            if col == "label_norm_auc" and hits:
                row["label_norm_auc_chance"] = hits[0]["chance"]
        out.append(row)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """The best attack's PSNR (privacy, lower is better) against client FLOPs, coloured by accuracy;
    arms whose training diverged (accuracy below 0.2) are left out and named in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # each arm under the codec it trained with (what its clients really sent)
    own = [r for r in rows if r["codec"] == r["trained_wire"] and r["whitebox_psnr"] is not None]
    if not own:
        return
    ok = [r for r in own if r["accuracy"] >= 0.2]
    broken = sorted({r["arm"] for r in own if r["accuracy"] < 0.2})
    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = [r["client_flops"] / 1e12 for r in ok]
    ys = [max(r["whitebox_psnr"], r["blackbox_psnr"]) for r in ok]
    sc = ax.scatter(xs, ys, c=[r["accuracy"] for r in ok], cmap="viridis", s=70, edgecolors="k", vmin=0.3, vmax=0.92)
    for i, (r, x, y) in enumerate(zip(ok, xs, ys, strict=True)):
        ax.annotate(r["arm"], (x, y), fontsize=7, xytext=(5, -10 if i % 2 else 4), textcoords="offset points")
    ax.axhline(ok[0]["chance_psnr"], ls="--", c="grey", lw=1)
    ax.text(min(xs), ok[0]["chance_psnr"] + 1, "chance (auxiliary mean image)", fontsize=7, c="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("client FLOPs per run (TFLOP, log)")
    ax.set_ylabel("best reconstruction PSNR, dB (log; lower = more private)")
    fig.colorbar(sc, ax=ax, label="test accuracy")
    title = "SFPrompt, DINOv2-small / MNIST: best of white-box and black-box reconstruction vs client compute"
    if broken:
        title += f"\n(left out, training diverged: {', '.join(broken)})"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _f(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The cut x defence x codec table of the report (one row per arm and codec)."""
    head = ("| arm | h | noise | NoPeek | head trains | trained wire | attacked codec | accuracy | client TFLOP | bytes (GB) "
            "| white-box PSNR dB / SSIM | black-box PSNR dB / SSIM | tokens nearest / probe "
            "| dCor(input, sent) | labels: known tail / clustering / norm AUC |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['head_blocks']} | {r['noise']:g} | {r['nopeek']:g} | {'yes' if r['train_head'] else 'no'} "
            f"| {r['trained_wire']} | {r['codec']} "
            f"| {r['accuracy']:.3f} | {r['client_flops'] / 1e12:.2f} | {r['bytes_total'] / 1e9:.2f} "
            f"| {_f(r['whitebox_psnr'], '.1f')} / {_f(r['whitebox_ssim'], '.3f')} "
            f"| {_f(r['blackbox_psnr'], '.1f')} / {_f(r['blackbox_ssim'], '.3f')} "
            f"| {_f(r['tokens_nearest'], '.3f')} / {_f(r['tokens_probe'], '.3f')} "
            f"| {_f(r['dcor'], '.3f')} | {r['label_known_tail']:.3f} / {r['label_cluster']:.3f} / {r['label_norm_auc']:.3f} |")
    return "\n".join(lines) + "\n"


def report(root: Path, results: Path, arms: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for arm in arms:
        d = root / arm
        if not (d / "privacy.json").is_file():
            print(f"{arm}: not finished, skipped")
            continue
        rows += rows_of(arm, d)
        dest = results / "runs" / arm
        dest.mkdir(parents=True, exist_ok=True)
        for name in ARTIFACTS:
            if (d / name).is_file():
                shutil.copy2(d / name, dest / name)
    if not rows:
        return rows
    results.mkdir(parents=True, exist_ok=True)
    with (results / "tradeoff.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (results / "tradeoff.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, results / "tradeoff.png")
    (results / "tradeoff.md").write_text(markdown(rows))
    for r in rows:
        leak = (f"wb {r['whitebox_psnr']:.1f} dB  bb {r['blackbox_psnr']:.1f} dB" if r["whitebox_psnr"] is not None
                else f"tokens {r['tokens_nearest']:.3f} / {r['tokens_probe']:.3f}")
        print(f"{r['arm']:12s} {r['codec']} acc {r['accuracy']:.3f}  client {r['client_flops'] / 1e12:6.2f} TFLOP  "
              f"{leak}  labels {r['label_known_tail']:.2f}/{r['label_cluster']:.2f}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS),
                   help="arms to run (default all: the image arms, then the bbc-* text arms)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per arm [D] (4; the main job runs 10)")
    p.add_argument("--test-size", type=int, default=1000, help="test images scored after the last round")
    p.add_argument("--samples", type=int, default=32, help="client samples attacked per arm")
    p.add_argument("--steps", type=int, default=200, help="optimisation-inversion steps (h >= 1)")
    p.add_argument("--aux-size", type=int, default=1000, help="auxiliary images for the black-box decoder")
    p.add_argument("--text-aux", type=int, default=200, help="auxiliary texts for the token probe")
    p.add_argument("--root", type=Path, default=Path("runs/privacy"), help="run directories")
    p.add_argument("--results", type=Path, default=Path("experiments/results/privacy"), help="artifacts")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every arm")
    p.add_argument("--report-only", action="store_true", help="only tabulate finished arms")
    a = p.parse_args()
    if not a.report_only:
        audit = ["--samples", str(a.samples), "--steps", str(a.steps)]
        for arm in a.arms:
            text = arm.startswith("bbc-")  # fewer auxiliary texts: the probe's vocabulary grows with them
            run_arm(a.root, arm, a.rounds, 300 if text else a.test_size,
                    [*audit, "--aux-size", str(a.text_aux if text else a.aux_size)], a.set)
    report(a.root, a.results, a.arms)


if __name__ == "__main__":
    main()
