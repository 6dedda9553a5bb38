"""Benchmark: seconds per round and peak memory of a simulation with N registered clients, K per round.

Each case runs ``fedft run`` in a child process (the config, ``partition.num_clients=N``,
``federation.clients_per_round=K``, ``--set`` overrides) and, every 0.25 s, sums the resident
memory of that process and all its descendants (Ray's GCS, raylet and client actors included):
RSS, and PSS from ``/proc/<pid>/smaps_rollup`` (shared pages such as Ray's object store split
among the processes that map them, so PSS does not count them twice). The peak of each is
recorded with the per-process breakdown at the PSS peak. Per-round times come from
metrics.csv's cumulative ``seconds``; ``round_mean_s`` is the mean of the rounds after the first
(round 1 also loads every client actor's runtime). ``--engine both`` runs each case on the
Flower simulation engine and on the in-process engine (``federation.engine=inprocess``: the
same records, handlers and body service, no Flower runtime) and reports the framework overhead
per participating client, ``(simulation round - in-process round) / K``.

``--preset small`` is the workload of experiments/reports/resources_scaling.md: the main job
(SFPrompt, prompt tuning, split learning through the gRPC body service) with the tiny random ViT
at 16 px on MNIST (``--samples-per-client 6``: 6 x N training images, all 60,000 from N = 10,000
on), Dirichlet(1.0), ``partition.min_size=0`` (clients left empty are registered but never
sampled); no validation split, the final test on 200 test images. ``--cpus 0`` pins each run,
Ray's processes included, to one core, so the simulation's two client actors share the core the
in-process engine has (the same work on the same CPU).

    .venv/bin/python experiments/bench_scaling.py --preset small --samples-per-client 6 --cpus 0 \\
        --cases 1000:10 1000:100 10000:10 10000:100 --rounds 3 --engine both \\
        --json experiments/results/resources/scaling/n1000_n10000.json
    # Flower's per-node memory and message pickup, in one process (no training):
    .venv/bin/python experiments/bench_scaling.py --flower-sweep 10000:100 100000:10 \\
        --json experiments/results/resources/scaling/flower_sweep.json
    # the issue's first measurement (DINOv2-small, 112 px), as a new user runs it:
    .venv/bin/python experiments/bench_scaling.py --clients 1000 --rounds 2 --set data.train_size=0 \\
        --set federation.clients_per_round=10 --set partition.alpha=1.0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

GIB = 2**30
SMALL = ["model.name=tiny-vit", "data.name=mnist", "data.image_size=16", "data.train_size=0", "data.val_size=0",
         "data.test_size=200", "partition.alpha=1.0", "partition.min_size=0", "train.precision=fp32"]
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def _pss(pid: int) -> int:
    """PSS of one process in bytes (0 when it is gone or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples the RSS and PSS of a process and its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_rss = self.peak_pss = 0
        self.at_peak: list[dict[str, Any]] = []
        self.samples = 0
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (label, CPU seconds at its last sample)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rows = []
        for p in procs:
            try:
                rows.append({"pid": p.pid, "name": _name(p), "rss": p.memory_info().rss, "pss": _pss(p.pid)})
                t = p.cpu_times()
                self.cpu[p.pid] = (rows[-1]["name"], t.user + t.system)
            except psutil.Error:
                continue
        rss, pss = sum(r["rss"] for r in rows), sum(r["pss"] for r in rows)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        if pss > self.peak_pss:
            self.peak_pss, self.at_peak = pss, rows

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds (user + system) per process label, as last sampled."""
        out: dict[str, float] = {}
        for name, secs in self.cpu.values():
            out[name] = round(out.get(name, 0.0) + secs, 1)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _name(p: psutil.Process) -> str:
    """A short label: Ray's worker title (``ray::ClientAppActor``), else the executable and module."""
    cmd = p.cmdline() or [p.name()]
    if cmd[0].startswith("ray::"):
        return "ray::ClientAppActor" if cmd[0].startswith("ray::ClientApp") else cmd[0].split()[0]
    args = [a for a in cmd[1:] if a not in ("-u", "-B")]
    if "python" in Path(cmd[0]).name and args:
        return f"python -m {args[1]}" if args[0] == "-m" and len(args) > 1 else f"python {Path(args[0]).name}"
    return Path(cmd[0]).name


def _thread_cpu(native_id: int) -> float:
    """CPU seconds of one thread of this process (Linux)."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def stacks_child(out: str, argv: list[str]) -> None:
    """Run ``python -m fedft.cli ...`` in this process while sampling every Python thread's stack
    every 50 ms, weighted by the CPU the thread used since the last sample (a blocked thread
    weighs nothing); writes the top functions by own and by inclusive CPU seconds to ``out``."""
    import runpy
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    stop = threading.Event()

    def tick() -> None:
        last: dict[int, float] = {}
        while not stop.wait(0.05):
            frames = sys._current_frames()
            for t in threading.enumerate():
                if t is threading.current_thread() or t.native_id is None or t.ident not in frames:
                    continue
                cpu = _thread_cpu(t.native_id)
                used, last[t.native_id] = cpu - last.get(t.native_id, cpu), cpu
                if used <= 0:
                    continue
                f, stack = frames[t.ident], []
                while f is not None:
                    stack.append(f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}")
                    f = f.f_back
                own[stack[0]] += used
                for key in set(stack):
                    incl[key] += used
                by_thread[t.name.split(" (")[-1].rstrip(")")] += used

    threading.Thread(target=tick, daemon=True).start()
    sys.argv = [argv[1], *argv[2:]]
    try:
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        stop.set()
        top = lambda c, k: [[name, round(v, 2)] for name, v in c.most_common(k)]  # noqa: E731
        Path(out).write_text(json.dumps({"cpu_s_by_thread": top(by_thread, 20), "own": top(own, 40),
                                         "inclusive": top(incl, 60)}, indent=1) + "\n")


def run_case(config: str, n: int, k: int, rounds: int, engine: str, out: Path, extra: list[str],
             flwr_home: str, stacks: bool = False, cpus: str = "") -> dict[str, Any]:
    """One ``fedft run`` with N registered clients and K per round; its times and peak memory
    (``cpus``: pin the run and all its processes to these cores with taskset)."""
    sets = [f"partition.num_clients={n}", f"federation.clients_per_round={k}", f"federation.rounds={rounds}",
            f"federation.engine={engine}", "output.plots=false", "partition.min_size=1", *extra]
    cmd = [sys.executable, "-m", "fedft.cli", "run", "--config", config, "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    stacks_file = out.parent / f"{out.name}.stacks.json"
    if stacks:
        cmd = [sys.executable, __file__, "--stacks-child", str(stacks_file), "--", *cmd[1:]]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": flwr_home}
    t0 = time.time()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as mem:
            rc = proc.wait()
    wall = time.time() - t0
    if rc != 0:
        tail = (out.parent / f"{out.name}.log").read_text()[-3000:]
        return {"clients": n, "per_round": k, "engine": engine, "failed": True, "error_tail": tail,
                "wall_s": round(wall, 1), "peak_rss_gib": round(mem.peak_rss / GIB, 3),
                "peak_pss_gib": round(mem.peak_pss / GIB, 3), "command": _shell(cmd)}
    with open(out / "metrics.csv", newline="") as f:
        secs = [float(r["seconds"]) for r in csv.DictReader(f) if r["round"]]
    per_round = [secs[0]] + [b - a for a, b in zip(secs, secs[1:], strict=False)]
    summary = json.loads((out / "summary.json").read_text())
    later = per_round[1:] or per_round
    return {
        "clients": n, "per_round": k, "engine": engine, "rounds": rounds, "failed": False,
        "seconds_per_round": [round(s, 3) for s in per_round],
        "round_mean_s": round(sum(later) / len(later), 3),
        "outside_rounds_s": round(wall - summary["wall_seconds"], 1),
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(mem.peak_rss / GIB, 3), "peak_pss_gib": round(mem.peak_pss / GIB, 3),
        "memory_at_peak": _group(mem.at_peak), "memory_samples": mem.samples, "cpu_s": mem.cpu_by_name(),
        "partitions_file_bytes": sum(f.stat().st_size for f in out.glob("partitions.*")),
        "nonempty_clients": json.loads((out / "partitions.json").read_text()).get("nonempty"),
        **({"driver_stacks": json.loads(stacks_file.read_text())} if stacks and stacks_file.is_file() else {}),
        "final_accuracy": summary["final_accuracy"], "bytes_total": summary["bytes_total"],
        "command": _shell(cmd),
    }


def _group(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """PSS/RSS in MiB per process label (summed over processes with the same label)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        g = out.setdefault(r["name"], {"count": 0, "pss_mib": 0.0, "rss_mib": 0.0})
        g["count"] += 1
        g["pss_mib"] += round(r["pss"] / 2**20, 1)
        g["rss_mib"] += round(r["rss"] / 2**20, 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["pss_mib"]))


def _shell(cmd: list[str]) -> str:
    i = next(j for j, c in enumerate(cmd) if c == sys.executable)
    return " ".join([*cmd[:i], "python", *cmd[i + 1:]])


def overhead(results: list[dict[str, Any]]) -> None:
    """Add ``overhead_ms_per_client`` to each simulation result that has an in-process twin."""
    ref = {(r["clients"], r["per_round"]): r for r in results if r["engine"] == "inprocess" and not r["failed"]}
    for r in results:
        twin = ref.get((r["clients"], r["per_round"]))
        if r["engine"] == "simulation" and not r["failed"] and twin is not None:
            k = r["per_round"] or r["clients"]
            r["inprocess_round_mean_s"] = twin["round_mean_s"]
            r["overhead_ms_per_client"] = round(1000 * (r["round_mean_s"] - twin["round_mean_s"]) / k, 1)


def flower_sweep(n: int, m: int) -> dict[str, Any]:
    """Flower's own per-node cost in one process: memory and time to register ``n`` simulated
    SuperNodes (node records, then their DeprecatedRunInfoStore/Context), and one message pickup
    sweep with ``m`` pending messages by Flower 1.41's loop (``get_message_ins`` per node) and by
    fedft's :func:`~fedft.federated.simulation.pending_messages`."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    from fedft.federated.simulation import pending_messages

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 123, SUPERLINK_NODE_ID
    me = psutil.Process()
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    run = Run.create_empty(run_id=123)
    run.primary_task_id, run.federation_id = 5, NOOP_FEDERATION_ID
    state = factory.state()
    state.run_ids[123], state.task_store[5] = RunRecord(run=run), Task(task_id=5, run_id=123)
    rss0, t0 = me.memory_info().rss, time.perf_counter()
    nodes = vce_api._register_nodes(n, factory)
    stores = vce_api._register_node_info_stores(nodes, run, None)
    register_s, rss1 = time.perf_counter() - t0, me.memory_info().rss
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    ids = list(nodes)
    grid.push_messages([Message(content=RecordDict({"c": ConfigRecord({})}), dst_node_id=ids[i * (n // max(m, 1))],
                                message_type=MessageType.TRAIN) for i in range(m)])
    t0 = time.perf_counter()
    found = sum(len(state.get_message_ins(node_id=nid, limit=1)) for nid in nodes)
    flower_s = time.perf_counter() - t0
    for msg in state.message_ins_store.values():
        msg.metadata.delivered_at = ""
    t0 = time.perf_counter()
    ours = len(pending_messages(state, nodes))
    ours_s = time.perf_counter() - t0
    assert found == ours == m and len(stores) == n
    return {"nodes": n, "pending_messages": m, "register_s": round(register_s, 2),
            "register_mib": round((rss1 - rss0) / 2**20, 1), "bytes_per_node": round((rss1 - rss0) / n),
            "flower_sweep_s": round(flower_s, 4), "fedft_sweep_s": round(ours_s, 5)}


def partition_timing(n: int, samples_per_client: int, flwr_max: int = 10_000) -> dict[str, Any]:
    """The preset's partition of MNIST for ``n`` clients (Dirichlet(1.0), seed 0, min_size 0):
    seconds for fedft's vectorised partitioner and, up to ``flwr_max`` clients, for
    flwr-datasets' DirichletPartitioner as fedft used it before (one Dataset slice per client),
    whether both agree, and how many clients hold data."""
    import numpy as np

    from fedft.config import ExperimentConfig
    from fedft.data.datasets import load_raw
    from fedft.data.partition import partition

    cfg = ExperimentConfig.from_overrides([*SMALL, f"data.train_size={samples_per_client * n}"])
    labels = np.asarray(load_raw(cfg.data, cfg.seed).train_y)
    t0 = time.perf_counter()
    parts = partition(labels, "dirichlet", n, cfg.seed, alpha=1.0, min_size=0)
    out: dict[str, Any] = {"clients": n, "samples": len(labels), "nonempty": int((parts.sizes > 0).sum()),
                           "fedft_s": round(time.perf_counter() - t0, 4)}
    if n <= flwr_max:
        from datasets import Dataset
        from flwr_datasets.partitioner import DirichletPartitioner

        t0 = time.perf_counter()
        ref = DirichletPartitioner(num_partitions=n, partition_by="label", alpha=1.0, min_partition_size=0, seed=cfg.seed)
        ref.dataset = Dataset.from_dict({"label": labels.astype(np.int64), "index": np.arange(len(labels))})
        old = [np.sort(np.asarray(ref.load_partition(i)["index"], dtype=np.int64)) for i in range(n)]
        out["flwr_datasets_s"] = round(time.perf_counter() - t0, 2)
        out["identical"] = all(np.array_equal(a, b) for a, b in zip(old, parts, strict=True))
    return out


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--stacks-child":
        stacks_child(sys.argv[2], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/configs/sfprompt_mnist.toml")
    ap.add_argument("--cases", nargs="+", default=[], help="N:K pairs (K = 0: all N every round)")
    ap.add_argument("--clients", type=int, nargs="+", default=[], help="N with the config's clients_per_round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engine", choices=["simulation", "inprocess", "both"], default="simulation")
    ap.add_argument("--preset", choices=["none", "small"], default="none")
    ap.add_argument("--out", default="runs/bench_scaling")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--cpus", default="", help="pin each run to these cores (taskset -c), e.g. 0")
    ap.add_argument("--samples-per-client", type=int, default=0,
                    help="data.train_size = this x N (all the data when the dataset is smaller); 0: the preset's")
    ap.add_argument("--stacks", action="store_true",
                    help="sample the driver's thread stacks (CPU-weighted) and add the top functions")
    ap.add_argument("--partition-timing", nargs="+", type=int, default=[], metavar="N",
                    help="instead: time the preset's partition of N clients, fedft vs flwr-datasets")
    ap.add_argument("--flower-sweep", nargs="+", default=[], metavar="N:M",
                    help="instead: Flower's per-node memory and one pickup sweep with N nodes, M pending messages")
    args = ap.parse_args()
    if args.partition_timing:
        rows = [partition_timing(n, args.samples_per_client or 6) for n in args.partition_timing]
        print(json.dumps(rows, indent=2))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"partition_timing": rows}, indent=2) + "\n")
        return
    if args.flower_sweep:
        sweeps = [flower_sweep(*(int(x) for x in c.split(":"))) for c in args.flower_sweep]
        print(json.dumps(sweeps, indent=2))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"flower_sweep": sweeps}, indent=2) + "\n")
        return
    extra = (SMALL if args.preset == "small" else []) + args.set
    cases = [tuple(int(x) for x in c.split(":")) for c in args.cases]
    given_k = [s.split("=", 1)[1] for s in extra if s.startswith("federation.clients_per_round=")]
    cases += [(n, int(given_k[-1]) if given_k else 0) for n in args.clients]
    engines = ["simulation", "inprocess"] if args.engine == "both" else [args.engine]
    flwr_home = os.environ.get("FLWR_HOME", f"/tmp/flwr_bench_{os.getpid()}")
    results = []
    for n, k in cases:
        for engine in engines:
            out = Path(args.out) / f"n{n}_k{k}_{engine}"
            out.parent.mkdir(parents=True, exist_ok=True)
            extra_k = [s for s in extra if not s.startswith("federation.clients_per_round=")]
            if args.samples_per_client:
                extra_k.append(f"data.train_size={args.samples_per_client * n}")  # above the dataset: all of it
            results.append(run_case(args.config, n, k, args.rounds, engine, out, extra_k, flwr_home, args.stacks,
                                    args.cpus))
            print(json.dumps({x: v for x, v in results[-1].items() if x != "memory_at_peak"}), flush=True)
    overhead(results)
    doc = {"machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
                       "python": platform.python_version(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
           "preset": args.preset, "overrides": extra, "cpus": args.cpus or "all",
           "samples_per_client": args.samples_per_client, "results": results}
    print(json.dumps(doc, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
