"""Gold extractive QA seed sets for GeMQuAD (Namboori et al., arXiv 2404.09163), built offline.

:func:`quote_qa` turns the quote attributions of BBC News articles (``load_bbc_news``) into
extractive QA items: the context is the paragraph holding the quote, the question
``Who said "<first words of the quote>"?`` and the answer the speaker's name as it is written in
that paragraph (its character start recorded). Three regex patterns cover the BBC's house style:

- ``"...," said [description] Mr Smith.``   (verb first; the description is lower-case words);
- ``"...," [description] Mr Smith said``    (also ``added``, ``told``, ``says``, ...);
- ``Mr Smith said: "...``                   (the name opens the attribution, a colon before the quote).

A name is one to four capitalised words after an optional title (Mr, Mrs, Dr, Prof, Sir, ...);
pronouns, weekdays, months and sentence openers never start one, role words (Minister, MP,
Chairman, ...) are never part of one, and possessives end one; a name right after a
preposition or "the" (``the Department for Transport said``, ``the Dutchman said``) is dropped; quotes
closed by a full stop are skipped for the first two patterns (the next sentence usually
introduces someone else). Items whose answer is not verbatim in the context are dropped, and a
(context, question) pair is kept once (the corpus repeats some articles). The result is
deterministic (articles by section, then file name). :func:`check_quote_qa` lists the problems
of a set (answer missing from its context or at the wrong offset, empty, too long, duplicates).

Why not a multilingual check from the chatterbot corpus (``asset_dir("chatterbot")/<language>/*.yml``):
its 28 languages hold short dialogue turns (11,953 prompt -> response pairs; prompts of 6-36
characters on average, none over ~210), with no passage that an answer could be extracted from,
and the response is almost never a span of its prompt, so it has no (context, question, answer)
structure for extractive QA.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fedft.data.sources import load_bbc_news
from fedft.qa import QAItem

__all__ = ["QAItem", "check_quote_qa", "quote_qa", "quote_qa_from_text"]

SNIPPET_WORDS = 8  # [D] words of the quote in the question
MAX_ANSWER_WORDS = 6  # [D] check_quote_qa flags longer answers
MAX_ANSWER_CHARS = 60  # [D]

_TITLE = r"(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof|Sir|Lord|Lady|Dame|Rev) )"
_STOP = ("He|She|It|They|We|I|You|The|This|That|These|Those|His|Her|Its|Their|Our|My|But|And|Or|So|Yet|"
         "However|Meanwhile|Speaking|Also|Now|Then|Still|Earlier|Later|Yesterday|Today|Last|On|In|At|"
         "After|Before|When|While|If|As|A|An|One|There|Here|What|Some|Many|Both|Others|Monday|Tuesday|"
         "Wednesday|Thursday|Friday|Saturday|Sunday|January|February|March|April|May|June|July|August|"
         "September|October|November|December")
_ROLE = ("Minister|Secretary|President|Chancellor|Chairman|Chairwoman|Commissioner|Governor|Senator|Judge|"
         "Coach|Manager|Captain|Director|Chief|Executive|Officer|Spokesman|Spokeswoman|Leader|Boss|DJ|MP|MEP|PM|"
         "Analyst|Economist|Lawyer|Prosecutor|Striker|Midfielder|Defender|Goalkeeper|Singer|Actor|Actress|"
         "Star|Former|Veteran")
_WORD = rf"(?!(?:{_ROLE})\b)[A-Z][a-zA-Z]*(?:'[A-Z][a-z]+|-[A-Za-z]+)*"  # O'Leary, Jean-Paul; not United's
_NAME = rf"(?<![\w'\-])(?!(?:{_STOP})\b){_TITLE}?{_WORD}(?: {_WORD}){{0,3}}"
_VERB = r"(?:said|says|added|told|explained|insisted|warned|argued|claimed|admitted)"
_QUOTE = r'"(?P<quote>[^"\s][^"]{8,400}?[,?!])"'  # a quote closed by , ? or !
_OPEN = r'"(?P<quote>[^"\s][^"]{8,})'  # an opening quote (it may run on into the next paragraph)
_DESC = r"(?:(?!(?:of|for|at|with|from|to|in|on|by|a|an|the)\b)[a-z][\w\-]* ){0,4}"
PATTERNS = (
    re.compile(rf"{_QUOTE} {_VERB} {_DESC}(?P<name>{_NAME})(?=[,.;])"),  # "...," said Mr Smith.
    re.compile(rf'{_QUOTE} (?:[^".]{{0,60}}? )??(?P<name>{_NAME}) {_VERB}\b'),  # "...," Mr Smith said
    re.compile(rf'(?P<name>{_NAME}) {_VERB}(?: [^":.]{{0,50}}?)?: {_OPEN}'),  # Mr Smith said: "...
)
_BAD_BEFORE = re.compile(r"\b(?:the|of|for|at|with|from|to|in|on|by|and|or|de)\s*$")


def _question(quote: str) -> str:
    words = quote.strip().rstrip(",.?!").split()
    snippet = " ".join(words[:SNIPPET_WORDS]) + (" ..." if len(words) > SNIPPET_WORDS else "")
    return f'Who said "{snippet}"?'


def quote_qa_from_text(text: str, source: str = "") -> list[QAItem]:
    """The quote-attribution items of one article (its first line, the headline, is skipped)."""
    out: list[QAItem] = []
    for para in [p.strip() for p in text.split("\n")[1:]]:
        for pattern in PATTERNS:
            for m in pattern.finditer(para):
                name, start = m.group("name"), m.start("name")
                if _BAD_BEFORE.search(para[:start]) or para[start:start + len(name)] != name:
                    continue
                out.append(QAItem(para, _question(m.group("quote")), name, start, source))
    return out


def quote_qa(bbc_root: Path | str, sections: Sequence[str] | None = None) -> list[QAItem]:
    """The gold quote-attribution QA items of the BBC News asset (all sections by default), in
    corpus order, without duplicates; ``source`` is ``bbc-news/<section>/<article index>``."""
    texts, labels, names = load_bbc_news(bbc_root)
    if sections is not None and (unknown := set(sections) - set(names)):
        raise ValueError(f"unknown BBC sections {sorted(unknown)}; valid: {', '.join(names)}")
    seen: set[tuple[str, str]] = set()
    out: list[QAItem] = []
    index: Counter[str] = Counter()
    for text, label in zip(texts, labels, strict=True):
        section = names[int(label)]
        index[section] += 1
        if sections is not None and section not in sections:
            continue
        for it in quote_qa_from_text(text, f"bbc-news/{section}/{index[section] - 1}"):
            if (it.context, it.question) not in seen:
                seen.add((it.context, it.question))
                out.append(it)
    return out


def check_quote_qa(items: Sequence[QAItem]) -> list[str]:
    """The problems of a QA set, one line each (an empty list: none found): an empty field, an
    answer not in its context or not at ``answer_start``, an over-long answer, a duplicate."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, it in enumerate(items):
        if not it.answer.strip() or not it.question.strip() or not it.context.strip():
            problems.append(f"item {i}: empty context, question or answer")
            continue
        if it.answer not in it.context:
            problems.append(f"item {i}: answer {it.answer!r} is not in the context")
        elif it.context[it.answer_start:it.answer_end] != it.answer:
            problems.append(f"item {i}: answer_start {it.answer_start} does not point at {it.answer!r}")
        if len(it.answer.split()) > MAX_ANSWER_WORDS or len(it.answer) > MAX_ANSWER_CHARS:
            problems.append(f"item {i}: answer {it.answer!r} is too long for a name")
        if (it.context, it.question) in seen:
            problems.append(f"item {i}: duplicate of an earlier (context, question)")
        seen.add((it.context, it.question))
    return problems
