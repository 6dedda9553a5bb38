"""Test-wide settings: Flower offline and quiet, scratch homes, small thread counts."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

_SCRATCH = tempfile.mkdtemp(prefix="fedft-tests-")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_HOME", os.path.join(_SCRATCH, "flwr-home"))
os.environ.setdefault("HF_HOME", os.path.join(_SCRATCH, "hf-home"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    # a test that leaves autograd off makes every later training test fail far from the cause
    assert torch.is_grad_enabled(), "this test left autograd disabled (a no_grad block held open?)"


@pytest.fixture(scope="module")
def _one_thread():
    """One intra-op thread for the module: tiny models are fastest on one, and several spin-wait
    on a busy machine (10-100x slower). Modules opt in with ``pytest.mark.usefixtures``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def experiment_script():
    """Import an experiment script by name, as the scripts import each other (experiments/ on the
    path): ``experiment_script("llm_data")``."""
    import importlib
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "experiments")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module
