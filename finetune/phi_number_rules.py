"""PHI rules for numbers: dates, ages over 89, identifiers, phone numbers and URLs.

Clinical notes are full of numbers that are not PHI (doses, lab values, times), so each
pattern carries the unit and context exclusions that keep "2 mg" and "1990 ml" out.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from finetune.date_formats import EVENT_BEFORE, MONTHS_EN, find_dates
from finetune.phi_text import STOP_WORDS, PhiSpan, TextView
from finetune.phi_types import PhiType

# --------------------------------------------------------------------------------------------
# Numbers: dates, ages, identifiers, phones
# --------------------------------------------------------------------------------------------

YEAR_TRIGGERED = re.compile(
    r"(?i:\b(?:in|since|of|circa|ca\.|year|yr|seit|im|jahre?|von|bis|ab|aus|um|ende|anfang|"
    r"mitte|frühjahr|herbst|sommer|winter|stand|jahr|cabg|x\d)\s+|^[ \t]*|\(|[-–]\s?)(?P<y>(?:19|20)\d{2})(?P<s>'?[sS])?"
    r"(?![\d:/]|[.,]\d|\s*(?:mg|µg|ug|ml|ie|i\.e\.|u\b|cc|g\b|kg|mcg|mmol|einheiten|units|m\b|cm|mm|x\b|-\s?\d))", re.MULTILINE)
#: A year that cannot be a clock time (minutes >= 60): "resection 1977", "saying 1999".
YEAR_NOT_TIME = re.compile(r"(?<![\d.,:/])\b(?P<y>19[6-9]\d|20[6-9]\d)\b(?![\d:/]|[.,]\d|\s*(?:mg|ml|cc|g\b|kg|mcg|units|u\b|x\b))")
YEAR_APOSTROPHE = re.compile(r"(?<![\w'’])['’](?P<y>\d{2})\b(?!['’\d])|\b(?P<y2>\d{2})['’](?=[\s.,;)]|$)(?!\d)")
ORDINAL_DAY = re.compile(r"(?i:\b(?:the|on|am|vom|bis|zum)\s+)(?P<d>(?:[12]?\d|3[01])(?:st|nd|rd|th))\b"
                         r"(?=\s*(?:[.,;:)\n]|$|at\b|in the\b|of\s+[A-Za-z]+\b))", re.I)
#: A day as an ordinal after a date preposition ("since the 24th", "on 3rd"), unless what follows makes
#: it a rank: a noun ("on 4th floor", DAY_ORDINAL_FOLLOWERS in ``dates``) or "of the month".
ORDINAL_AFTER_PREPOSITION = re.compile(
    r"(?i)\b(?:on|since|until|till|by|from|before|after|through|thru)\s+(?:the\s+)?(?P<d>(?:[12]?\d|3[01])(?:st|nd|rd|th))\b"
    r"(?!\s*of\s+(?:the\s+)?(?:month|week))")
#: What may follow a day written as an ordinal after a preposition ("since the 24th pt has been", "on
#: 3rd at 10", "on the 3rd June"): a function word, the patient, a month. Any other word makes the
#: ordinal a rank ("placed on 1st step", "after 2nd cath"), whatever the noun.
DAY_ORDINAL_FOLLOWERS = STOP_WORDS | {"pt", "pts", "patient", "pm", "sept"} | set(MONTHS_EN) | {m[:3] for m in MONTHS_EN}
NEXT_WORD = re.compile(r"[ \t]+(?P<w>[A-Za-z]+)")
#: A month name alone after a date preposition ("in aug", "since March", "early sept"); "may" only
#: where the verb cannot stand ("in may", "since may", "early may").
MONTH_AFTER_PREPOSITION = re.compile(
    r"(?i)\b(?P<prep>in|since|until|till|early|mid|late|during|from|of|last|next|through|thru|by|before|after)\s+"
    r"(?:of\s+)?(?P<mon>january|february|march|april|june|july|august|september|october|november|december|"
    r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|may)\b\.?")
MAY_PREPOSITIONS = {"in", "since", "until", "till", "early", "mid", "late", "during", "last", "next"}
#: An ordinal or a month abbreviation right after a clinical event ("Foley placed 23rd", "intubated oct
#: for resp failure"): the day or month it happened, with the same follower rule as after a preposition
#: ("placed 2nd IV" is a rank). Only abbreviations that are no clinical shorthand ("dec" = decreased,
#: "sep" = separate, "aug" = Augmentin, "jun" = junctional, "mar", "may") and no name ("Jan").
EVENT_DAY = re.compile(r"(?i)\b(?P<d>(?:[12]?\d|3[01])(?:st|nd|rd|th)|feb|apr|jul|oct|nov)\b")


YEAR_DE = re.compile(r"(?<![\d.,:/\-])\b(?P<y>(?:19|20)\d{2})\b(?![\d:]|[.,]\d|\s*(?:mg|µg|ug|ml|ie|i\.e\.|u\b|cc|g\b|kg|mcg|"
                     r"mmol|einheiten|e\b|m\b|cm|mm|x\b|stk|tbl|tabl|%))", re.I)
MONTH_WORD_DE = re.compile(r"\b(?:Januar|Jänner|Februar|März|April|Mai|Juni|Juli|August|September|Oktober|November|"
                           r"Dezember)\b")
MONTH_WORD_EN = re.compile(r"\b(?:January|February|April|June|July|August|September|October|November|December|"
                           r"JANUARY|FEBRUARY|MARCH|APRIL|JUNE|JULY|AUGUST|SEPTEMBER|OCTOBER|NOVEMBER|DECEMBER|"
                           r"january|february|july|september|october|november|december)\b")
RANGE_START = re.compile(r"(?P<d>\b\d{1,2}\.?)\s*(?:->|-|–|/|bis(?:\s+zum)?|und|to|through)\s*$")


def dates(view: TextView) -> Iterator[PhiSpan]:
    """Dates in English and German formats (date_formats.FORMATS), years with a trigger, 'the 11th'."""
    found = list(find_dates(view.text, view.language))
    for start, end, _name in found:
        yield PhiSpan(start, end, PhiType.DATE, 0.9, "date", True)
        # the first half of a range: "06-07.11.2024", "13. - 24.10.2023", "vom 4. bis 18.10.21", "03-06/2022"
        before = RANGE_START.search(view.text[max(0, start - 14): start])
        if before:
            offset = max(0, start - 14) + before.start("d")
            yield PhiSpan(offset, offset + len(before.group("d")), PhiType.DATE, 0.7, "date_range", True)
    if view.language == "de":  # German letters write times as "14:30 Uhr", so a bare 19xx/20xx is a year
        for m in YEAR_DE.finditer(view.text):
            yield PhiSpan(m.start("y"), m.end("y"), PhiType.DATE, 0.6, "year", True)
    for m in (MONTH_WORD_DE if view.language == "de" else MONTH_WORD_EN).finditer(view.text):
        yield PhiSpan(m.start(), m.end(), PhiType.DATE, 0.5, "month", True)
    for m in YEAR_TRIGGERED.finditer(view.text):
        if view.language == "en" and not re.search(r"[A-Za-z(]\s*$", view.text[max(0, m.start("y") - 6): m.start("y")]):
            continue  # English notes write shift times as 1900-0700 at line starts and after dashes
        yield PhiSpan(m.start("y"), m.end("s") if m.group("s") else m.end("y"), PhiType.DATE, 0.7, "year", True)
    for m in YEAR_NOT_TIME.finditer(view.text):
        yield PhiSpan(m.start("y"), m.end("y"), PhiType.DATE, 0.5, "year", True)
    for m in YEAR_APOSTROPHE.finditer(view.text):
        group = "y" if m.group("y") else "y2"
        if group == "y2" and not re.search(r"(?i)\b(?:in|since|cabg|x\d|of)\s*$", view.text[max(0, m.start() - 8): m.start()]):
            continue  # "HOB 30'", "upper 30'S": degrees and rates, not years
        yield PhiSpan(m.start(group), m.end(group), PhiType.DATE, 0.6, "year", True)
    for regex in (ORDINAL_DAY, ORDINAL_AFTER_PREPOSITION, EVENT_DAY) if view.language == "en" else (ORDINAL_DAY,):
        for m in regex.finditer(view.text):
            if regex is EVENT_DAY and not EVENT_BEFORE.search(view.text[max(0, m.start() - 40): m.start()]):
                continue
            if regex is not ORDINAL_DAY and (after := NEXT_WORD.match(view.text, m.end("d"))) \
                    and after.group("w").lower() not in DAY_ORDINAL_FOLLOWERS:
                continue  # a rank, not a day
            yield PhiSpan(m.start("d"), m.end("d"), PhiType.DATE, 0.6, "day", True)
    for m in MONTH_AFTER_PREPOSITION.finditer(view.text) if view.language == "en" else ():
        if m.group("mon").lower() == "may" and m.group("prep").lower() not in MAY_PREPOSITIONS:
            continue
        if m.group("mon").lower() == "mar" and not m.group("mon")[0].isupper():
            continue  # "mar" is also a verb
        yield PhiSpan(m.start("mon"), m.end("mon"), PhiType.DATE, 0.6, "month", True)


AGE = re.compile(
    r"(?<![\d.,/])(?P<age>9\d|1[01]\d|12[0-5])(?:\s?-\s?|\s)?(?=(?:yo|y/o|y\.o\.|yr|yrs|years?|year-old|-year|jährig|"
    r"-jährig|jähr|-j\.|j\.|jahre|jahren|s/p|Jähr)|\s+(?:yo|y/o|year|male|female|man|woman|gentleman|lady))", re.I)
AGE_AFTER = re.compile(r"(?i:\b(?:aged?|age of|im alter von|alter:?)\s+)(?P<age>9\d|1[01]\d)\b(?![.,]\d)"
                       r"|(?i:\bmit\s+)(?P<age2>9\d|1[01]\d)(?=\s+(?:jahren|an\b|verstorben))")


def ages(view: TextView) -> Iterator[PhiSpan]:
    """Ages over 89 only (younger ages are not PHI and stay): '92-year-old', '98 yo', 'mit 101 an'."""
    for regex in (AGE, AGE_AFTER):
        for m in regex.finditer(view.text):
            group = "age" if m.group("age") else "age2"
            yield PhiSpan(m.start(group), m.end(group), PhiType.AGE, 0.8, "age", True)
    for m in re.finditer(r"(?m)^[ \t]*(?P<age>9\d|1[01]\d)\s+(?=s/p|yo|w/|with)", view.text):
        yield PhiSpan(m.start("age"), m.end("age"), PhiType.AGE, 0.6, "age", True)


ID_TRIGGER = re.compile(
    r"(?i:\b(?:MRN|MR#|MR\s?No\.?|medical record(?:\s(?:number|no\.?))?|unit\sno\.?|accession(?:\s(?:number|no\.?))?|"
    r"acc\.?\s?#|case(?:\s(?:number|no\.?|#))|account(?:\s(?:number|no\.?))?|acct\.?\s?#?|SSN|social security(?:\snumber)?|"
    r"patient\sid|pat\.?-?id|patienten-?id|patientennummer|pat\.?-?nr\.?|fallnummer|fall-?nr\.?|fn|piz|"
    r"vorgangs-?nr\.?|vorgangsnummer|e-?nr\.?|h-?nr\.?|hnr\.?|protokoll[- ]?nr\.?|aufnahmenummer|aufnahme-?nr\.?|"
    r"versichertennummer|versicherten-?nr\.?|versicherungsnummer|auftragsnummer|auftrags-?nr\.?|labor-?nr\.?|"
    r"labornummer|befund-?nr\.?|eingangs-?nr\.?|order(?:\s(?:number|no\.?|#))|specimen(?:\s(?:number|no\.?|#))?|"
    r"kennziffer|krankenkassen-?nr\.?|ik-?nr\.?|lanr|bsnr|patient\snumber|record\snumber|fallzahl|fall(?=\s*:)|"
    r"sv[- ]?nr\.?|sv(?=\s*:)|sozialversicherungs-?nr\.?|sozialversicherungsnummer|histologie|histo-?nr\.?|"
    r"(?:credit\s|debit\s|insurance\s|medicaid\s|medicare\s)?card(?![a-z])(?:\s(?:number|no\.?|#))?|"
    r"(?:driver'?s\s)?licen[cs]e(?![a-z])(?:\s(?:number|no\.?|#))?|passport(?:\s(?:number|no\.?|#))?|"
    r"iban(?![a-z])|member\sid|policy(?:\s(?:number|no\.?|#))))"
    r"\s*[:#.]?\s*(?:(?i:is|was|=)\s+)?(?:Nr\.?\s*[:.]?\s*)?(?P<id>[A-Z]{0,4}[-/ ]?\d[\dA-Za-z]*(?:[-/.][\dA-Za-z]+)*)")
#: Identifier shapes that mean the same in any context: a US social security number, a run of 12 or
#: more digits (card, account, insurance numbers; no dose or lab value has that many), card numbers
#: in groups of four, an IPv4 address.
ID_SHAPE = re.compile(
    r"(?<![\d\-/.])\d{3}-\d{2}-\d{4}(?![\d\-/])"
    r"|(?<![\d.,/\-])\d{12,19}(?![\d\-/]|[.,]\d)"
    r"|(?<![\d.,/\-])\d{4}(?P<sep>[ \-])\d{4}(?P=sep)\d{4}(?P=sep)\d{1,7}(?![\d\-/])"
    r"|(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]|\.\d)")
ROOM_TRIGGER = re.compile(
    r"(?:\b|(?<=-))(?:Station|Stat\.|Ambulanz|Zimmer|Zi\.?|Raum|Bett|OP|Intensiv|Room|Rm\.?|Bed(?!\.)|Ward|Intensivstation|"
    r"Onkologie|Chirurgie|Kardiologie|Neurologie|Psychiatrie|Pädiatrie|Urologie|Gynäkologie|Dermatologie)"
    r"\s*[:.]?\s*(?P<id>[A-Z]{1,4}-?\d{1,4}[a-z]?\b|\d{1,4}[A-Z]?\b|[IVX]{1,4}\b)(?!\s*(?:mg|ml|%|h\b|Uhr|Tage|x))")


WARD_CODE_DE = re.compile(r"\b(?:auf|zur|nach)\s+(?:der\s+)?(?P<id>[A-Z]{1,5}-?\d{1,3}[a-z]?)\b(?![.,]\d)")


#: German specimen and case numbers written as number/year-ish ("(47833/0377: tumorfrei)"): five or
#: more digits before the slash is no date, dose or ratio.
SLASHED_NUMBER_DE = re.compile(r"(?<![\d/.,\-])\d{5,8}/\d{2,5}(?![\d/]|[.,]\d|\s?(?:mg|µg|ug|ml|IE|i\.\s?E|E\b))")


def identifiers(view: TextView) -> Iterator[PhiSpan]:
    """Record/case/accession/card/licence numbers after a trigger word, identifier shapes, and named
    wards/rooms/beds."""
    if view.language == "de":
        for m in WARD_CODE_DE.finditer(view.text):  # "auf PSY13", "zuvor auf KJPP-2"
            yield PhiSpan(m.start("id"), m.end("id"), PhiType.ID, 0.6, "room", True)
        for m in SLASHED_NUMBER_DE.finditer(view.text):
            yield PhiSpan(m.start(), m.end(), PhiType.ID, 0.6, "slashed_number", True)
    for m in ID_TRIGGER.finditer(view.text):
        value = m.group("id")
        if sum(c.isdigit() for c in value) >= 3 or re.search(r"[A-Za-z]", value):
            if sum(c.isdigit() for c in value) >= 2:
                yield PhiSpan(m.start("id"), m.end("id"), PhiType.ID, 0.9, "id", True)
    for m in ROOM_TRIGGER.finditer(view.text):
        yield PhiSpan(m.start("id"), m.end("id"), PhiType.ID, 0.6, "room", True)
    for m in ID_SHAPE.finditer(view.text):
        yield PhiSpan(m.start(), m.end(), PhiType.ID, 0.8, "id_shape", True)


PHONE_TRIGGER = re.compile(
    r"(?i:\b(?:pager|pg|beeper(?:\snumber)?|beep|phone(?:\snumber)?|tel|telephone|telefon|cell|cellular|home|work|"
    r"mobile?|mobil|handy|fax|telefax|durchwahl|info|rufnummer|nummer|number|unter|reached\sat|call\sat|call)"
    r"\.?(?:\s?(?:no\.?|#|nr\.?))?)[\s:#.\-]*(?P<phone>\+{0,2}\(?\d[\d()\s/.\-–]{3,}\d(?:\s?o\.\s?\d+)?)")
PHONE_US = re.compile(r"(?<![\d/.-])(?:\+1[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s./-]?)?\d{3}-\d{4}\b(?![-/]\d)"  # "202555-0123" too
                      r"|(?<![\d/.-])(?:\+1[\s.-]?)?\(?\b\d{3}\)?([\s./])\d{3}\1\d{4}\b(?![-/.]\d)"  # "617 555 1234", "617.555.1234"
                      r"|(?<![\d/.-])\+1[\s.-]?\d{3}[\s.-]?\d{3}[\s.-]?\d{4}\b")
#: "x2216", "ext 13027", "ext. 23" right after a phone number
PHONE_EXTENSION = re.compile(r"\s*(?:x|ext\.?|extension)\s*\d{1,6}\b", re.I)
#: "call family at 74169", "reached at beeper number 55037", "page him at 3310771659"
CALL_AT = re.compile(r"(?i)\b(?:call|calls|called|calling|reach|reached|contact|contacted|page|paged|beep|beeped|"
                     r"answer|answering|answered|text|texted|ring|rang|dial|dialed|dialled|phone|phoned)\b"
                     r"[^\n.;]{0,30}?(?:\bat|\bon|@|#)\s*(?P<phone>\+?\(?\d[\d()\s/.\-]{2,}\d)(?![\d/:])")
#: A number labelled after it: "617 555 1234 (cell)", "082 490 1693-Office", "+41 69 979 80 58 - fax".
PHONE_LABEL_AFTER = re.compile(r"(?<![\d/.])(?P<phone>\+{0,2}\(?\d[\d()\s/.\-]{5,}\d)\s?(?:-\s?|\()"
                               r"(?i:office|fax|cell|mobile|home|work|pager|tel|phone)\b")
#: "(Irene Sherwood, 202232-4455)", "(daughter, 55037)": a number after a name inside parentheses
PARENTHESISED_CONTACT = re.compile(r"\((?P<who>[^()\n\d]{2,40}),\s*(?P<phone>\+?\d[\d\s/.\-]{3,}\d)\s*\)")
PHONE_DE = re.compile(
    r"(?<![\d.,/])(?:\+\d{2}\s?(?:\(0\)\s?)?\(?\d{1,4}\)?|\(0\d{2,5}\)|\b0\d{2,5})(?:\s?[/\-–]\s?|\s)\d[\d\s\-–]{2,}\d(?!\d|[.,]\d)")


#: Trigger words that also come before numbers that are no phone ("home 2 days", "Nummer 3").
_WORDS_BEFORE_NUMBERS = {"unter", "nummer", "number", "call", "home", "work", "info", "reached"}


def phones(view: TextView) -> Iterator[PhiSpan]:
    """Phone, fax and pager numbers: with a trigger word, or in an unmistakable phone shape."""
    for m in PHONE_TRIGGER.finditer(view.text):
        value = m.group("phone").rstrip(" -–/")
        digits = sum(c.isdigit() for c in value)
        trigger = m.group(0)[: m.start("phone") - m.start()].lower()
        if re.fullmatch(r"\d{1,2}[./]\d{1,2}[./]\d{2,4}|\d{1,3}/\d{1,3}", value):
            continue  # a date or a blood pressure, not a number to call
        first_word = re.split(r"[\s.:#-]", trigger.strip(), maxsplit=1)[0]
        # "HOME-56656", "work: 44113": a label; after a plain "home" a pager's five digits ("home 56656"),
        # not a year or a dose ("home 2000", "home 2 days")
        labelled = re.search(r"[:#]|\w-$", trigger)
        needed = 4 if labelled or first_word not in _WORDS_BEFORE_NUMBERS else 5 if first_word in {"home", "work"} else 7
        if digits >= needed:
            yield _with_extension(view.text, PhiSpan(m.start("phone"), m.start("phone") + len(value), PhiType.PHONE,
                                                      0.85, "phone", True))
    for regex in (PHONE_US, PHONE_DE):
        for m in regex.finditer(view.text):
            times = re.fullmatch(r"(\d{3,4})-(\d{4})", m.group())
            if times and all(int(t) <= 2400 and int(t[-2:]) < 60 for t in times.groups()):
                continue  # "900-1300": a time range
            if sum(c.isdigit() for c in m.group()) >= 7:
                yield _with_extension(view.text, PhiSpan(m.start(), m.end(), PhiType.PHONE, 0.7, "phone_shape", True))
    for regex, minimum in ((CALL_AT, 4), (PARENTHESISED_CONTACT, 5), (PHONE_LABEL_AFTER, 7)):
        for m in regex.finditer(view.text):
            value = m.group("phone").rstrip(" -/.")
            if sum(c.isdigit() for c in value) >= minimum and not re.fullmatch(r"\d{1,2}[/.]\d{1,2}(?:[/.]\d{2,4})?", value):
                span = PhiSpan(m.start("phone"), m.start("phone") + len(value), PhiType.PHONE, 0.75, "contact", True)
                yield _with_extension(view.text, span)


def _with_extension(text: str, span: PhiSpan) -> PhiSpan:
    """A phone span grows over an extension written after it ("617-555-1234 x2216")."""
    m = PHONE_EXTENSION.match(text, span.end)
    if m:
        span.end = m.end()
    return span


URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", re.I)


def urls(view: TextView) -> Iterator[PhiSpan]:
    """Web addresses with a scheme or www. (Presidio's URL recognizer takes 'secretions.no' for one)."""
    for m in URL.finditer(view.text):
        yield PhiSpan(m.start(), m.end(), PhiType.URL, 0.9, "url", True)
