"""Anchor sentences: the passages of a note that anchored question synthesis asks about (issue 20).

A whole-note call makes a small generator read the note, pick a fact, copy it as evidence and then
write the question; on CPU the copy and the re-read of the note dominate, and a sub-1B model's
later questions drift from the note (docs/results.md, "Questions per CPU-hour"). Anchored synthesis
picks the passage first, here, and asks for one question about it: the evidence is known, the
prompt is short and its rules are a fixed prefix the server's prompt cache keeps.

A passage is worth a question when it names something specific: a word that is rare in general
language (wordfreq Zipf below ``RARE_ZIPF``: drug, device, finding, abbreviation). Such questions
are the ones that can find their note across patients; generic ones ("How is the patient doing?")
cannot, and the round-trip filter drops them. Title-case words inside a sentence are skipped, so a
(surrogate) name does not make a passage specific.
"""
from __future__ import annotations

import re

from finetune.qa_schema import evidence_options
from rag.language import word_zipf

#: Words rarer than this (wordfreq Zipf) make a passage specific; "vancomycin" 2.3, "trough" 2.9,
#: "dressing" 3.6, "pressure" 4.6, "patient" 4.9.
RARE_ZIPF = 3.5
#: A passage shorter than this (words) rarely holds a fact with its subject.
MIN_WORDS = 4
_WORD = re.compile(r"[^\W\d_][^\W\d_'-]{2,}")


def rare_terms(passage: str, language: str = "en") -> set[str]:
    """The passage's words rarer than ``RARE_ZIPF``, lower-cased; a Title-case word after the first
    is taken for a name and left out."""
    out: set[str] = set()
    for i, m in enumerate(_WORD.finditer(passage)):
        word = m.group()
        if i > 0 and word[0].isupper() and word[1:].islower():
            continue
        low = word.lower()
        if word_zipf(low, language) < RARE_ZIPF:
            out.add(low)
    return out


def pick_anchors(text: str, n: int, language: str = "en") -> list[str]:
    """Up to ``n`` quotable passages of ``text`` (``evidence_options``), each adding rare words the
    ones before it did not have, most new rare words first; returned in note order."""
    options = [o for o in evidence_options(text) if len(o.split()) >= MIN_WORDS]
    terms = {o: rare_terms(o, language) for o in options}
    chosen: list[str] = []
    covered: set[str] = set()
    while len(chosen) < n:
        best = max((o for o in options if o not in chosen), key=lambda o: (len(terms[o] - covered), -len(o)),
                   default=None)
        if best is None or not terms[best] - covered:
            break
        chosen.append(best)
        covered |= terms[best]
    order = {o: i for i, o in enumerate(options)}
    return sorted(chosen, key=order.__getitem__)
