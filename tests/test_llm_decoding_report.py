"""experiments/llm_decoding_report.py: verdict cards copied from the study reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("llm_decoding_report", ROOT / "experiments/llm_decoding_report.py")
ldr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ldr)

REPORT = """# A study

| table | row |

## Verdicts

**Claim.** Up-scaling keeps knowledge: more than small-ft, i.e. the large model's. Second sentence [paper: 2x]

**Numbers** (95 %). +0.1 [+0.0, +0.2].

**Verdict: reproduced in direction.**

Command: `python x.py`

**Claim.** Packing removes padding [code]

**Verdict: not reproduced.**

## Not done

Nothing else.
"""


def test_cards_are_copied_whole_and_stop_at_the_next_section():
    cards = ldr.cards(REPORT)
    assert [c[0][:20] for c in cards] == ["**Claim.** Up-scalin", "**Claim.** Packing r"]
    assert cards[0][-1] == "Command: `python x.py`" and "Nothing else." not in cards[1]
    assert [ldr.verdict_of(c) for c in cards] == ["reproduced in direction", "not reproduced"]
    assert ldr.claim_text(cards[0]) == "Up-scaling keeps knowledge: more than small-ft, i.e. the large model's"
    assert ldr.claim_text(cards[1]) == "Packing removes padding"


def test_build_lists_missing_studies(tmp_path):
    (tmp_path / "llm_decoding_eft.md").write_text(REPORT)
    text = ldr.build(tmp_path)
    assert "| [EFT](llm_decoding_eft.md) | Packing removes padding | not reproduced |" in text
    assert "Not yet run: Transfer Q*, MFTCoder, FineTuneBench." in text
