"""Factories for the Flower ClientApp and ServerApp (clients/ and server/ just call these).

``run_simulation`` hands the ServerApp an empty run config, so ``make_server_app`` can close
over an already parsed config; ``flwr run`` instead passes the app's run config, which the
server parses once with :func:`config_from_run_config`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedft import keys
from fedft.config import ExperimentConfig
from fedft.errors import ConfigError
from fedft.federated.handlers import handle_hello, handle_train
from fedft.outputs import RunDir, default_run_dir
from fedft.strategies import STRATEGIES

STATE = "fedft-state"
CONFIG_FILE_KEY = "config-file"
OUT_KEY = "out"


def _load_state(context: Context) -> dict[str, Any]:
    rec = context.state.array_records.get(STATE)
    return {k: v.numpy() for k, v in rec.items()} if rec is not None else {}


def _save_state(context: Context, state: dict[str, Any]) -> None:
    arrays = {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    if arrays:
        context.state[STATE] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


@functools.lru_cache(maxsize=4)
def _cpus(run_config_toml: str) -> int:
    """federation.cpus_per_client of a message's config (parsed once per process: 7 ms a parse)."""
    return max(1, int(ExperimentConfig.from_toml_text(run_config_toml).federation.cpus_per_client))


def _threads(msg: Message) -> None:
    """A simulated client gets as many torch threads as the CPUs it was given (at least 1)."""
    import torch

    torch.set_num_threads(_cpus(str(msg.content[keys.CONFIG][keys.RUN_CONFIG_TOML])))  # type: ignore[index]


def make_client_app() -> ClientApp:
    """The ClientApp: a train handler (one client round) and a hello query (its partition id)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config[keys.PARTITION_ID])
        _threads(msg)
        state = _load_state(context)
        reply = handle_train(msg.content, pid, state)
        _save_state(context, state)
        return Message(content=reply, reply_to=msg)

    @app.query(keys.QUERY_HELLO)
    def hello(msg: Message, context: Context) -> Message:
        node = context.node_config
        return Message(content=handle_hello(int(node[keys.PARTITION_ID]), int(node.get(keys.NUM_PARTITIONS, -1))),
                       reply_to=msg)

    return app


def config_from_run_config(run_config: dict[str, Any], base_dir: Path) -> tuple[ExperimentConfig, str | None]:
    """Flower run config -> (config, run dir): the one place the run config is parsed.

    ``config-file`` (relative to the app directory; the main job by default) is the base, and the
    run-config values that differ from the declared ones (:func:`fedft.flower_config.app_config`)
    override it. Without ``config-file`` the run config is taken as a complete config. ``out`` is
    the run directory.
    """
    from fedft.flower_config import app_config

    rc = {str(k): v for k, v in run_config.items()}
    path, out = rc.pop(CONFIG_FILE_KEY, ""), rc.pop(OUT_KEY, "")
    if not path:
        return ExperimentConfig.from_run_config(rc), (str(out) or None)
    p = Path(str(path))
    p = p if p.is_absolute() else base_dir / p
    if not p.is_file():
        raise ConfigError(f"run config {CONFIG_FILE_KEY}={path!r}: no such file under {base_dir}")
    declared = app_config()
    changed = [f"{k}={v}" for k, v in rc.items() if declared.get(k) != v]
    return ExperimentConfig.from_toml(p, changed), (str(out) or None)


def make_server_app(jobs: list[tuple[ExperimentConfig, Path]] | None = None,
                    holder: list[dict[str, Any]] | None = None, base_dir: Path | None = None,
                    resume: bool = False) -> ServerApp:
    """The ServerApp. With ``jobs`` it ignores the run config (``run_simulation``) and runs each
    (config, run dir) in turn on the same nodes, appending each summary to ``holder``; with
    ``resume`` each job continues from its run directory's checkpoint."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedft.federated.engine import serve
        from fedft.federated.server import ServerRuntime
        from fedft.outputs import print_summary

        todo = jobs
        if todo is None:
            c, o = config_from_run_config(context.run_config, base_dir or Path.cwd())
            c = _configured(c)
            todo = [(c, Path(o) if o else default_run_dir(c))]
        for c, o in todo:
            run = RunDir(o)
            run.write_config(c)
            srv = ServerRuntime(c, run)
            if resume:
                srv.resume_from_dir()
            summary = serve(grid, srv)
            summary["run_dir"] = str(run.path)
            run.write_summary(summary)
            if holder is not None:
                holder.append(summary)
            else:
                print_summary(summary, title=f"fedft run: {c.federation.strategy} / {c.method.name}")

    return app


def _configured(cfg: ExperimentConfig) -> ExperimentConfig:
    return STRATEGIES.get(cfg.federation.strategy).configure(cfg)
