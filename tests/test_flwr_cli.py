"""`flwr run .` runs the same ServerApp/ClientApp through the Flower CLI (local simulation SuperLink).

The detached local SuperLink that `flwr run` starts outlives the run, so the test stops it by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_CONFIG = ('model.name="tiny-vit" data.name="synthetic-images" data.image-size=16 partition.num-clients=3 '
              'partition.min-size=4 partition.scheme="iid" data.train-size=96 data.test-size=32 '
              'federation.rounds=2 train.batch-size=8 method.prompt-len=4')


def _superlink_pids(flwr_home: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _env(flwr_home: Path) -> dict[str, str]:
    bindir = Path(sys.executable).parent
    return dict(os.environ, FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PATH=f"{bindir}:{os.environ.get('PATH', '')}")


def _stop_superlink(flwr_home: Path) -> None:
    for pid in _superlink_pids(flwr_home):
        os.kill(pid, signal.SIGTERM)


@pytest.mark.slow
def test_flwr_run_dot(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    bindir = Path(sys.executable).parent
    env = _env(flwr_home)
    out = tmp_path / "run"
    try:
        p = subprocess.run([str(bindir / "flwr"), "run", ".", "--run-config", f'out="{out}" {RUN_CONFIG}',
                            "--federation-config", "num-supernodes=3 client-resources-num-cpus=1", "--stream"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["strategy"] == "sfprompt" and summary["rounds"] == 2
        assert summary["bytes_by_kind"]["activations_up"] > 0
    finally:
        _stop_superlink(flwr_home)


@pytest.mark.slow
def test_flwr_run_dot_with_too_few_supernodes_stops_at_once_with_the_fix(tmp_path):
    # Execute: as a new user types it, on Flower's default local federation (2 SuperNodes), for a
    # job that wants 3 clients
    flwr_home = tmp_path / "flwr-home"
    bindir = Path(sys.executable).parent
    try:
        p = subprocess.run([str(bindir / "flwr"), "run", ".", "--run-config", f'out="{tmp_path / "run"}" {RUN_CONFIG}',
                            "--stream"], cwd=ROOT, env=_env(flwr_home), capture_output=True, text=True, timeout=400)
    finally:
        _stop_superlink(flwr_home)
    # Assert: no hang (the timeout above), no rounds, and the line that says what to pass
    log = p.stdout + p.stderr
    assert "partition.num_clients is 3: pass --federation-config 'num-supernodes=3" in log, log[-3000:]
    assert not (tmp_path / "run" / "summary.json").exists()
