"""Realistic, consistent surrogates derived from a secret key: no mapping table, no shared state.

Every choice is ``HMAC-SHA256(key, patient ‖ kind ‖ normalized original)``, so the same patient's
"Müller" becomes the same surname in every document, every worker process and every re-run, and
different patients get different surrogates. Nothing has to be stored or synchronised; the key is
the only secret (whoever holds it can recompute, never invert, the mapping).

- Names go word by word: "Hans Müller", "Herr Müller" and "Gisela Müller" keep one surname; a
  known first name is replaced by a first name of the same gender; initials map to letters;
  particles (von, van, de) and a possessive "'s" are kept; the original's case style is kept.
- Dates move by one whole-week offset per patient (never zero), so intervals and weekdays
  survive; the format is re-rendered as written (``date_formats``).
- Ages over 89 become 90. IDs and phone numbers keep their shape with new digits and letters.
- Whatever cannot be rendered becomes a typed placeholder ("[DATE]"); PHI never passes through.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib
import re
from dataclasses import dataclass
from functools import lru_cache

from finetune.date_formats import shift_date
from finetune.phi_gazetteers import load_gazetteers
from finetune.phi_types import PhiType

PLACEHOLDERS: dict[str, dict[PhiType, str]] = {
    "en": {PhiType.DATE: "[DATE]", PhiType.ORGANIZATION: "[ORGANIZATION]", PhiType.PROFESSION: "[PROFESSION]",
           PhiType.OTHER: "[PHI]"},
    "de": {PhiType.DATE: "[DATUM]", PhiType.ORGANIZATION: "[ORGANISATION]", PhiType.PROFESSION: "[BERUF]",
           PhiType.OTHER: "[PHI]"},
}
SURROGATE_LOCALE = {"en": "en_US", "de": "de_DE"}
KEEP_WORDS = {"von", "van", "de", "der", "den", "zu", "zur", "zum", "dos", "da", "di", "del", "la", "le", "du",
              "st", "sankt", "saint", "und", "and", "of", "the", "im", "am", "an", "des", "ob", "bei",
              "hospital", "hosp", "memorial", "regional", "rehab", "house", "va", "clinic", "center",
              "medical", "general", "klinik", "klinikum", "krankenhaus", "spital", "praxis", "universitätsklinikum",
              "universitätsklinik", "uniklinik", "kh", "str", "straße", "strasse", "weg", "platz", "allee", "gasse"}
STREET_SUFFIX = re.compile(r"(?i)(straße|strasse|strße|str|weg|allee|platz|gasse|ring|damm|pfad|ufer|kamp|markt)$")
WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?", re.UNICODE)


@dataclass(frozen=True)
class _NameLists:
    male: tuple[str, ...]
    female: tuple[str, ...]
    last: tuple[str, ...]
    cities: tuple[str, ...]


@lru_cache(maxsize=4)
def _lists(language: str) -> _NameLists:
    locale = SURROGATE_LOCALE.get(language, "en_US")
    person = importlib.import_module(f"faker.providers.person.{locale}").Provider
    address = importlib.import_module(f"faker.providers.address.{locale}").Provider
    male = tuple(person.first_names_male)
    female = tuple(person.first_names_female)
    last = tuple(n for n in person.last_names if n.isalpha())
    cities = tuple(getattr(address, "cities", ()))
    if not cities:  # en_US has no city list: compose "<Name><suffix>" like Faker's own format
        suffixes = tuple(s for s in getattr(address, "city_suffixes", ("ville", "ton")) if s.isalpha())
        cities = tuple(f"{n}{suffixes[i % len(suffixes)]}" for i, n in enumerate(male[:200]))
    return _NameLists(male, female, last, cities)


def _case_like(value: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return value.upper()
    if template.islower():
        return value.lower()
    if template[:1].isupper():
        return value[:1].upper() + value[1:]
    return value


class Surrogates:
    """Keyed surrogate generator; one instance serves every patient and process safely."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonymization key is empty")
        self._key = key
        self._gaz = load_gazetteers()

    def __repr__(self) -> str:  # never show the key
        return "Surrogates(key=***)"

    # --- keyed randomness -----------------------------------------------------------------------

    def _digest(self, patient: str, kind: str, value: str) -> bytes:
        message = "\x1f".join((patient, kind, value)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _pick(self, patient: str, kind: str, value: str, options: tuple[str, ...], avoid: str = "") -> str:
        number = int.from_bytes(self._digest(patient, kind, value)[:8], "big")
        choice = options[number % len(options)]
        if choice.lower() == avoid.lower() and len(options) > 1:
            choice = options[(number + 1) % len(options)]
        return choice

    def date_offset_days(self, patient: str) -> int:
        """Whole weeks in [-52, 51], never 0: keeps weekdays and intervals, always moves the date."""
        weeks = int.from_bytes(self._digest(patient, "date-offset", "")[:4], "big") % 103 - 52
        if weeks >= 0:
            weeks += 1
        return 7 * weeks

    # --- per type -------------------------------------------------------------------------------

    def name(self, patient: str, text: str, language: str) -> str:
        """Word by word, so every mention of a surname maps to the same surrogate."""
        lists = _lists(language)

        def one(match: re.Match[str]) -> str:
            word = match.group()
            possessive = ""
            if re.search(r"['’]s$", word):
                word, possessive = word[:-2], word[-2:]
            low = word.lower()
            if low in KEEP_WORDS:
                return word + possessive
            if len(word) == 1:  # an initial: a letter from the keyed stream
                letter = self._pick(patient, "initial", low, tuple("ABCDEFGHIJKLMNOPRSTW"), avoid=low)
                return _case_like(letter, word) + possessive
            gender = self._gaz.gender(word)
            if self._gaz.is_first(word):
                pool = lists.male if gender == "m" else lists.female if gender == "f" else lists.male + lists.female
                new = self._pick(patient, f"first-{gender or 'x'}", low, pool, avoid=word)
            else:
                new = self._pick(patient, "last", low, lists.last, avoid=word)
            return _case_like(new, word) + possessive

        return WORD.sub(one, text)

    def place(self, patient: str, text: str, language: str) -> str:
        lists = _lists(language)
        normalized = " ".join(w.lower() for w in WORD.findall(text))
        city = self._pick(patient, "city", normalized, lists.cities, avoid=text)
        words = WORD.findall(text)
        return _case_like(city, words[0] if words else city)

    def hospital(self, patient: str, text: str, language: str) -> str:
        """Name words become surnames; keywords (Hospital, Klinikum, St.) stay; 'GH' stays 2 letters."""
        if re.fullmatch(r"[A-Z]{1,5}", text.strip()):
            return self.code(patient, "hospital-abbr", text)
        return self.name(patient, text, language)

    def address(self, patient: str, text: str, language: str) -> str:
        lists = _lists(language)

        def word(match: re.Match[str]) -> str:
            value = match.group()
            low = value.lower()
            if low in KEEP_WORDS or low in {"am", "an", "im", "in", "auf", "unter", "zum", "zur", "st", "ave",
                                            "rd", "street", "road", "lane", "drive"} or len(value) == 1:
                return value
            suffix = STREET_SUFFIX.search(value)
            if suffix and suffix.start() > 0:
                stem = self._pick(patient, "street", low, lists.last, avoid=value[: suffix.start()])
                return _case_like(stem + value[suffix.start():].lower(), value)
            return _case_like(self._pick(patient, "street", low, lists.last, avoid=value), value)

        with_words = WORD.sub(word, text)
        return self._digits(patient, "address-number", with_words, keep_letters=True)

    def code(self, patient: str, kind: str, text: str) -> str:
        """Format-preserving: same length, digits for digits, capitals for capitals, separators kept."""
        return self._digits(patient, kind, text, keep_letters=False)

    def _digits(self, patient: str, kind: str, text: str, *, keep_letters: bool) -> str:
        normalized = re.sub(r"[\W_]", "", text).upper()
        stream = self._digest(patient, kind, normalized) + self._digest(patient, kind + "+", normalized)
        out = []
        for i, ch in enumerate(text):
            byte = stream[i % len(stream)]
            if ch.isdigit():
                if not any(c.isdigit() for c in out):
                    # the first digit: a leading 0 (German area codes) stays 0, others never become 0
                    out.append("0" if ch == "0" else str(1 + byte % 9))
                else:
                    out.append(str(byte % 10))
            elif ch.isalpha() and not keep_letters:
                letter = chr(ord("A") + byte % 26)
                out.append(letter if ch.isupper() else letter.lower())
            else:
                out.append(ch)
        result = "".join(out)
        if result == text and any(c.isdigit() for c in text):  # astronomically rare, but never pass through
            result = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), text)
        return result

    def email(self, patient: str, text: str, language: str) -> str:
        lists = _lists(language)
        low = text.lower()
        first = self._pick(patient, "email-first", low, lists.male + lists.female).lower()
        last = self._pick(patient, "email-last", low, lists.last).lower()
        return f"{first}.{last}@example.{'de' if language == 'de' else 'org'}"

    def url(self, patient: str, text: str) -> str:
        return "https://www.example.org/" + self._digest(patient, "url", text.lower()).hex()[:8]

    @staticmethod
    def age(text: str) -> str:
        """HIPAA Safe Harbor: every age over 89 is reported as 90."""
        return re.sub(r"\d+", "90", text, count=1)

    def date(self, patient: str, text: str, language: str, reference: dt.date | None = None) -> tuple[str, bool]:
        result = shift_date(text, self.date_offset_days(patient), language, reference=reference)
        return result.text, result.parsed

    # --- dispatch -------------------------------------------------------------------------------

    def replace(self, patient: str, label: PhiType, text: str, language: str,
                reference: dt.date | None = None) -> tuple[str, bool]:
        """The surrogate for one span and whether it is a real surrogate (False = placeholder)."""
        placeholders = PLACEHOLDERS.get(language, PLACEHOLDERS["en"])
        if label is PhiType.NAME:
            return self.name(patient, text, language), True
        if label is PhiType.DATE:
            return self.date(patient, text, language, reference)
        if label is PhiType.AGE:
            return (self.age(text), True) if re.search(r"\d", text) else (placeholders[PhiType.OTHER], False)
        if label in (PhiType.ID, PhiType.PHONE):
            return self.code(patient, label.value, text), True
        if label is PhiType.EMAIL:
            return self.email(patient, text, language), True
        if label is PhiType.URL:
            return self.url(patient, text), True
        if label is PhiType.LOCATION:
            return self.place(patient, text, language), True
        if label is PhiType.HOSPITAL:
            return self.hospital(patient, text, language), True
        if label is PhiType.ADDRESS:
            return self.address(patient, text, language), True
        return placeholders.get(label, placeholders[PhiType.OTHER]), False
