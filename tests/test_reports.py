"""The reports' numbers against the committed artifacts (experiments/check_reports.py)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _checker():
    spec = importlib.util.spec_from_file_location("check_reports", ROOT / "experiments/check_reports.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_reports"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_checked_report_line_matches_its_artifacts():
    cr = _checker()
    assert cr.mismatches() == []
    per_report: dict[str, int] = {}
    for check in cr.CHECKS:
        for report, _ in check(cr.RESULTS):
            per_report[report] = per_report.get(report, 0) + 1
    # the comparison, the main job and the overhead bench in sfprompt.md; the trade-off in privacy.md
    assert per_report.get("sfprompt.md", 0) >= 30 and per_report.get("privacy.md", 0) >= 40, per_report


def test_a_changed_number_is_a_mismatch(tmp_path):
    cr = _checker()
    reports = tmp_path / "reports"
    shutil.copytree(cr.REPORTS, reports)
    _, line = next(cr.privacy(cr.RESULTS))
    text = (reports / "privacy.md").read_text()
    cells = line.split(" | ")
    cells[7] = f"{float(cells[7]) + 0.001:.3f}"  # the accuracy column, one thousandth off
    (reports / "privacy.md").write_text(text.replace(line, " | ".join(cells)))
    bad = cr.mismatches(cr.RESULTS, reports)
    assert len(bad) == 1 and "privacy.md" in bad[0]


def test_the_compare_selects_on_validation_and_runs_each_paper_entry_from_its_config():
    sc = _checker()._script("strategy_compare")
    rows = [{"label": "a", "strategy": "s", "val_accuracy": 0.5, "test_accuracy": 0.9},
            {"label": "b", "strategy": "s", "val_accuracy": 0.6, "test_accuracy": 0.1},
            {"label": "c", "strategy": "s", "val_accuracy": 0.6, "test_accuracy": 0.2},
            {"label": "d", "strategy": "t", "val_accuracy": 0.1, "test_accuracy": 0.1}]
    # the best validation accuracy wins whatever the test says; the first candidate on ties
    assert [r["label"] for r in sc.selected(rows)] == ["b", "d"]
    cmd = sc.command(sc.ENTRIES, Path("out"))
    paper = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config-for"]
    assert sorted(p.split(":")[0] for p in paper) == sorted(k for k, v in sc.ENTRIES.items() if v[1] == "sfprompt_paper")
    assert all(p.endswith(":" + sc.PAPER) for p in paper)
