"""The shape of a PHI value, so misses can be counted by kind of value without showing any text.

The unread part of a set is scored, never read; its misses per type ("DATE 230/236") say how much is
lost but not what kind of value. A shape ("d/d", "Mon d", "1 word, Title", "2 words, UPPER,
keyword") says that, and no more: digits, letters and names are gone, only the form is left. So
the same table is safe to print for the unread part, and it points rule-writing on the readable
parts (dev, grids) at the forms that fail.
"""
from __future__ import annotations

import re

from eval.deid_stress import HOSPITAL_WORDS
from finetune.date_formats import MONTH_NUMBER, MONTHS_DE, MONTHS_EN
from finetune.phi_types import PhiType

_FULL_MONTHS = {*MONTHS_EN, *MONTHS_DE, "maerz", "jänner"}
_TOKEN = re.compile(r"\d+|[^\W\d_]+|.", re.DOTALL)


def case_style(text: str) -> str:
    """Five classes for a report ("no letters" and "mixed" too), where the stress generator's
    ``_case_style`` has the three it can draw."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "no letters"
    if all(c.isupper() for c in letters):
        return "UPPER"
    if all(c.islower() for c in letters):
        return "lower"
    words = [w for w in re.split(r"[\s\-]+", text) if w[:1].isalpha()]
    return "Title" if all(w[0].isupper() and w[1:] == w[1:].lower() for w in words) else "mixed"


def _month_word(word: str) -> str | None:
    low = word.lower().rstrip(".")
    if low not in MONTH_NUMBER:
        return None
    full = low in _FULL_MONTHS
    if word.isupper():
        return "MONTH" if full else "MON"
    if word[:1].isupper():
        return "Month" if full else "Mon"
    return "month" if full else "mon"


def number_shape(value: str) -> str:
    """'3/8' -> 'd/d', '2045-03-08' -> 'yyyy-d-d', 'Mar. 8th' -> 'Mon. dth', '(555) 123-4567' -> '(d) d-d'."""
    out = []
    for token in _TOKEN.findall(value):
        if token.isdigit():
            out.append("yyyy" if len(token) == 4 and token[:2] in ("19", "20") else "d")
        elif token[:1].isalpha():
            ordinal = token.lower() in ("st", "nd", "rd", "th") and out and out[-1] in ("d", "yyyy")
            out.append("th" if ordinal else _month_word(token) or "w")
        else:
            out.append(token)
    return "".join(out)


def _fraction_like(value: str) -> bool:
    """A d/d date that reads as a fraction, a count or a score as well (1/2, 3/4, 4/4)."""
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})", value)
    return bool(m) and int(m.group(1)) <= int(m.group(2)) <= 8


def value_shape(kind: PhiType, value: str) -> str:
    """The form of one gold value: numbers and month names for dates, phones, IDs and ages; word
    count, case and a place keyword for names and places."""
    value = value.strip()
    if kind in (PhiType.DATE, PhiType.PHONE, PhiType.ID, PhiType.AGE):
        shape = number_shape(value)
        return f"{shape} (fraction-like)" if kind is PhiType.DATE and _fraction_like(value) else shape
    words = [w for w in re.split(r"\s+", value) if w]
    if kind in (PhiType.LOCATION, PhiType.HOSPITAL) and re.fullmatch(r"[A-Z]{2,5}", value):
        return "initials"
    shape = f"{len(words)} word{'s' if len(words) != 1 else ''}, {case_style(value)}"
    if kind in (PhiType.LOCATION, PhiType.HOSPITAL) and any(w.lower().strip(".,") in HOSPITAL_WORDS for w in words):
        shape += ", keyword"
    return shape
