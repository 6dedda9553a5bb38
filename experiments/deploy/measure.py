"""Measure a deployment on network namespaces: wire bytes per channel and time per round.

    sudo .venv/bin/python experiments/deploy/measure.py [--clients 3] [--rounds 2] [--idle 20]
        [--out experiments/results/deployment.json]

Runs the tiny SFPrompt job (the one of tests/test_deploy_netns.py) three ways: deployed on the
namespace test bed (experiments/deploy/netns.py: SuperLink with TLS and SuperNode auth, body
service with TLS, one SuperNode per client namespace), with the in-process engine, and with
Flower's simulation engine. Wire bytes are the rx+tx byte counters of the server's two interfaces
(``fl0`` carries only Flower traffic, ``bd0`` only body-service traffic), read just before
``flwr run`` and once summary.json exists. Ledger bytes per channel come from the run's
ledger.csv: Flower = phases setup and sync (records of Flower messages), body = every other
phase (body-service calls). ``--idle`` seconds of idle polling (nodes connected, no run) are
measured first on ``fl0``. Prints a table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns  # noqa: E402

from fedft.config import ExperimentConfig  # noqa: E402

FLOWER_PHASES = ("setup", "sync")


def tiny_job(clients: int, rounds: int) -> ExperimentConfig:
    return ExperimentConfig.from_toml(ROOT / "experiments/configs/sfprompt_mnist.toml", [
        "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
        "data.test_size=32", f"partition.num_clients={clients}", "partition.scheme=iid", "partition.min_size=4",
        "train.batch_size=8", "method.prompt_len=4", f"federation.rounds={rounds}", "output.plots=false"])


def ledger_by_channel(run_dir: Path) -> dict[str, int]:
    out = {"flower": 0, "body": 0}
    with open(run_dir / "ledger.csv") as f:
        for row in csv.DictReader(f):
            out["flower" if row["phase"] in FLOWER_PHASES else "body"] += int(row["nbytes"])
    return out


def round_seconds(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        cum = [float(r["seconds"]) for r in csv.DictReader(f)]
    return [round(b - a, 2) for a, b in zip([0.0, *cum[:-1]], cum, strict=True)]


def idle_polling(tb: netns.Testbed, work: Path, seconds: float) -> dict[str, float]:
    """Flower bytes on the server's fl0 while the SuperNodes are connected and no run exists."""
    from fedft import deploy

    certs = work / "certs"
    deploy.generate_certs(certs, [netns.SERVER_FLOWER_IP, netns.SERVER_BODY_IP], nodes=len(tb.clients))
    link = f"{netns.SERVER_FLOWER_IP}:{netns.LINK_PORT}"
    tb.popen(tb.server, deploy.superlink_command(certs, port=netns.LINK_PORT), deploy.flower_env(work / "lh"),
             work / "superlink.log")
    deploy.write_connection(work / "cli", "fedft", link, certs / "ca.crt")
    for k in range(len(tb.clients)):
        netns._retry(lambda k=k: tb.run(tb.server, deploy.register_command(
            deploy.node_key(certs, k).with_suffix(".pub"), "fedft"), deploy.flower_env(work / "cli")), "register")
    for k, h in enumerate(tb.clients):
        tb.popen(h, deploy.supernode_command(certs, link, k, len(tb.clients)), deploy.flower_env(work / f"n{k}"),
                 work / f"supernode-{k}.log")
    time.sleep(10)  # let the nodes activate and settle into polling
    before = tb.counters()
    time.sleep(seconds)
    after = tb.counters()
    srv = tb.server.ns
    total = sum(after[f"{srv}/fl0/{d}"] - before[f"{srv}/fl0/{d}"] for d in ("rx", "tx"))
    return {"seconds": seconds, "bytes": total, "bytes_per_s": round(total / seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle polling to measure (0 = skip)")
    ap.add_argument("--no-simulation", action="store_true", help="skip the Flower simulation run")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/results/deployment.json")
    args = ap.parse_args()
    why = netns.available()
    if why:
        print(f"cannot build the test bed: {why}", file=sys.stderr)
        return 2
    from fedft.federated.simulation import flower_env
    from fedft.runner import run

    flower_env()
    cfg = tiny_job(args.clients, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="fedft-measure-"))
    result: dict = {"config": "tiny SFPrompt job of tests/test_deploy_netns.py", "clients": args.clients,
                    "rounds": args.rounds, "work_dir": str(work)}
    if args.idle:
        with netns.Testbed("fdm", args.clients) as tb:
            result["idle_flower_polling"] = idle_polling(tb, work / "idle", args.idle)
    with netns.Testbed("fdm", args.clients) as tb:
        d = netns.deploy_job(tb, cfg, work / "deploy", work / "deploy-run", app_src=ROOT)
    srv = tb.server.ns
    ledger = ledger_by_channel(work / "deploy-run")
    wire = {"flower": d.wire(srv, "fl0"), "body": d.wire(srv, "bd0")}
    result["deployment"] = {
        "submit_to_summary_s": round(d.seconds, 1), "round_seconds": round_seconds(work / "deploy-run"),
        "wire_bytes": wire, "ledger_bytes": ledger,
        "wire_over_ledger": {k: round(wire[k] / ledger[k], 3) for k in wire},
        "clients_wire_bytes": {c.ns: {"flower": d.wire(c.ns, "fl0"), "body": d.wire(c.ns, "bd0")}
                               for c in tb.clients},
        "bytes_by_kind": d.summary["bytes_by_kind"], "final_accuracy": d.summary["final_accuracy"],
        "final_loss": d.summary["final_loss"]}
    engines = ["inprocess"] + ([] if args.no_simulation else ["simulation"])
    for engine in engines:
        c = cfg.replace(federation=dataclasses.replace(cfg.federation, engine=engine))
        t0 = time.time()
        s = run(c, work / engine, show=False)
        result[engine] = {"wall_s": round(time.time() - t0, 1), "round_seconds": round_seconds(work / engine),
                          "ledger_bytes": ledger_by_channel(work / engine), "bytes_by_kind": s["bytes_by_kind"],
                          "final_accuracy": s["final_accuracy"], "final_loss": s["final_loss"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    dep = result["deployment"]
    print(f"{'channel':8s} {'wire bytes':>12s} {'ledger bytes':>13s} {'wire/ledger':>11s}")
    for k in ("flower", "body"):
        print(f"{k:8s} {wire[k]:12d} {ledger[k]:13d} {dep['wire_over_ledger'][k]:11.3f}")
    for name in ("deployment", *engines):
        print(f"{name:10s} seconds per round: {result[name]['round_seconds']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
