"""Recompute the reports' numbers from the committed artifacts and fail on any mismatch.

Each check rebuilds, from files under ``experiments/results/`` only (no run, no model), the
exact lines a report prints: tables row by row, and the sentences that quote a run's numbers.
A line that is not in its report verbatim is a mismatch (a number changed, a run was replaced
without updating the report, or the report was edited by hand). Exit 0 when every line is
found, 1 otherwise (each missing line printed). ``--print`` shows the expected lines instead,
for pasting into a report after a re-run.

    .venv/bin/python experiments/check_reports.py            # run by tests/test_reports.py
    .venv/bin/python experiments/check_reports.py --print
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
RESULTS, REPORTS = ROOT / "experiments/results", ROOT / "experiments/reports"
Check = Callable[[Path], Iterator[tuple[str, str]]]  # results root -> (report name, expected line)


def _script(name: str) -> ModuleType:
    """An experiment script as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _table_lines(md: str) -> Iterator[str]:
    yield from (line for line in md.splitlines() if line.startswith("|") or line.startswith("Gap to"))


def strategy_compare(results: Path) -> Iterator[tuple[str, str]]:
    """§8/§10 of sfprompt.md: every compare entry and variant, the selection, the gap line."""
    sc = _script("strategy_compare")
    root = results / "sfprompt/compare"
    rows = sc.load_rows(root, sc.ENTRIES)
    chosen = sc.selected(rows)
    md = sc.table(rows, chosen) + sc.gap_line(chosen)
    for entries in (sc.VARIANTS, sc.DIAGNOSTICS):
        if (more := sc.load_rows(root, entries)):
            md += sc.table(more)
    md += sc.seeds_table(root)
    for line in _table_lines(md):
        yield "sfprompt.md", line


def main_job_lines(run: Path) -> list[str]:
    """The main job's validation curve, final numbers and wall time as sfprompt.md §1 prints them."""
    s = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = ["| round | validation accuracy (1,000 images) | seconds since start |", "|---|---|---|"]
    lines += [f"| {r['round']} | {float(r['val_accuracy']):.3f} | {float(r['seconds']):.1f} |"
              for r in rows if r["val_accuracy"]]
    lines.append(f"| test (whole split, {s['test_samples']:,} images, once) | **{s['test_accuracy']:.4f}** "
                 f"| {s['wall_seconds']:.1f} |")
    return lines


def timing_lines(results: Path) -> list[str]:
    """The main job's wall time before issue 14 (a test subset each round) and after (validation
    every 2nd round, the whole test split once), on the same machine."""
    before = json.loads((results / "sfprompt/main_job_before_issue14/summary.json").read_text())
    lines = [f"| before issue 14: 1,000 test images every round | {before['final_accuracy']:.3f} "
             f"| {before['wall_seconds']:.1f} | 1.000 |"]
    runs = [("issue 14 without the cast cache (commit 64abc3b)", "main_job_without_cast_cache"), ("issue 14", "main_job")]
    for label, name in runs:
        if (f := results / "sfprompt" / name / "summary.json").is_file():
            s = json.loads(f.read_text())
            lines.append(f"| {label}: 1,000 validation images every 2nd round, {s['test_samples']:,} test images "
                         f"once | {s['test_accuracy']:.3f} | {s['wall_seconds']:.1f} "
                         f"| {s['wall_seconds'] / before['wall_seconds']:.3f} |")
    return lines


def main_job(results: Path) -> Iterator[tuple[str, str]]:
    for line in main_job_lines(results / "sfprompt/main_job") + timing_lines(results):
        yield "sfprompt.md", line


def paper_full(results: Path) -> Iterator[tuple[str, str]]:
    """The paper's SFPrompt at the main job's full size, if it was run."""
    run = results / "sfprompt/sfprompt_paper_full"
    if (run / "summary.json").is_file():
        for line in main_job_lines(run):
            yield "sfprompt.md", line


def overhead_line(res: dict) -> str:
    return (f"| {res['round']} | {res['simulation_s']:.1f} | {res['inprocess_s']:.1f} | {res['plain_s']:.1f} "
            f"| {res['simulation_over_plain']:.3f} | {res['inprocess_over_plain']:.3f} |")


def body_thread_line(res: dict) -> str:
    return (f"| {res['batch_size']} | {res['main_thread_s']:.3f} | {res['second_thread_s']:.3f} "
            f"| {res['second_over_main']:.3f} |")


def overhead(results: Path) -> Iterator[tuple[str, str]]:
    for name in sorted((results / "sfprompt").glob("overhead*.json")):
        yield "sfprompt.md", overhead_line(json.loads(name.read_text()))
    if (bt := results / "sfprompt/body_thread.json").is_file():
        yield "sfprompt.md", body_thread_line(json.loads(bt.read_text()))


def privacy(results: Path) -> Iterator[tuple[str, str]]:
    """privacy.md's trade-off table, row by row, from each arm's committed summary and attacks."""
    pt = _script("privacy_tradeoff")
    rows = [r for arm in pt.ARMS if (results / "privacy/runs" / arm / "privacy.json").is_file()
            for r in pt.rows_of(arm, results / "privacy/runs" / arm)]
    for line in _table_lines(pt.markdown(rows)):
        if not line.startswith("|---") and not line.startswith("| arm"):
            yield "privacy.md", line


LM_RUNS = ("fed_chatterbot_lora", "sfprompt_smollm2")


def lm_run_lines(run: Path) -> list[str]:
    """A language-model run's rounds and totals as llm.md prints them."""
    s = json.loads((run / "summary.json").read_text())
    lines = []
    for r in csv.DictReader(open(run / "metrics.csv")):
        if r["clients"]:  # a round (the row after it, if any, re-evaluates the finalized model)
            lines.append(f"| {run.name} | {r['round']} | {float(r['val_loss']):.4f} | {float(r['val_accuracy']):.4f} | "
                         f"{float(r['gen_score']):.3f} | {float(r['train_loss']):.4f} | {int(r['bytes_round']):,} | "
                         f"{float(r['client_flops']):.3g} | {float(r['server_flops']):.3g} | {float(r['seconds']):.0f} |")
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(s["bytes_by_kind"].items()))
    lines.append(f"- `{run.name}`: test loss {s['test_loss']:.4f}, next-token accuracy {s['test_accuracy']:.4f} "
                 f"({s['test_samples']} held-out pairs); trivia exact match {s['gen_score']:.3f} on "
                 f"{s['gen_samples']} questions; {s['travelling_params']:,} travelling parameters; bytes by kind: "
                 f"{kinds}; client FLOPs {s['client_flops']:.3g}, server FLOPs {s['server_flops']:.3g}; "
                 f"wall {s['wall_seconds']:.0f} s.")
    if (gens := run / "generations.jsonl").is_file():
        from fedft.judges import token_f1

        rows = [json.loads(x) for x in gens.read_text().splitlines()]
        f1 = sum(token_f1(r["completion"], r["gold"]) for r in rows) / len(rows)
        lines.append(f"  - `{run.name}`: token F1 {f1:.3f} over {len(rows)} completions.")
    return lines


def lm_runs(results: Path) -> Iterator[tuple[str, str]]:
    """llm.md's federated and split SmolLM2 runs, round by round."""
    for name in LM_RUNS:
        if (results / "lm" / name / "summary.json").is_file():
            for line in lm_run_lines(results / "lm" / name):
                yield "llm.md", line


def _rebuilt(out: Path, script: str, report: str, prefixes: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """The lines of ``report`` starting with ``prefixes`` as ``script``'s ``write_report`` rebuilds
    them from the cell JSONs under ``out`` (nothing when there are none)."""
    import tempfile

    if not any(out.rglob("*seed*.json")):
        return
    if str(ROOT / "experiments") not in sys.path:  # the report modules import their runner and study_cells
        sys.path.insert(0, str(ROOT / "experiments"))
    with tempfile.TemporaryDirectory() as tmp:
        _script(script).write_report(out, Path(tmp) / "report.md", summary_csv=False)
        for line in (Path(tmp) / "report.md").read_text().splitlines():
            if line.startswith(prefixes):
                yield report, line


def peft_unit_tests(results: Path) -> Iterator[tuple[str, str]]:
    """llm_peft_unit_tests.md's tables and verdicts, rebuilt from the cell JSONs."""
    yield from _rebuilt(results / "lm/peft_unit_tests", "peft_unit_tests_report", "llm_peft_unit_tests.md",
                        ("|", "- Numbers", "- **Verdict"))


def llm_data(results: Path) -> Iterator[tuple[str, str]]:
    """llm_data.md's tables and verdicts (GRAPE, S3FT), rebuilt from the cell JSONs."""
    yield from _rebuilt(results / "lm/data_recipes", "llm_data_report", "llm_data.md", ("|", "**Numbers", "**Verdict"))


def llm_data_studies(results: Path) -> Iterator[tuple[str, str]]:
    """The GOT-D, GeMQuAD and non-instructional reports' tables and verdicts, rebuilt from their cells."""
    for study in ("gotd", "gemquad", "noninstr"):
        yield from _rebuilt(results / f"lm/data_recipes/{study}", f"llm_data_{study}_report", f"llm_data_{study}.md",
                            ("|", "**Numbers", "**Verdict"))


def llm_decoding_studies(results: Path) -> Iterator[tuple[str, str]]:
    """The EFT, Transfer Q*, MFTCoder and FineTuneBench reports' tables and verdicts, rebuilt from
    their cells, and llm_decoding.md's summary and cards, rebuilt from those reports."""
    for study in ("eft", "tqstar", "mftcoder", "finetunebench"):
        yield from _rebuilt(results / f"lm/decoding/{study}", f"llm_{study}_report", f"llm_decoding_{study}.md",
                            ("|", "**Numbers", "**Verdict"))
    for line in _script("llm_decoding_report").build(REPORTS).splitlines():
        if line.strip():
            yield "llm_decoding.md", line


def resources_studies(results: Path) -> Iterator[tuple[str, str]]:
    """resources_fit.md rendered from its JSON, and resources.md put together from its sections."""
    if str(ROOT / "experiments") not in sys.path:
        sys.path.insert(0, str(ROOT / "experiments"))
    if (results / "resources/fit/fit.json").is_file():
        for line in _script("resources_fit").render().splitlines():
            if line.startswith("|"):
                yield "resources_fit.md", line
    if (results / "resources/compare/summary.csv").is_file():
        for line in _script("resources_compare_report").build(results / "resources/compare", None).splitlines():
            if line.startswith("|"):
                yield "resources_compare.md", line
    if (results / "resources/netem/summary.csv").is_file():
        for line in _script("resources_netem").render().splitlines():
            if line.startswith("|"):
                yield "resources_netem.md", line
    for line in _script("resources_report").build(REPORTS).splitlines():
        if line.strip():
            yield "resources.md", line


def wire_study(results: Path) -> Iterator[tuple[str, str]]:
    """wire.md's tables and verdict, rebuilt from the wire study's cells (no plot or CSV written)."""
    if not (results / "wire/vision").is_dir():
        return
    if str(ROOT / "experiments") not in sys.path:
        sys.path.insert(0, str(ROOT / "experiments"))
    for line in _script("wire_report").build(results / "wire", artifacts=False).splitlines():
        if line.startswith(("|", "- **Numbers", "- **Verdict", "Check:")):
            yield "wire.md", line


CHECKS: list[Check] = [main_job, paper_full, strategy_compare, overhead, privacy, lm_runs, peft_unit_tests, llm_data,
                       llm_data_studies, llm_decoding_studies, resources_studies, wire_study]


def mismatches(results: Path = RESULTS, reports: Path = REPORTS) -> list[str]:
    """Every expected line missing from its report, as 'report: line'."""
    texts: dict[str, str] = {}
    missing = []
    for check in CHECKS:
        for report, line in check(results):
            text = texts.setdefault(report, (reports / report).read_text())
            if line not in text:
                missing.append(f"{report} ({check.__name__}): {line}")
    return missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--print", action="store_true", help="print the expected lines, check nothing")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--reports", type=Path, default=REPORTS)
    a = p.parse_args(argv)
    if a.print:
        for check in CHECKS:
            print(f"## {check.__name__}")
            for report, line in check(a.results):
                print(f"[{report}] {line}")
        return 0
    bad = mismatches(a.results, a.reports)
    for m in bad:
        print(f"MISMATCH {m}")
    n = sum(1 for check in CHECKS for _ in check(a.results))
    print(f"{n - len(bad)} of {n} reported lines match their artifacts")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
