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


def test_wire_tradeoff_report_from_cells(tmp_path):
    """wire_tradeoff.py rebuilds its report from cell artifacts alone (synthetic cells here)."""
    for arm, acc, act in (("fp32", 0.70, 4000), ("int8", 0.69, 1010)):
        for seed in (0, 1):
            d = tmp_path / "vision" / f"{arm}_s{seed}"
            d.mkdir(parents=True)
            kinds = {"activations_up": act, "activations_down": act, "grads_up": act, "grads_down": act,
                     "params_up": 10, "params_down": 10, "control": 5}
            (d / "summary.json").write_text(json.dumps({"val_accuracy": acc + seed / 100, "test_accuracy": acc,
                                                        "bytes_total": sum(kinds.values()), "bytes_by_kind": kinds}))
            (d / "cell.json").write_text(json.dumps({"arm": arm, "seed": seed, "cell_wall_seconds": 1.0,
                                                     "command": "fedft run"}))
    script = ROOT / "experiments" / "wire_tradeoff.py"
    subprocess.run([sys.executable, str(script), "--report-only", "--results", str(tmp_path), "--report",
                    str(tmp_path / "wire.md")], check=True, capture_output=True, cwd=ROOT)
    md = (tmp_path / "wire.md").read_text()
    assert "| int8 | 0,1 |" in md and "Verdict" in md and (tmp_path / "accuracy_vs_bytes.png").is_file()
    bad = subprocess.run([sys.executable, str(script), "--arms", "fp99"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "fp99" in bad.stderr and "Traceback" not in bad.stderr
