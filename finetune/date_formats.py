"""The date grammar shared by detection and surrogates: find dates, parse them, re-render them shifted.

One table of formats serves both sides on purpose: a format the detector finds is a format the
surrogate step can re-render, so a detected date never passes through unchanged because the shifter
could not read it. Each format is a regex with named groups (``d`` day, ``m`` month number, ``mon``
month name, ``y`` year, ``ord`` ordinal suffix); rendering replaces each group in place and keeps
everything else (separators, spaces, zero-padding, 2- vs 4-digit years, month-name language, case and
abbreviation), so "3/14/21" stays "m/d/yy" and "15. März 2021" stays German.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

MONTHS_EN = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
             "october", "november", "december"]
MONTHS_DE = ["januar", "februar", "märz", "april", "mai", "juni", "juli", "august", "september",
             "oktober", "november", "dezember"]
#: Abbreviations (lower case, no dot) -> month number; "sept" and "mrz" are common in letters.
MONTH_ABBR = {"jan": 1, "feb": 2, "mar": 3, "mär": 3, "mrz": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8,
              "sep": 9, "sept": 9, "oct": 10, "okt": 10, "nov": 11, "dec": 12, "dez": 12}
MONTH_NUMBER: dict[str, int] = {
    **{name: i + 1 for i, name in enumerate(MONTHS_EN)},
    **{name: i + 1 for i, name in enumerate(MONTHS_DE)},
    "maerz": 3, "jänner": 1, "jaenner": 1, **MONTH_ABBR,
}

_MON_FULL = "|".join(sorted({*MONTHS_EN, *MONTHS_DE, "maerz", "jänner"}, key=len, reverse=True))
_MON_ABBR = "|".join(sorted(MONTH_ABBR, key=len, reverse=True))
#: A month name, full or abbreviated (the abbreviation's dot stays outside the group).
MON = rf"(?P<mon>(?:{_MON_FULL}|{_MON_ABBR})(?![a-zäöü]))"
#: Before a month name: a word boundary, or a capital glued to a lower-case word ("onFebruary 12").
_MB = r"(?:\b|(?-i:(?<=[a-z])(?=[A-Z])))"

_D = r"(?P<d>0?[1-9]|[12]\d|3[01])"
_M = r"(?P<m>0?[1-9]|1[0-2])"
_Y = r"(?P<y>(?:18|19|20)\d{2}|\d{2})"
_Y4 = r"(?P<y>(?:18|19|20)\d{2})"
_ORD = r"(?P<ord>st|nd|rd|th|ST|ND|RD|TH)"
_L = r"(?<![\d/.,])(?<![xX#])"  # left boundary: not inside a number or another date ("LA-10/3", "6/29-11/29" are fine)
_R = r"(?![\w/]|[.,]\d|\s?(?:mg|µg|ug|ml|mmol|g\b|IE\b|%))"  # right boundary; "Inegy 10/20 mg" is a dose


@dataclass(frozen=True)
class DateFormat:
    """One way of writing a date. ``languages`` limits ambiguous orders (m/d vs d/m) to one side."""

    name: str
    pattern: re.Pattern[str]
    languages: frozenset[str]


def _fmt(name: str, regex: str, languages: str = "en de") -> DateFormat:
    return DateFormat(name, re.compile(regex, re.IGNORECASE), frozenset(languages.split()))


#: Longest and most specific first: the first format that matches a span wins.
FORMATS: list[DateFormat] = [
    _fmt("iso", rf"{_L}{_Y4}-(?P<m>0[1-9]|1[0-2])-(?P<d>0[1-9]|[12]\d|3[01]){_R}"),
    # German numeric: 15.03.2021, 1.4.97, 10. 03. 2043, 23.04 2029, 19.3.
    _fmt("de_dmy", rf"{_L}{_D}\.\s?{_M}\.\s?{_Y}(?!\d)(?!\.\d)", "de en"),
    _fmt("de_dm_y", rf"{_L}{_D}\.{_M}\s(?P<y>(?:19|20)\d{{2}})(?!\d)", "de"),
    _fmt("de_dm", rf"{_L}{_D}\.\s?{_M}\.(?!\d)", "de"),
    _fmt("de_d_mon_y", rf"{_L}{_D}\.\s?{MON}\.?\s?{_Y}(?!\d)", "de"),
    _fmt("de_d_mon", rf"{_L}{_D}\.\s?{MON}\b\.?", "de"),
    # slashes: order depends on the language
    _fmt("en_mdy", rf"{_L}{_M}/{_D}/{_Y}{_R}", "en"),
    _fmt("de_dmy_slash", rf"{_L}{_D}/{_M}/{_Y}{_R}", "de"),
    _fmt("en_mdy_dot", rf"{_L}{_M}/{_D}\.(?P<y>\d{{2}})(?=\s|$)", "en"),  # "11/21.93", a typing habit
    _fmt("en_mdy_dash", rf"{_L}{_M}-{_D}-{_Y}{_R}", "en"),
    _fmt("en_md", rf"{_L}{_M}/{_D}{_R}", "en"),
    # "12.27.94": English month.day.year (German day.month.year wins where both read)
    _fmt("en_mdy_dots", rf"{_L}{_M}\.{_D}\.{_Y}(?!\d|\.\d)", "en"),
    # "28-Apr-02", "3-JAN-2004", "28/Apr/02": day, month name, year with dashes or slashes
    _fmt("d_mon_y_dash", rf"{_L}{_D}[-/]{MON}\.?[-/]{_Y}(?!\d)"),
    # "052647": month, day and year run together, all zero-padded (a typing habit in notes)
    _fmt("en_mdy_compact", r"(?<![\w/.,#:+-])(?P<m>0[1-9]|1[0-2])(?P<d>0[1-9]|[12]\d|3[01])(?P<y>\d{2})"
         r"(?![\w/:]|[.,]\d|-\d|\s?(?:mg|µg|ug|ml|mmol|g\b|%|cc|units))", "en"),
    _fmt("my_slash", rf"{_L}{_M}/(?P<y>(?:19|20)\d{{2}}|\d{{2}}){_R}", "de en"),
    # month names
    _fmt("en_mon_d_y", rf"{_MB}{MON}\.?\s{_D}{_ORD}?,?\s{_Y}(?!\d)", "en"),
    _fmt("en_d_mon_y", rf"(?:\b|(?<=[a-z])){_D}{_ORD}?\s(?:of\s)?{MON}\.?,?\s{_Y}(?!\d)", "en"),  # also "labs on6 Sep 2034"
    # a colon after the day is a heading ("Dec 5: stable"), a colon and digits a clock time ("Dec 5:30")
    _fmt("en_mon_d", rf"{_MB}{MON}\.?\s{_D}{_ORD}?(?!\d|:\d|[a-z])", "en"),
    _fmt("en_d_mon", rf"\b{_D}{_ORD}?\s(?:of\s)?{MON}\b\.?", "en"),
    _fmt("mon_y", rf"\b{MON}\.?,?\s(?:of\s)?{_Y4}(?!\d)"),
    _fmt("mon_y_short", rf"\b{MON}\.?\s'(?P<y>\d{{2}})(?!\d)"),
]
FORMATS_BY_NAME = {f.name: f for f in FORMATS}


def formats_for(language: str) -> list[DateFormat]:
    return [f for f in FORMATS if language in f.languages]


def find_dates(text: str, language: str) -> Iterator[tuple[int, int, str]]:
    """Every date-like span (start, end, format name); overlaps are left to the caller's resolution."""
    for fmt in formats_for(language):
        for match in fmt.pattern.finditer(text):
            if fmt.name in ("en_mon_d", "en_d_mon") and _ambiguous_month(text, match):
                continue
            if (fmt.name in ("en_md", "en_mdy") or fmt.name == "my_slash" and len(match.group("y")) == 2
                    and language == "en") and _not_a_date(text, match):
                continue
            yield match.start(), match.end(), fmt.name


_FRACTIONS = {"1/2", "1/3", "2/3", "1/4", "3/4", "1/8", "1/5"}
_SETTINGS = re.compile(r"(?i)(?:\b(?:ps|psv|cpap|bipap|ipap|epap|peep|simv|imv|ac|vent|settings?|support|strength|str|"
                       r"motor|grip|tabs?|x|of|by)\s*|\d\s*)$")


_VENT_VALUES = {2, 3, 4, 5, 6, 8, 10, 12, 14, 15, 16, 18, 20}
_VENT_CONTEXT = re.compile(r"(?i)\b(?:psv?|cpap|bipap|ipap|epap|ips|peep|simv|imv|vent\w*|flow-?by|mask|wean\w*|settings?)\b")
_PAIN_CONTEXT = re.compile(r"(?i)\b(?:pain|cp|c/o|discomfort|ache|scale|rates?|rated)\b")
#: A day follows these ("on 3/10", "starting 4/2"); "on 5/5" stays a setting (pressure support 5, PEEP 5).
_ON_BEFORE = re.compile(r"(?i)\b(?:on|thru|through|due|starting|started)\s*$")
#: "admitted to OSH", "transferred to the floor": where a stay began; a number after it is its day.
_ADMITTED_BEFORE = re.compile(r"(?i)\b(?:admitted|adm|transferred|transfered|sent|taken)\s+(?:to|at)\s+(?:the\s+)?"
                              r"[^\s\d]+\s*$")
#: Equal pairs no ventilator is set to (pressure support and PEEP of 2-4 cm H2O are not used):
#: after "on" these are days ("F/c changed on 3/3", "S/P CABG X2 ON 2/2").
_NO_VENT_PAIR = {2, 3, 4}
_COUNT_AFTER = re.compile(r"(?i)\s*(?:ns\b|strength|tabs?\b|dose|bl\b|bottles?|blood|cx|sets?|pain|%|of\b)")


def _not_a_date(text: str, match: re.Match[str]) -> bool:
    """m/d shapes that are fractions (1/2 NS), muscle strength (5/5), pain scores (7/10), culture
    counts (2/4 bottles) or ventilator settings (PSV 10/5); a date trigger right before wins."""
    value = match.group()
    if value.count("/") > 1:
        return False  # a year makes it a date: "12/5/2029" after "wean off vent"
    month, day = (int(v) for v in value.split("/")[:2])
    before = text[max(0, match.start() - 30): match.start()]
    after = text[match.end(): match.end() + 12]
    if re.search(r"(?i)\b(?:since|from|until|dated?|admitted|discharged)\s*$", before) or value.startswith("0"):
        return False  # a date word before it, or zero-padding ("01/01"), which no fraction or setting has
    if re.match(r"(?i)\s*of\s+(?:19|20)\d{2}\b", after):
        return False  # "in 12/26 of 2035"
    if _COUNT_AFTER.match(after) or (day in _VENT_VALUES and (_VENT_CONTEXT.search(before[-14:])
                                                               or _VENT_CONTEXT.match(after.lstrip()))):
        return True
    if _ON_BEFORE.search(before) and (month != day or day not in _VENT_VALUES or day in _NO_VENT_PAIR) \
            or _ADMITTED_BEFORE.search(before):
        return False  # "ON 3/10 HAD CP", "changed on 3/3", "ADMITTED TO OSH 12/10 WITH C/O CP": a day
    if day == 10 and _PAIN_CONTEXT.search(before[-20:] + " " + after):
        return True
    # weaker triggers: they beat the fraction shapes (1/2, 1/3), not the settings above; "on 5/5" stays a
    # setting (pressure support 5, PEEP 5) unless a follow-up or a shift header says date
    if re.search(r"(?i)(?:\bf/?u:?|\bfollow[- ]?up)\s*$", before) or _SHIFT_HEADER.match(after) and _LINE_START.search(before):
        return False
    if _SAMPLE_BEFORE.search(before):
        return False  # "last cx 5/5", "BC 1/5 pending": when a culture was sent is a date
    if EVENT_BEFORE.search(before) and not _AMOUNT_AFTER.match(after):
        return False  # "intubated 1/1 for resp failure", "had a fall 1/4": the day it happened
    return value in _FRACTIONS or (month == day and month <= 5)


#: "2/2 CSRU 7P-7A SHIFT SUMMARY": a date at the start of a line, before a unit or a shift header.
_SHIFT_HEADER = re.compile(r"(?i)\s+(?:[a-z]*icu|ccu|csru|shift|nursing|npn|progress|note|\d{1,2}[ap]\s*-\s*\d{1,2}[ap])")
_SAMPLE_BEFORE = re.compile(
    r"(?i)\b(?:last|next|cx|bcx|ucx|scx|bc|uc|cultures?|sent|drawn|dated|early|mid|late|scan|ct|mri|cxr|echo|tee|egd|"
    r"surgery|monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tues|wed|thurs|fri|sat|sun)\s*$"
    r"|\bs/p\b[^.;\n\d]{0,25}(?:x\d\s*)?(?:on\s*)?$"  # "s/p MI 3/4", "s/p stent x2 4/4", "S/P CABG X2 ON 2/2"
    r"|\bto\s+(?:the\s+)?(?:floor|or|ccu|icu|micu|sicu|csru|cath\s+lab)\s*$"  # "transferred to the floor 1/5"
    r"|\d\s?(?:am|pm)\s*$")  # "until 2am 2/3"
_LINE_START = re.compile(r"(?:^|\n)[ \t]*$")
#: Clinical events a note writes its day right after, with no preposition ("intubated 1/1", "Foley
#: placed 23rd", "fall 1/4", "PEG placement 5/5"): after these a fraction-shaped m/d, an ordinal or a
#: month abbreviation is the day it happened, unless an amount follows ("given 1/2 amp", "given 1/2 hour
#: after"). Treating words are not events here: "treated with 1/2 of D50" is an amount.
EVENT_BEFORE = re.compile(
    r"(?i)\b(?:(?:re)?intubated|(?:re)?intubation|extubated|extubation|placed|placement|inserted|insertion|"
    r"removed|removal|pulled|discontinued|d/?c'?d|done|performed|changed(?:\s+over\s+wire)?|stopped|held|"
    r"restarted|resumed|admitted|admission|fall|fell|seen|scheduled\s+for|planned\s+for|booked\s+for|bm|"
    r"surgery|procedure|transfused|transfusion|diagnosed|dx'?d|expired|died|discharged|discharge|arrived|"
    r"visit|visited|called|tapped|paracentesis|thoracentesis|bronch|bronchoscopy|endoscopy|colonoscopy|"
    r"cath|catheterization|dialyzed|dialysis|hd|biopsy|biopsied|due|given)\s*$")
#: What makes a number after an event an amount, not a day ("given 1/2 amp", "changed 1/2 hour later").
#: Not _UNIT_AFTER: "pt" (points) and "to 3" (a range) follow a day too ("intubated 1/1 pt was ...").
_AMOUNT_AFTER = re.compile(r"(?i)\s*(?:way|up|amps?|vials?|bags?|bolus|d\d+|nph|strength|st|ns|dose|of|tabs?|"
                           r"mg|mcg|ug|ml|cc|l|liters?|units?|u|x|times|days?|d|hrs?|hours?|h|min)\b|\s*%")
#: Month names that are also English words ("may 2 days", "MAR" = the medication administration record).
_AMBIGUOUS_EN = {"may", "mar"}
#: Abbreviations that are also clinical shorthand ("dec" = decreased, "aug" = Augmentin, "sep" = separate),
#: and "march", a verb seldom followed by a number: a lower-case note writes its dates "dec 27" too, so
#: these count as dates unless a unit or a count follows.
_SHORTHAND_EN = {"march", "jun", "jan", "dec", "sep", "sept", "aug"}
_UNIT_AFTER = re.compile(r"(?i)\s*(?:mg|mcg|ug|ml|cc|l\b|liters?|units?|u\b|%|x\b|times|days?|d\b|hrs?|hours?|h\b|"
                         r"min|minutes?|mm|cm|mmhg|bpm|beats|breaths|pts?|points?|kg|lbs?|meq|mmol|degrees?|to\s+\d)")
#: A lower-case "may 15" is a date after these ("last used in may 15", "since march 3").
_DATE_PREPOSITION = re.compile(r"(?i)\b(?:in|on|since|until|till|from|early|mid|late|before|after|around|last)\s+$")


def _ambiguous_month(text: str, match: re.Match[str]) -> bool:
    """A lower-case month word next to a number that is more likely English or shorthand than a date.

    "may 2", "mar 3": plausible dates, but "may" next to a number is common English ("may 2 days"):
    these need a capital, an ordinal or a date preposition. Shorthand abbreviations ("dec 27") and
    "march" only need no unit or count after the number ("dec 20 mg", "aug 3 days").
    """
    mon = match.group("mon")
    low = mon.lower()
    if mon[0].isupper() or match.groupdict().get("ord") or low not in _AMBIGUOUS_EN | _SHORTHAND_EN:
        return False
    if _DATE_PREPOSITION.search(text[max(0, match.start() - 12): match.start()]):
        return False
    return low in _AMBIGUOUS_EN or bool(_UNIT_AFTER.match(text, match.end()))


# --------------------------------------------------------------------------------------------
# Parsing and shifting
# --------------------------------------------------------------------------------------------


def _year4(raw: str, pivot: int) -> int:
    """Two-digit years: up to ``pivot`` -> 20xx, else 19xx."""
    value = int(raw)
    if len(raw) == 4:
        return value
    return 2000 + value if value <= pivot else 1900 + value


def _ordinal(day: int, template: str) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return suffix.upper() if template.isupper() else suffix


_EN_ONLY = {m for m in MONTHS_EN if m not in MONTHS_DE} | {"mar", "oct", "dec"}
_DE_ONLY = {m for m in MONTHS_DE if m not in MONTHS_EN} | {"mär", "mrz", "okt", "dez", "maerz", "jänner"}


def _month_name(month: int, template: str, language: str) -> str:
    """The new month in the original's language, form (full/abbreviated) and case.

    "April", "August", "September", "November" are spelled alike in both languages: the
    document's language decides; "März" or "October" decide by themselves.
    """
    low = template.lower()
    german = low in _DE_ONLY or (low not in _EN_ONLY and language == "de")
    full = (MONTHS_DE if german else MONTHS_EN)[month - 1]
    if low in MONTH_ABBR:
        value = full[:4] if low == "sept" and month == 9 else full[:3]
        if german and month == 3:
            value = "mrz" if low == "mrz" else "mär"
    else:
        value = full
    if template.isupper():
        return value.upper()
    if template[:1].isupper():
        return value[:1].upper() + value[1:]
    return value


def _pad(value: int, template: str) -> str:
    """Zero-pad only where the original did ("03"); "12" says nothing about padding, so none."""
    return str(value).zfill(len(template)) if template.startswith("0") else str(value)


@dataclass
class ShiftResult:
    text: str
    parsed: bool


def shift_date(text: str, days: int, language: str, *, reference: dt.date | None = None,
               pivot_year: int | None = None) -> ShiftResult:
    """Re-render a date string shifted by ``days``; ``parsed=False`` when it could not be read.

    Partial dates shift consistently with full ones: a day without year borrows the reference
    year; "March 2021" shifts its 15th; a bare year moves one year in the offset's direction
    (it must change, or it would pass through, and the offset is never zero).
    """
    reference = reference or dt.date(2000, 1, 1)
    pivot = pivot_year if pivot_year is not None else (dt.date.today().year % 100) + 10
    stripped = text.strip()
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()):]
    year_only = re.fullmatch(r"(?P<y>(?:18|19|20)\d{2})(?P<s>'?[sS])?|'(?P<y2>\d{2})|(?P<y3>\d{2})'", stripped)
    if year_only:
        if year_only.group("s"):  # a decade ("1980s") says little; keep it coarse but changed
            return ShiftResult(lead + "[DATE]" + trail if language == "en" else lead + "[DATUM]" + trail, False)
        step = 1 if days > 0 else -1
        raw = year_only.group("y") or year_only.group("y2") or year_only.group("y3")
        year = _year4(raw, pivot) + step
        new = str(year) if len(raw) == 4 else f"{year % 100:02d}"
        return ShiftResult(lead + stripped.replace(raw, new, 1) + trail, True)
    for fmt in formats_for(language) + [f for f in FORMATS if language not in f.languages]:
        match = fmt.pattern.fullmatch(stripped)
        if match is None:
            continue
        groups = match.groupdict()
        try:
            month = int(groups["m"]) if groups.get("m") else (
                MONTH_NUMBER[groups["mon"].lower()] if groups.get("mon") else reference.month)
            year = _year4(groups["y"], pivot) if groups.get("y") else reference.year
            day = int(groups["d"]) if groups.get("d") else 15
            original = dt.date(year, month, day)
        except (ValueError, KeyError):
            continue
        shifted = original + dt.timedelta(days=days)
        values: dict[str, str] = {}
        compact = fmt.name == "en_mdy_compact"  # digits run together: always two per field
        if groups.get("d"):
            values["d"] = f"{shifted.day:02d}" if compact else _pad(shifted.day, groups["d"])
        if groups.get("m"):
            values["m"] = f"{shifted.month:02d}" if compact else _pad(shifted.month, groups["m"])
        if groups.get("mon"):
            values["mon"] = _month_name(shifted.month, groups["mon"], language)
        if groups.get("y"):
            values["y"] = str(shifted.year) if len(groups["y"]) == 4 else f"{shifted.year % 100:02d}"
        if groups.get("ord"):
            values["ord"] = _ordinal(shifted.day, groups["ord"])
        out, last = [], 0
        for name in sorted(values, key=lambda g: match.start(g)):
            out.append(stripped[last: match.start(name)])
            out.append(values[name])
            last = match.end(name)
        out.append(stripped[last:])
        return ShiftResult(lead + "".join(out) + trail, True)
    month_only = re.fullmatch(MON + r"\.?", stripped, re.IGNORECASE)
    if month_only:  # "in April", "im Februar": the patient's offset applied to the 15th
        base = dt.date(reference.year, MONTH_NUMBER[month_only.group("mon").lower()], 15)
        shifted = base + dt.timedelta(days=days)
        name = _month_name(shifted.month, month_only.group("mon"), language)
        return ShiftResult(lead + name + stripped[month_only.end("mon"):] + trail, True)
    day_only = re.fullmatch(r"(?P<d>0?[1-9]|[12]\d|3[01])(?P<ord>st|nd|rd|th|ST|ND|RD|TH)?\.?", stripped)
    if day_only:  # "the 11th", "am 3.": shift within the reference month, still a plausible day
        base = dt.date(reference.year, reference.month, 1)
        shifted = base + dt.timedelta(days=int(day_only.group("d")) - 1 + days)
        new = _pad(shifted.day, day_only.group("d"))
        if day_only.group("ord"):
            new += _ordinal(shifted.day, day_only.group("ord"))
        return ShiftResult(lead + new + stripped[day_only.end("ord") if day_only.group("ord") else day_only.end("d"):] + trail, True)
    return ShiftResult(lead + ("[DATUM]" if language == "de" else "[DATE]") + trail, False)


def parse_iso_or_any(value: str, language: str = "en") -> dt.date | None:
    """A document's ``date`` field as a date (for the reference year of partial dates)."""
    try:
        return dt.date.fromisoformat(value.strip()[:10])
    except ValueError:
        pass
    for fmt in formats_for(language):
        match = fmt.pattern.fullmatch(value.strip())
        if match and match.groupdict().get("y") and (match.groupdict().get("m") or match.groupdict().get("mon")):
            g = match.groupdict()
            month = int(g["m"]) if g.get("m") else MONTH_NUMBER[g["mon"].lower()]
            try:
                return dt.date(_year4(g["y"], 30), month, int(g["d"]) if g.get("d") else 1)
            except ValueError:
                return None
    return None
