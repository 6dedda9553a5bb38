"""A killed server resumes from its checkpoint and ends with the same numbers and ledger totals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedft.accounting import CommLedger
from fedft.cli import default_config
from fedft.errors import FedftError
from fedft.runner import resume, run

TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
    "data.test_size=32", "partition.scheme=iid", "partition.num_clients=3", "partition.min_size=4",
    "federation.rounds=4", "federation.engine=inprocess", "train.batch_size=8", "method.prompt_len=4",
    "output.plots=false",
    # fp32 whatever the machine: the main job's "auto" is bf16 where native, and bf16 rounding turns
    # the last-bit BLAS differences of another process (below) into ~1e-5 relative differences
    "train.precision=fp32",
]


def _kill_after_round(out, overrides, round_):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "fedft.cli", "run", "--out", str(out)]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = out / "checkpoint" / "meta.json"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if meta.is_file():
                try:
                    if json.loads(meta.read_text())["round"] >= round_:
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = json.loads(meta.read_text())["round"]
    assert done < 4, "killed too late to test resuming"
    return done


@pytest.mark.parametrize("strategy,extra", [("sfprompt", []), ("sfl_v2", ["resources.devices=phone-mid"])])
def test_resume_equals_uninterrupted(tmp_path, strategy, extra):
    overrides = [*TINY, f"federation.strategy={strategy}", *extra]
    full = run(default_config(overrides), tmp_path / "full", show=False)  # what the CLI below resolves
    killed_at = _kill_after_round(tmp_path / "cut", overrides, 1)
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = resume(tmp_path / "cut", show=False)
    assert killed_at >= 1
    for key in ("bytes_total", "bytes_by_kind", "client_flops", "server_flops"):
        assert resumed[key] == full[key], key
    # round 1 ran in another process: with a trainable body, BLAS summation order may differ in the
    # last float bits, so the metrics are compared to float32 precision
    for key in ("final_accuracy", "final_loss"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-5), key
    a = CommLedger.from_csv(tmp_path / "full" / "ledger.csv")
    b = CommLedger.from_csv(tmp_path / "cut" / "ledger.csv")
    assert a.by_round() == b.by_round() and a.by_kind() == b.by_kind()
    assert len((tmp_path / "cut" / "metrics.csv").read_text().splitlines()) == 1 + 4
    if extra:  # the simulated clock resumes where it stopped; per-client rows are not repeated
        assert resumed["sim_seconds_total"] == pytest.approx(full["sim_seconds_total"], rel=1e-6)
        assert len((tmp_path / "cut" / "sim_clients.csv").read_text().splitlines()) == 1 + 4 * 3
        assert len((tmp_path / "cut" / "sim_plans.jsonl").read_text().splitlines()) == 4


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FedftError, match="not a fedft run directory"):
        resume(tmp_path)
