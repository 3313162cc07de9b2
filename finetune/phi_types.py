"""Our PHI types, their overlap priority, and the ONE place where foreign label sets map onto them.

Detection (Presidio entity names, spaCy NER labels) and evaluation (the gold labels of each
annotated corpus) speak different vocabularies. Everything downstream (surrogates, counts in the
manifest, recall per type in ``eval.deid``) speaks only :class:`PhiType`, so a new corpus or a new
recognizer needs one new line here and nowhere else.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from enum import Enum


class PhiType(str, Enum):
    """What kind of identifier a span is; decides which surrogate replaces it."""

    NAME = "NAME"
    DATE = "DATE"
    AGE = "AGE"  # only ages over 89 are PHI (HIPAA Safe Harbor); younger ages stay in the text
    ID = "ID"  # record, case, accession, insurance numbers; wards/rooms/beds
    PHONE = "PHONE"  # phone, fax, pager
    EMAIL = "EMAIL"
    URL = "URL"
    ADDRESS = "ADDRESS"  # street + house number, postal code
    LOCATION = "LOCATION"  # city, region, country
    HOSPITAL = "HOSPITAL"  # hospitals, clinics, practices, named wards
    ORGANIZATION = "ORGANIZATION"  # employers, universities (not detected on purpose: see NER_LABELS)
    PROFESSION = "PROFESSION"
    OTHER = "OTHER"


#: Overlap resolution keeps the higher-priority span (lower number). Structured, pattern-certain
#: types first: a date that Presidio's phone recognizer also matched must stay a date, and an age
#: that spaCy calls DATE must stay an age (both seen in the prototype).
PRIORITY: dict[PhiType, int] = {
    PhiType.EMAIL: 0,
    PhiType.URL: 1,
    PhiType.ID: 2,
    PhiType.DATE: 3,
    PhiType.AGE: 4,
    PhiType.PHONE: 5,
    PhiType.ADDRESS: 6,
    PhiType.HOSPITAL: 7,
    PhiType.NAME: 8,
    PhiType.LOCATION: 9,
    PhiType.ORGANIZATION: 10,
    PhiType.PROFESSION: 11,
    PhiType.OTHER: 12,
}

#: Presidio entity names produced by the predefined recognizers we register -> our types.
#: Our own recognizers emit PhiType values directly.
PRESIDIO_ENTITIES: dict[str, PhiType] = {
    "EMAIL_ADDRESS": PhiType.EMAIL,
    "URL": PhiType.URL,
    "IBAN_CODE": PhiType.ID,
    "PHONE_NUMBER": PhiType.PHONE,
    "PERSON": PhiType.NAME,
    "LOCATION": PhiType.LOCATION,
    **{t.value: t for t in PhiType},
}

#: spaCy NER labels that we let through. ORG, DATE, TIME, NORP, CARDINAL... are switched off: on
#: clinical text they over-mask (CHF, COPD -> ORG; "3 days" -> DATE) and our rules cover dates.
NER_LABELS: dict[str, PhiType] = {"PERSON": PhiType.NAME, "GPE": PhiType.LOCATION, "LOC": PhiType.LOCATION}

# --------------------------------------------------------------------------------------------
# Gold label sets of the annotated corpora (eval.deid). None = not PHI for this project.
# --------------------------------------------------------------------------------------------

#: PhysioNet deid gold standard (physionet_deid_dev; the held-out patients use the same scheme).
PHYSIONET_LABELS: dict[str, PhiType | None] = {
    "PTName": PhiType.NAME,
    "PTNameInitial": PhiType.NAME,
    "HCPName": PhiType.NAME,
    "RelativeProxyName": PhiType.NAME,
    "Date": PhiType.DATE,
    "DateYear": PhiType.DATE,
    "Age": PhiType.AGE,
    "Phone": PhiType.PHONE,
    "Location": PhiType.LOCATION,
    "Other": PhiType.OTHER,
}

#: GraSCCo PHI annotation (GeMTeX scheme, German).
GRASCCO_LABELS: dict[str, PhiType | None] = {
    "NAME_PATIENT": PhiType.NAME,
    "NAME_DOCTOR": PhiType.NAME,
    "NAME_RELATIVE": PhiType.NAME,
    "NAME_EXT": PhiType.NAME,
    "NAME_USERNAME": PhiType.ID,
    # Titles ("Dr.", "Prof. Dr. med.") identify nobody; we keep them so "Dr. <surrogate>" reads
    # naturally. They are reported as excluded, not silently dropped.
    "NAME_TITLE": None,
    "DATE": PhiType.DATE,
    "AGE": PhiType.AGE,
    "ID": PhiType.ID,
    "CONTACT_PHONE": PhiType.PHONE,
    "CONTACT_FAX": PhiType.PHONE,
    "CONTACT_EMAIL": PhiType.EMAIL,
    "CONTACT_URL": PhiType.URL,
    "LOCATION_STREET": PhiType.ADDRESS,
    "LOCATION_ZIP": PhiType.ADDRESS,
    "LOCATION_CITY": PhiType.LOCATION,
    "LOCATION_COUNTRY": PhiType.LOCATION,
    "LOCATION_STATE": PhiType.LOCATION,
    "LOCATION_OTHER": PhiType.LOCATION,
    "LOCATION_HOSPITAL": PhiType.HOSPITAL,
    "LOCATION_ORGANIZATION": PhiType.ORGANIZATION,
    "PROFESSION": PhiType.PROFESSION,
    "OTHER": PhiType.OTHER,
}

#: presidio-research's synthetic PII sentences (presidio_synth_pii): general text, not clinical; an
#: outside check of names, places, dates and numbers in contexts no rule was written for.
PRESIDIO_LABELS: dict[str, PhiType | None] = {
    "PERSON": PhiType.NAME,
    "GPE": PhiType.LOCATION,
    "STREET_ADDRESS": PhiType.ADDRESS,
    "ZIP_CODE": PhiType.ADDRESS,
    "DATE_TIME": PhiType.DATE,
    "PHONE_NUMBER": PhiType.PHONE,
    "EMAIL_ADDRESS": PhiType.EMAIL,
    "DOMAIN_NAME": PhiType.URL,
    "IP_ADDRESS": PhiType.ID,
    "CREDIT_CARD": PhiType.ID,
    "IBAN_CODE": PhiType.ID,
    "US_SSN": PhiType.ID,
    "US_DRIVER_LICENSE": PhiType.ID,
    "AGE": PhiType.AGE,
    "ORGANIZATION": PhiType.ORGANIZATION,
    "TITLE": None,  # "Mr.", "Dr.": kept on purpose, as GraSCCo's NAME_TITLE
    "NRP": None,  # nationality, religion, politics: not a HIPAA identifier
}

#: Our own span output (and any corpus already in our vocabulary) reads back unchanged.
OWN_LABELS: dict[str, PhiType | None] = {t.value: t for t in PhiType}

GOLD_SCHEMES: dict[str, dict[str, PhiType | None]] = {
    "physionet": PHYSIONET_LABELS,
    "grascco": GRASCCO_LABELS,
    "presidio": PRESIDIO_LABELS,
    "own": OWN_LABELS,
}

_AGE_NUMBER = re.compile(r"\d+")
_warned: set[str] = set()


def gold_type(label: str, text: str = "", scheme: str | None = None) -> PhiType | None:
    """Our type for a gold label, or None when the span is not PHI for this project.

    Ages are PHI only above 89 (HIPAA Safe Harbor): a gold AGE span of "55" is reported as
    excluded, because keeping it is the design, not a miss. Unknown labels count as OTHER with a
    warning, so a new corpus never loses spans silently.
    """
    tables = [GOLD_SCHEMES[scheme]] if scheme else list(GOLD_SCHEMES.values())
    for table in tables:
        if label in table:
            kind = table[label]
            break
    else:
        if label not in _warned:
            _warned.add(label)
            warnings.warn(f"unknown gold PHI label {label!r}: counted as OTHER; add it to finetune/phi_types.py",
                          stacklevel=2)
        kind = PhiType.OTHER
    if kind is PhiType.AGE:
        number = _AGE_NUMBER.search(text)
        if number is None or int(number.group()) <= 89:
            return None
    return kind


def gold_spans(phi: list, text: str, report: Callable[[str, str], None],
               scheme: str | None = None) -> list[tuple[int, int, str, PhiType | None]]:
    """``(start, end, label, our type)`` of an annotated row's ``phi`` list; a bad span is passed to
    ``report(kind, detail)`` and skipped, so a reader can name file and line for all of them."""
    out = []
    for item in phi:
        try:
            start, end, label = int(item["start"]), int(item["end"]), str(item["label"])
        except (KeyError, TypeError, ValueError):
            report("malformed", f"bad gold span {item!r:.80}")
            continue
        if not 0 <= start < end <= len(text):
            report("malformed", f"gold span {start}-{end} outside the text (length {len(text)})")
            continue
        out.append((start, end, label, gold_type(label, text[start:end], scheme)))
    return out


def excluded_reason(label: str, text: str = "") -> str:
    """Why a gold span does not count (shown in the eval report next to the count)."""
    if label in ("NAME_TITLE", "TITLE"):
        return "titles are kept on purpose"
    if label == "NRP":
        return "nationality, religion and politics are not HIPAA identifiers"
    return "ages up to 89 are not PHI (HIPAA Safe Harbor)"
