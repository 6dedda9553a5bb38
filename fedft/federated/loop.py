"""The round loop, shared by the Flower ServerApp and the in-process engine.

A *dispatch* function delivers one round's train content to a list of clients and returns
their :class:`ClientResult`; it also records the bytes of every record it sends and receives.
The loop samples clients, aggregates (or, for SL, hands the client part on), merges the body
service's ledger, evaluates on the validation split (every ``federation.eval_every`` rounds and
after the last) and writes metrics, the ledger, plots and the summary. The test split is
evaluated once, on the final global model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.app import RecordDict
from tqdm.auto import tqdm

from fedft import keys
from fedft.federated.payload import numel
from fedft.federated.server import ClientResult, ServerRuntime
from fedft.outputs import LEDGER, METRICS, read_metrics
from fedft.precision import describe
from fedft.resources.rounds import (
    SIM_CLIENTS,
    SIM_PLANS,
    SimRound,
    append_clients,
    append_plans,
    judge_group,
    truncate_clients,
    truncate_plans,
)
from fedft.train import eval_summary

log = logging.getLogger(__name__)

# (round, pids, content) -> replies; content is one message for all, or pid -> its message
# (heterogeneous split points: each client gets its own head's and tail's tensors)
Dispatch = Callable[[int, list[int], RecordDict | Callable[[int], RecordDict]], list[ClientResult]]

METRIC_COLUMNS = ["round", "val_accuracy", "val_loss", "clients", "failed", "kept_samples", "train_loss",
                  "bytes_round", "bytes_cumulative", "client_flops", "server_flops", "seconds", "gen_score",
                  "sim_seconds", "sim_cumulative", "sim_energy_j", "stragglers"]


def run_rounds(srv: ServerRuntime, dispatch: Dispatch, progress: bool = True) -> dict[str, Any]:
    """Run every round; returns the run summary (also written to the run directory)."""
    from fedft.federated import checkpoint

    cfg, run = srv.cfg, srv.run
    t0 = time.time()
    ck = srv.resumed
    first = 1 if ck is None else ck.round + 1
    counters = {"client_flops": 0.0, "server_flops": 0.0, "seconds": 0.0, "sim_seconds": 0.0, "sim_energy_j": 0.0}
    counters.update({} if ck is None else ck.counters)
    earlier = counters["seconds"]
    if ck is None:
        run.start_metrics(METRIC_COLUMNS)
        run.file(SIM_CLIENTS).unlink(missing_ok=True)
        run.file(SIM_PLANS).unlink(missing_ok=True)
    else:
        run.resume_metrics(METRIC_COLUMNS, ck.round)
        truncate_clients(run.file(SIM_CLIENTS), ck.round)
        truncate_plans(run.file(SIM_PLANS), ck.round)
    if srv.clock is not None:
        srv.clock.now = counters["sim_seconds"]
    result, gen = None, None
    bar = tqdm(range(first, cfg.federation.rounds + 1), desc=f"{cfg.federation.strategy} rounds", unit="round",
               disable=not progress, initial=first - 1, total=cfg.federation.rounds)
    for rnd in bar:
        srv.start_round(rnd)
        before = srv.ledger.total()
        results, sim = _train_round(srv, dispatch, rnd, srv.sample(rnd))
        srv.collect_service_ledger(rnd)
        row, good = _round_row(srv, rnd, results, sim, before, counters)
        if rnd % cfg.federation.eval_every == 0 or rnd == cfg.federation.rounds:
            if srv.val is not None:
                result = srv.evaluate()
                row.update(val_accuracy=result.accuracy, val_loss=result.loss)
                bar.set_postfix(val_acc=f"{result.accuracy:.3f}", clients=good)
            gen = row["gen_score"] = srv.generative_score()
        row["seconds"] = counters["seconds"] = earlier + time.time() - t0
        run.append_metrics(row)
        checkpoint.save(run.path, srv.checkpoint(rnd, counters))
        if not good:
            log.warning("round %d: no client succeeded; the global state is unchanged", rnd)
    summary = _final(srv, result, gen, earlier - t0, (counters["client_flops"], counters["server_flops"]))
    if srv.clock is not None:
        summary.update(sim_seconds_total=srv.clock.now, sim_energy_j_total=counters["sim_energy_j"] or None,
                       devices=cfg.resources.devices, networks=cfg.resources.networks)
        run.write_summary(summary)
    if cfg.output.plots:
        write_plots(srv)
    return summary


def _round_row(srv: ServerRuntime, rnd: int, results: list[ClientResult], sim: SimRound | None, before: int,
               counters: dict[str, float]) -> tuple[dict[str, Any], int]:
    """The round's metrics row (without evaluation and wall time) and its number of accepted
    clients; adds the round's FLOPs and simulated time to ``counters``."""
    good = [r for r in results if r.error is None]
    round_client = sum(r.metrics.get(keys.CLIENT_FLOPS, 0.0) for r in good)
    round_server = srv.server_flops(good)  # positions sent x the body FLOPs of each client's cut
    counters["client_flops"] += round_client
    counters["server_flops"] += round_server
    row: dict[str, Any] = {
        "round": rnd, "clients": len(good), "failed": len(results) - len(good),
        "kept_samples": int(sum(r.metrics.get(keys.NUM_KEPT, 0) for r in good)),
        "train_loss": _mean([r.metrics.get(keys.TRAIN_LOSS, 0.0) for r in good]),
        "bytes_round": srv.ledger.total() - before, "bytes_cumulative": srv.ledger.total(),
        "client_flops": round_client, "server_flops": round_server,
    }
    if sim is not None and srv.clock is not None:
        srv.clock.now = counters["sim_seconds"] = sim.end
        counters["sim_energy_j"] += sim.energy_j or 0.0
        row.update(sim_seconds=sim.seconds, sim_cumulative=sim.end, stragglers=sim.dropped, sim_energy_j=sim.energy_j)
        append_clients(srv.run.file(SIM_CLIENTS), sim.rows)
        append_plans(srv.run.file(SIM_PLANS), rnd, sim.plans)
    return row, len(good)


def _final(srv: ServerRuntime, result: Any, gen: float | None, offset: float,
           flops: tuple[float, float]) -> dict[str, Any]:
    """Finalize the global model, evaluate it (validation, generation, the test split once) and
    summarise with the run's (client, server) ``flops``; ``offset + time.time()`` is the wall so far."""
    if result is None:  # resumed after the last round: evaluate the restored state
        result = srv.evaluate()
    if srv.finalize():  # merge / interpolate / prune the final global model, then evaluate again
        result, gen = srv.evaluate(), srv.generative_score()
        if result is not None:
            srv.run.append_metrics({"round": srv.cfg.federation.rounds, "val_accuracy": result.accuracy,
                                    "val_loss": result.loss, "gen_score": gen, "seconds": offset + time.time()})
    test = srv.evaluate("test")
    if srv.gen_eval is not None and gen is None:  # resumed after the last round
        gen = srv.generative_score()
    srv.run.write_ledger(srv.ledger)
    summary = summarize(srv, result, test, *flops, offset + time.time())
    if srv.gen_eval is not None:
        summary.update(srv.gen_eval.summary(gen, srv.run.path))  # type: ignore[arg-type]
    return summary


def _train_round(srv: ServerRuntime, dispatch: Dispatch, rnd: int,
                 pids: list[int]) -> tuple[list[ClientResult], SimRound | None]:
    """Dispatch each group of the strategy (SL: one client at a time, each from the last one's
    part), let the simulated clock judge its replies (deadline, availability, over-selection)
    and the strategy combine them."""
    results = []
    clock = srv.clock
    sim = None if clock is None else SimRound(clock.now, clock.now)
    keep = srv.cfg.federation.clients_per_round if srv.cfg.resources.over_selection else 0
    for group in srv.strategy.groups(pids):
        mark = len(srv.ledger)
        replies = dispatch(rnd, group, srv.round_content(rnd))
        if clock is not None and sim is not None:
            judge_group(clock, rnd, replies, srv.ledger.since(mark), srv.body_cost, sim, keep)
        srv.strategy.combine(srv, rnd, replies)
        results.extend(replies)
    return results, sim


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(srv: ServerRuntime, val: Any, test: Any, client_flops: float, server_flops: float,
              seconds: float) -> dict[str, Any]:
    """The run summary; ``final_accuracy`` is the final model's test accuracy."""
    cfg = srv.cfg
    return {
        "strategy": cfg.federation.strategy,
        "aggregator": cfg.federation.aggregator,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "rounds": cfg.federation.rounds,
        "clients": cfg.partition.num_clients,
        **eval_summary(val, test),
        "bytes_total": srv.ledger.total(),
        "bytes_by_kind": srv.ledger.by_kind(),
        "bytes_by_direction": srv.ledger.by_direction(),
        "client_flops": client_flops,
        "server_flops": server_flops,
        "travelling_params": numel(srv.global_update),
        "wall_seconds": round(seconds, 2),
        "precision": describe(cfg.train.precision, cfg.model.attention),
        **({"method_report": report} if (report := srv.method.describe()) else {}),
    }


def write_plots(srv: ServerRuntime) -> None:
    from fedft.plots import plot_accuracy, plot_accuracy_vs_bytes, plot_accuracy_vs_time, plot_bytes_by_kind

    rows = [r for r in read_metrics(srv.run.file(METRICS)) if r.get("val_accuracy")]
    plot_accuracy(rows, "round", srv.run.file("accuracy.png"))
    plot_accuracy_vs_bytes({srv.cfg.federation.strategy: rows}, srv.run.file("accuracy_vs_bytes.png"))
    plot_bytes_by_kind(srv.ledger, srv.run.file("bytes_by_kind.png"))
    if srv.clock is not None:
        plot_accuracy_vs_time({srv.cfg.federation.strategy: rows}, srv.run.file("accuracy_vs_time.png"))
    assert srv.run.file(LEDGER).is_file()
