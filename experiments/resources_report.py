"""Build experiments/reports/resources.md: resource-limited clients (issue 18) in one report.

Each part has its own script and artifacts and writes its own section file; this script puts the
sections together verbatim under one introduction, so the two can never disagree
(``check_reports.py`` rebuilds this file and compares it line by line).

    .venv/bin/python experiments/resources_report.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "experiments/reports"
OUT = REPORTS / "resources.md"
#: (section file, the script that measures it)
PARTS = [
    ("resources_netem.md", "experiments/resources_netem.py"),
    ("resources_fit.md", "experiments/resources_fit.py"),
    ("resources_compare.md", "experiments/resources_compare.py"),
    ("resources_scaling.md", "experiments/bench_scaling.py"),
]

INTRO = """# Resource-limited clients: simulated time, memory, time-to-accuracy, 100,000 clients

How long a round takes on phones over 4G, whether a client's part fits its memory, when split
learning's per-batch round trips cost more than its saved bytes, and how many clients one machine
can simulate. The model is in `docs/resources.md`; every number below comes from the artifacts
under `experiments/results/resources/` and the command printed with it. [paper] marks the SFPrompt
paper's claims, [D] fedft's own settings and estimates (the device and network profiles are
rounded public figures: `fedft profiles`, `docs/resources.md`).

Sections (each rebuilt from its artifacts by its script; this file by
`.venv/bin/python experiments/resources_report.py`):

"""


def build(reports: Path = REPORTS) -> str:
    """The combined report from the section files present in ``reports``."""
    parts, toc = [], []
    for name, script in PARTS:
        path = reports / name
        if not path.is_file():
            continue
        text = path.read_text().rstrip() + "\n"
        title = next((ln[3:].strip() for ln in text.splitlines() if ln.startswith("## ")), name)
        toc.append(f"- {title} (`{script}`; section file `{name}`)")
        parts.append(text)
    return INTRO + "\n".join(toc) + "\n\n" + "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.write_text(build())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
