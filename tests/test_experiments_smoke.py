"""The experiment scripts run end to end (on a tiny random model, so they cannot rot silently)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mechanism_checks_run_and_write_json(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "experiments" / "mechanisms.py"), "all", "--smoke",
                    "--json-dir", str(tmp_path)], check=True, capture_output=True, cwd=ROOT)
    for name in ("antidote", "wise_ft", "hft", "light_peft"):
        res = json.loads((tmp_path / f"mech_{name}.json").read_text())
        assert isinstance(res["holds"], bool) and res["expected"]
    anti = json.loads((tmp_path / "mech_antidote.json").read_text())
    assert anti["pruned_weights"] > 0 and set(anti["antidote"]) == {"harmful_rate", "benign_accuracy"}
    wise = json.loads((tmp_path / "mech_wise_ft.json").read_text())
    assert [r["alpha"] for r in wise["rows"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    lp = json.loads((tmp_path / "mech_light_peft.json").read_text())
    for sel in ("mask", "random"):
        assert lp[sel]["params_after_compaction"] < lp[sel]["params_before_compaction"]  # compaction removed some
        assert {"accuracy_before_pruning", "accuracy_after_pruning", "ffn_mask_std"} <= set(lp[sel])
    assert lp["mask"]["pruned"]["heads"] == lp["random"]["pruned"]["heads"]
