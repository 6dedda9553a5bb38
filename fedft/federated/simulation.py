"""Run a federated experiment on Flower's simulation engine (Ray; one actor per concurrent client)."""

from __future__ import annotations

import logging
import os
from typing import Any

from fedft.config import ExperimentConfig
from fedft.errors import FedftError
from fedft.outputs import RunDir

log = logging.getLogger(__name__)

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}


def flower_env() -> None:
    """Flower offline and quiet; called by launchers at run time, never at import."""
    for k, v in FLOWER_ENV.items():
        os.environ.setdefault(k, v)


def run_simulated(jobs: list[tuple[ExperimentConfig, RunDir]], resume: bool = False) -> list[dict[str, Any]]:
    """Run each (config, run dir) in one ``flwr.simulation.run_simulation`` session (N supernodes,
    Ray started once); return the summaries. All jobs must share the partition settings."""
    cfg = jobs[0][0]
    if any(c.partition != cfg.partition or c.federation.cpus_per_client != cfg.federation.cpus_per_client
           for c, _ in jobs):
        raise FedftError("jobs of one simulation must share [partition] and federation.cpus_per_client")
    flower_env()
    from flwr.simulation import run_simulation

    from fedft.federated.apps import make_client_app, make_server_app

    holder: list[dict[str, Any]] = []
    cpus = os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": cfg.federation.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                      "logging_level": "error", "log_to_driver": True},
    }
    run_simulation(server_app=make_server_app([(c, r.path) for c, r in jobs], holder, resume=resume), client_app=make_client_app(),
                   num_supernodes=cfg.partition.num_clients, backend_name="ray",
                   backend_config=backend)  # type: ignore[arg-type]
    if len(holder) != len(jobs):
        raise FedftError(f"the simulation ended after {len(holder)} of {len(jobs)} runs; see the log above "
                         f"and {jobs[len(holder)][1].path}")
    return holder
