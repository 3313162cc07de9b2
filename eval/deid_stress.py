"""Surrogate re-injection: stress variants of an annotated set, to measure what the detector has not seen.

A de-identifier tuned on a development set learns its names, its places and its phone formats. To
see how it does on notes nobody has read, without new annotations, every gold span of the set is
replaced by a fresh random value of the same type and the gold offsets are moved with it:

- names and places come from Faker locales and word lists that no detector rule or gazetteer
  uses (the pools are filtered against everything the detector knows: ``known_words``); one
  surname in ten is drawn from surnames that are also English words ("Hill", "Baker"), the
  hardest kind in held-out notes;
- half of the values keep the original's case, the other half get UPPER, lower or Title at random;
  one in twelve gets a typo (a swapped, dropped or doubled letter);
- dates, phones and IDs come in the formats the corpus shows and in a few it does not (ISO dates,
  day-month with a month name, phones split by spaces, slashes or dots, with extensions);
- spans the project does not count (titles, ages up to 89) stay as they are;
- a value a note repeats gets one surrogate for all its mentions (names word by word, other types by
  the whole string, ignoring case), as in a real note, where "transfer to Quartermain 2" and a later
  "Quartermain 2" are the same ward; case and typos are still drawn per mention (``consistent=False``
  draws every mention anew, as the generator did before round 14 of docs/results.md);
- a new English hospital's "Hospital" follows its gold span as plain text, since the corpus never
  annotates it ("UNION [HOSPITAL]", "Memorial [Hospital]").

Several seeded variants per note (``variants``) average out the draw. The pools and the seed are
recorded (``pool_summary``) so two runs can be compared.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import string
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from eval.deid_gold import GoldDoc, GoldSpan
from eval.invented_words import invented_words
from finetune.date_formats import MONTHS_DE, MONTHS_EN
from finetune.phi_gazetteers import NAME_LOCALES, faker_provider, load_gazetteers
from finetune.phi_text import LETTER
from finetune.phi_types import PhiType
from finetune.phi_vocabulary import load_vocabulary
from finetune.pseudonymize import guess_language

#: Person locales whose names the detector's gazetteers never read (Latin script only).
STRESS_NAME_LOCALES: tuple[str, ...] = (
    "az_AZ", "de_LI", "de_LU", "en_IN", "en_KE", "en_NG", "en_NZ", "en_PK", "en_TH", "es_AR", "es_CL",
    "es_CO", "es_MX", "et_EE", "fi_FI", "fil_PH", "ga_IE", "id_ID", "lt_LT", "lv_LV", "nl_BE", "no_NO",
    "pt_BR", "ro_RO", "sk_SK", "sl_SI", "sq_AL", "sw", "tw_GH", "uz_UZ", "vi_VN", "yo_NG", "zu_ZA",
)
#: Address locales whose city and street lists the detector never read.
STRESS_PLACE_LOCALES: tuple[str, ...] = (
    "cs_CZ", "da_DK", "fi_FI", "hr_HR", "id_ID", "it_IT", "nl_BE", "nl_NL", "pl_PL", "pt_PT", "ro_RO",
    "sk_SK", "sl_SI", "sv_SE", "en_IN",
)
CASE_KEEP = 0.5
TYPO_RATE = 1 / 12
HARD_SURNAME_RATE = 0.1
_NAME_WORD = re.compile(rf"^[{LETTER}]{{3,}}$")
HOSPITAL_WORDS = {"hospital", "hosp", "memorial", "regional", "medical", "center", "centre", "general", "rehab",
                  "clinic", "va", "house", "manor", "home", "nursing", "st", "saint", "holy", "sacred", "heart",
                  "klinik", "klinikum", "krankenhaus", "spital", "praxis", "universitätsklinikum", "mvz"}
#: English hospital names that carry no facility noun of their own, for where the note has one after
#: the name ("Memorial [Hospital]" -> "Teor Regional Hospital", not "Teor Clinic Hospital").
HOSPITAL_NAME_FORMS_EN = ("{p} Memorial", "{p} Regional", "St. {f}", "St {f}", "Holy {f}")
HOSPITAL_FORMS_EN = ("{p} Memorial", "{p} Hospital", "{p} Regional", "{p} General Hospital", "{p} Medical Center",
                     "{p} Rehab", "{p} Clinic", "{p} Memorial Hospital", "{p} Nursing Home", "St. {f}", "St {f}",
                     "Holy {f}", "{p} Manor")
#: The facility noun the physionet scheme leaves outside a hospital's gold span ("UNION [HOSPITAL]",
#: "Memorial [Hospital]", "sacred heart [hosp]"): a new English hospital's is written after its span.
#: (The dev gold never holds "Hospital"; it shows no clinic, nursing home or medical center, so those stay in.)
FACILITY_TAIL_EN = "hospital"
_FACILITY_AFTER = re.compile(r"(?i)^[ \t]*(?:hospital|hosp|rehab|house|home|clinic|center|centre|va|campus|nursing|"
                             r"medical)\b")
#: Bumped when a change to the generator moves the figures (recorded with every run's pools).
GENERATOR_VERSION = 14
HOSPITAL_FORMS_DE = ("Klinikum {p}", "{p}-Klinik", "Krankenhaus {p}", "St.-{f}-Hospital", "Universitätsklinikum {p}",
                     "Kreiskrankenhaus {p}", "Praxis Dr. {l}", "MVZ {p}", "Helios Klinikum {p}")


@dataclass(frozen=True)
class StressPools:
    """Values the stress variants draw from; every list is sorted so a seed gives the same draw."""

    first: tuple[str, ...]
    last: tuple[str, ...]
    hard_last: tuple[str, ...]  # surnames that are English words: the detector knows them as words
    places: tuple[str, ...]
    streets: tuple[str, ...]

    def summary(self) -> dict[str, object]:
        digest = hashlib.sha256("\n".join(self.first + self.last + self.hard_last + self.places
                                          + self.streets).encode("utf-8")).hexdigest()[:12]
        return {"generator": GENERATOR_VERSION, "first_names": len(self.first), "last_names": len(self.last),
                "hard_last_names": len(self.hard_last), "places": len(self.places), "streets": len(self.streets),
                "sha256_12": digest,
                "name_locales": list(STRESS_NAME_LOCALES), "place_locales": list(STRESS_PLACE_LOCALES)}


class _Known:
    """Every word the detector could know by heart: its name and place lists, its vocabularies and
    the allow-list layer's safe words (in any inflection it reads)."""

    def __init__(self) -> None:
        gaz = load_gazetteers()
        self.words = frozenset(gaz.first_male | gaz.first_female | gaz.last_names | gaz.first_extra | gaz.cities
                               | gaz.states | gaz.common | gaz.allow_terms | gaz.english_all)
        self.vocabularies = [load_vocabulary(lang) for lang in ("en", "de")]

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and (word in self.words or any(
            word in v.names or v.is_safe(word) for v in self.vocabularies))


def known_words() -> _Known:
    return _Known()


def _usable(values: Iterable[object], known: _Known) -> set[str]:
    out: set[str] = set()
    if isinstance(values, dict):  # some locales weight their names: {name: frequency}
        values = list(values)
    if not isinstance(values, (list, tuple, set, frozenset)):
        return out  # a property or generator on the class, not a list
    for value in values:
        if not isinstance(value, str):
            continue
        for word in value.replace("-", " ").split():
            if _NAME_WORD.match(word) and word.lower() not in known and word[0].isupper() \
                    and len(word.lower()) == len(word) == len(word.upper()):  # "İ".lower() grows a dot
                out.add(word)
    return out


@lru_cache(maxsize=1)
def build_pools() -> StressPools:
    known = known_words()
    first: set[str] = set()
    last: set[str] = set()
    for locale in STRESS_NAME_LOCALES:
        person = faker_provider("person", locale)
        if person is None or locale in NAME_LOCALES:
            continue
        for attr in ("first_names", "first_names_male", "first_names_female"):
            first |= _usable(getattr(person, attr, ()) or (), known)
        last |= _usable(getattr(person, "last_names", ()) or (), known)
    gaz = load_gazetteers()
    hard = sorted(n.capitalize() for n in gaz.last_names if n in gaz.english_all and n.isalpha() and len(n) >= 4
                  and n in gaz.frequent_english)
    places: set[str] = set()
    streets: set[str] = set()
    for locale in STRESS_PLACE_LOCALES:
        address = faker_provider("address", locale)
        if address is None:
            continue
        for attr in ("cities", "city_names", "towns"):
            for city in getattr(address, attr, ()) or ():
                if isinstance(city, str) and all(_NAME_WORD.match(w) and w.lower() not in known
                                                 for w in city.replace("-", " ").split()):
                    places.add(city)
        for attr in ("streets", "street_names"):
            streets |= _usable(getattr(address, attr, ()) or (), known)
    if not (first and last and places):
        raise RuntimeError("the stress pools are empty: is Faker installed?")
    return StressPools(tuple(sorted(first)), tuple(sorted(last)), tuple(hard), tuple(sorted(places)),
                       tuple(sorted(streets or last)))


# --------------------------------------------------------------------------------------------
# Values per type
# --------------------------------------------------------------------------------------------


def _case_style(text: str) -> str:
    letters = [c for c in text if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return "upper"
    if letters and all(c.islower() for c in letters):
        return "lower"
    return "title"


def _apply_case(value: str, style: str) -> str:
    if style == "upper":
        return value.upper()
    if style == "lower":
        return value.lower()
    return value


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


_T = TypeVar("_T", str, list[str])


class _Draw:
    """One note variant's random choices."""

    def __init__(self, pools: StressPools, rng: random.Random, language: str, *, consistent: bool = False) -> None:
        self.pools, self.rng, self.language = pools, rng, language
        self.consistent = consistent
        self._chosen: dict[tuple[str, str], str | list[str]] = {}

    def once(self, kind: str, original: str, make: Callable[[], _T]) -> _T:
        """The value this note variant gave ``original`` before (``consistent``), else a new one."""
        if not self.consistent:
            return make()
        key = (kind, re.sub(r"[\W_]+", " ", original).strip().casefold())
        if key not in self._chosen:
            self._chosen[key] = make()
        value = self._chosen[key]
        return list(value) if isinstance(value, list) else value  # type: ignore[return-value]

    def style(self, original: str) -> str:
        if self.rng.random() < CASE_KEEP:
            return _case_style(original)
        return self.rng.choice(("upper", "lower", "title"))

    def finish(self, words: list[str], original: str) -> list[str]:
        style = self.style(original)
        if self.rng.random() < TYPO_RATE:
            k = self.rng.randrange(len(words))
            words[k] = _typo(words[k], self.rng)
        return [_apply_case(w, style) for w in words]

    def surname(self) -> str:
        if self.pools.hard_last and self.rng.random() < HARD_SURNAME_RATE:
            return self.rng.choice(self.pools.hard_last)
        return self.rng.choice(self.pools.last)

    def name(self, originals: Sequence[str]) -> list[str]:
        gaz = load_gazetteers()
        words = []
        for k, original in enumerate(originals):
            core = original.strip(" .,;:()'’")
            if len(core) <= 2 and core.isalpha():  # an initial
                letter = self.once("initial", core, lambda: self.rng.choice(string.ascii_uppercase))
                words.append(letter + ("." if original.strip().endswith(".") else ""))
            elif len(originals) > 1 and k < len(originals) - 1 or (len(originals) == 1 and gaz.is_first(core)):
                words.append(self.once("name", core, lambda: self.rng.choice(self.pools.first)))
            else:
                words.append(self.once("name", core, self.surname))
        return self.finish(words, " ".join(originals))

    def place(self, originals: Sequence[str]) -> list[str]:
        name, tail = self.place_parts(originals)
        return name + tail

    def place_parts(self, originals: Sequence[str], *, before_facility: bool = False) -> tuple[list[str], list[str]]:
        """A new place as (its name, a generic facility noun after it: "Hospital" or nothing);
        ``before_facility``: the note has one after it already, so the new name brings none."""
        joined = " ".join(originals)
        words = self.once("bare place" if before_facility else "place", joined,
                          lambda: self._place_words(joined, before_facility))
        cut = len(words)
        if self.language == "en" and len(words) > 1 and words[-1].lower() == FACILITY_TAIL_EN:
            cut -= 1
        words = self.finish(words, joined)  # a typo changes letters, never the number of words
        return words[:cut], words[cut:]

    def _place_words(self, joined: str, before_facility: bool = False) -> list[str]:
        low_words = {w.lower().strip(".") for w in re.split(r"[\s\-]+", joined)}
        if re.fullmatch(r"[A-Z]{2,5}", joined.strip()):  # "GH", "GBMC": a hospital's initials
            letters = "".join(self.rng.choice(string.ascii_uppercase) for _ in range(self.rng.randint(1, 3)))
            return [letters + self.rng.choice(("H", "MC", "H", "RH"))]
        if low_words & HOSPITAL_WORDS:
            return self.hospital(bare=before_facility).split()
        return self.rng.choice(self.pools.places).split()

    def hospital(self, bare: bool = False) -> str:
        """A hospital name; ``bare``: an English one without a facility noun of its own."""
        forms = HOSPITAL_FORMS_DE if self.language == "de" else HOSPITAL_NAME_FORMS_EN if bare else HOSPITAL_FORMS_EN
        return self.rng.choice(forms).format(p=self.rng.choice(self.pools.places), f=self.rng.choice(self.pools.first),
                                             l=self.surname())

    def date(self, original: str) -> str:
        rng = self.rng
        y, m, d = rng.randint(1950, 2035), rng.randint(1, 12), rng.randint(1, 28)
        stripped = original.strip()
        if re.fullmatch(r"'?\d{2}", stripped):
            return f"{y % 100:02d}"
        if re.fullmatch(r"\d{4}", stripped):
            # a bare year keeps its class: 1960-1999 cannot be a clock time, 2000-2059 can ("at 2015")
            low, high = (2000, 2059) if 2000 <= int(stripped) <= 2059 else (1960, 1999)
            return str(rng.randint(low, high))
        months = MONTHS_DE if self.language == "de" else MONTHS_EN
        month, mon = months[m - 1].capitalize(), months[m - 1][:3].capitalize()
        ordinal = f"{d}{'th' if 10 <= d % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d % 10, 'th')}"
        if re.fullmatch(r"\d{1,2}", stripped):  # a day alone ("vom 26. bis 30. Juli")
            return f"{d:0{len(stripped)}d}"
        if rng.random() < 0.5:  # the original's shape with new numbers
            numeric = re.fullmatch(r"(\d{1,2})([/.\-])(\d{1,2})(?:([/.\-])(\d{2,4}))?(\.?)", stripped)
            if numeric and self.language == "de" and numeric.group(2) == "/" and not numeric.group(5):
                return f"{m:0{len(numeric.group(1))}d}/{y % 100:02d}"  # German "03/19" is month/year
            if numeric:
                a, sep, _, sep2, year, dot = numeric.groups()
                first, second = (d, m) if self.language == "de" else (m, d)
                width = len(a)
                out = f"{first:0{width}d}{sep}{second:0{width}d}"
                if year:
                    out += f"{sep2}{y if len(year) == 4 else f'{y % 100:02d}'}"
                return out + dot
            if re.fullmatch(r"\d{1,2}(st|nd|rd|th)", stripped, re.IGNORECASE):
                return ordinal
            if stripped.isalpha():  # a month name alone
                return _apply_case(month if len(stripped) > 3 else mon, _case_style(stripped))
        if self.language == "de":
            forms = [f"{d:02d}.{m:02d}.{y}", f"{d}.{m}.{y % 100:02d}", f"{d:02d}.{m:02d}.", f"{d}. {month} {y}",
                     f"{month} {y}", f"{m:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d}.{m}.", f"{d:02d}.{m:02d}.{y % 100:02d}",
                     f"{d}. {mon}. {y}"]
        else:
            forms = [f"{m}/{d}", f"{m}/{d}/{y % 100:02d}", f"{m}/{d}/{y}", f"{m:02d}-{d:02d}-{y}", f"{y}-{m:02d}-{d:02d}",
                     f"{mon} {d}", f"{month} {d}", f"{month} {d}, {y}", f"{d} {mon} {y}", f"{d}-{mon}-{y % 100:02d}",
                     f"{month} {ordinal}", f"{mon}. {d}", f"{m}.{d}.{y % 100:02d}", f"{mon} {d} {y}"]
        return rng.choice(forms)

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    def phone(self, original: str) -> str:
        rng, dg = self.rng, self.digits
        if re.fullmatch(r"\d{4,5}", original.strip()) and rng.random() < 0.5:
            return dg(len(original.strip()))  # a pager or extension, as written
        if self.language == "de":
            area, num = "0" + dg(rng.randint(2, 4)), dg(rng.randint(5, 8))
            forms = [f"{area} {num}", f"{area}/{num}", f"{area}-{num[:3]}-{num[3:]}", f"+49 {area[1:]} {num}",
                     f"+49 (0){area[1:]} {num}", f"{area} {num[:3]} {num[3:5]} {num[5:]}".strip(), f"{area}/{num[:3]}-{num[3:]}",
                     f"{area} {num}-{dg(2)}"]
        else:
            a, e, n, x = dg(3), dg(3), dg(4), dg(rng.randint(2, 5))
            forms = [f"({a}) {e}-{n}", f"{a}-{e}-{n}", f"{a} {e} {n}", f"{a}/{e}-{n}", f"{a}.{e}.{n}", f"{e}-{n}",
                     f"{e} {n}", f"{a}-{e}-{n} x{x}", f"{a}-{e}-{n} ext {x}", f"{e}-{n} ext. {x}", f"+1 {a} {e} {n}",
                     dg(5), f"{a}{e}{n}", f"({a}){e}-{n}", f"{a} {e}-{n}"]
        return rng.choice(forms)

    def same_shape(self, original: str, keep_letters: bool = False) -> str:
        out = []
        for c in original:
            if c.isdigit():
                out.append(self.rng.choice(string.digits))
            elif c.isalpha() and c.isascii() and not keep_letters:
                letter = self.rng.choice(string.ascii_letters)
                out.append(letter.upper() if c.isupper() else letter.lower())
            else:
                out.append(c)
        return "".join(out)

    def address(self, original: str) -> str:
        stripped = original.strip()
        if re.fullmatch(r"[A-Z]{0,2}-?\d{4,5}", stripped):
            return self.same_shape(stripped, keep_letters=True)  # "A-9020": the country prefix stays
        street = self.rng.choice(self.pools.streets)
        number = str(self.rng.randint(1, 199))
        if self.language == "de":
            return self.rng.choice((f"{street}straße {number}", f"{street}weg {number}", f"{street}-Allee {number}",
                                    f"{street}gasse {number}", f"{street}str. {number}", f"{street}platz {number}"))
        return self.rng.choice((f"{number} {street} Street", f"{number} {street} Ave", f"{number} {street} Road"))


# --------------------------------------------------------------------------------------------
# Variants of annotated documents
# --------------------------------------------------------------------------------------------


def _entities(gold: list, text: str) -> list[list]:
    """Adjacent gold spans of one type ('Sacred' 'Heart' 'Memorial') form one entity."""
    groups: list[list] = []
    for span in sorted(gold, key=lambda g: g.start):
        if groups and span.kind is not None and groups[-1][-1].kind is span.kind:
            gap = text[groups[-1][-1].end: span.start]
            if len(gap) <= 3 and re.fullmatch(r"[ \t]*[,.]?[ \t]*", gap):  # not across "-" of a range
                groups[-1].append(span)
                continue
        groups.append([span])
    return groups


def _edges(value: str) -> tuple[str, str, str]:
    """Leading and trailing punctuation or space of a gold string ('ROSSETTI. ' -> '', 'ROSSETTI', '. ')."""
    m = re.match(r"^([^\w]*)(.*?)([^\w]*)$", value, re.DOTALL)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", value, "")


def _new_values(draw: _Draw, kind: PhiType, originals: list[str], after: str = "") -> tuple[list[str], str]:
    """One new string per original span of an entity (the last ones may be empty when it shrinks), and
    unannotated text to write after the entity (a hospital's facility noun; ``after`` is the text
    that follows the entity, which may hold one already)."""
    cores = [_edges(o)[1] for o in originals]
    joined = " ".join(cores)
    tail: list[str] = []
    if kind is PhiType.NAME:
        words = draw.name([w for c in cores for w in c.split()] if len(cores) == 1 else cores)
    elif kind is PhiType.LOCATION or (kind is PhiType.HOSPITAL and draw.language == "en"):
        words, tail = draw.place_parts(cores, before_facility=bool(_FACILITY_AFTER.match(after)))
    elif kind is PhiType.HOSPITAL:
        words = draw.finish(draw.once("hospital", joined, lambda: draw.hospital().split()), joined)
    elif kind is PhiType.DATE:
        words = draw.once("date", joined, lambda: draw.date(joined)).split(" ")
    elif kind is PhiType.PHONE:
        words = [draw.once("phone", joined, lambda: draw.phone(joined))]
    elif kind is PhiType.AGE:
        words = [re.sub(r"\d+", str(draw.rng.randint(90, 104)), joined, count=1)]
    elif kind is PhiType.ADDRESS:
        words = [draw.once("address", joined, lambda: draw.address(joined))]
    elif kind is PhiType.EMAIL:
        words = [f"{draw.rng.choice(draw.pools.first).lower()}.{draw.surname().lower()}@example.org"]
    elif kind is PhiType.URL:
        words = [f"www.{draw.surname().lower()}-praxis.example"]
    elif kind is PhiType.ORGANIZATION:
        words = [draw.surname(), draw.rng.choice(("GmbH", "AG", "Inc.", "Corp.", "& Sons"))]
    else:  # ID, PROFESSION, OTHER: the same shape, new characters
        words = [draw.once(kind.value, joined, lambda: draw.same_shape(joined))]
    after_text = " " + " ".join(tail) if tail else ""
    if len(cores) == 1:
        return [" ".join(words)], after_text
    if len(words) >= len(cores):  # word-level gold (physionet): one span per word, extra words join the last
        return words[:len(cores) - 1] + [" ".join(words[len(cores) - 1:])], after_text
    return words + [""] * (len(cores) - len(words)), after_text


def stress_document(gd, draw: _Draw):
    """A copy of one annotated document with every counted gold span replaced and offsets moved.

    Spans the project does not count (titles, young ages) keep their words; only their offsets move.
    """

    text = gd.document.text
    pieces: list[str] = []
    spans: list[GoldSpan] = []
    cursor = length = 0
    for entity in _entities(gd.gold, text):
        originals = [text[g.start:g.end] for g in entity]
        values, tail = (originals, "") if entity[0].kind is None else \
            _new_values(draw, entity[0].kind, originals, text[entity[-1].end:entity[-1].end + 20])
        last = max((k for k, value in enumerate(values) if value), default=-1)
        for k, (g, original, value) in enumerate(zip(entity, originals, values)):
            if g.start < cursor:  # overlapping gold spans: keep the first
                continue
            gap = text[cursor:g.start]
            if k > 0 and value and entity[0].kind not in (None, PhiType.NAME):
                # a new date or place is one string cut at its spaces: its own punctuation, not the old
                # joints ("Jan. 5" -> "Mar. 8", not "Mar.. 8"; "St. Elizabeth" -> "Holy Nuhu", not "Holy.
                # Nuhu"); a name is drawn word by word, so "Smith, John" keeps its comma, and where the
                # new value is shorter the old joint stays ("Hauptstr. 8, 47809" -> "Allee 103, ")
                gap = " "
            pieces.append(gap)
            length += len(gap)
            cursor = g.end
            if not value:  # the entity came out shorter: this span's words are gone
                continue
            lead, _, trail = _edges(original) if g.kind is not None else ("", "", "")
            if k < last and entity[0].kind not in (None, PhiType.NAME):
                trail = ""  # an old joint inside a place or date: "St. Agnes" -> "Teor Memorial", not "Teor. Memorial"
            if value.endswith(".") and (trail or text[g.end:g.end + 1]).startswith("."):
                value = value[:-1]  # "seen Mar." where "seen Jan." stood: one period
            start = length + len(lead)
            pieces.append(lead + value + (tail if k == last else "") + trail)
            length += len(pieces[-1])
            spans.append(GoldSpan(start, start + len(value), g.label, g.kind))
    pieces.append(text[cursor:])
    return GoldDoc(replace(gd.document, text="".join(pieces)), spans)


def stress_variants(docs: Sequence, variants: int = 3, seed: int = 0, pools: StressPools | None = None, *,
                    consistent: bool = True) -> list:
    """``variants`` stressed copies of every document (doc ids get ``~s<k>``), seeded per document;
    ``consistent``: one surrogate per repeated value of a note (module docstring)."""
    pools = pools or build_pools()
    out = []
    for k in range(variants):
        for gd in docs:
            rng = random.Random(f"{seed}:{k}:{gd.document.doc_id}")
            language = gd.document.language or guess_language(gd.document.text)
            stressed = stress_document(gd, _Draw(pools, rng, language, consistent=consistent))
            stressed.document = replace(stressed.document, doc_id=f"{gd.document.doc_id}~s{k}")
            out.append(stressed)
    return out


@lru_cache(maxsize=4)
def training_pools(invented_share: float = 0.0) -> StressPools:
    """Values to train a learned layer with (``finetune.phi_tagger``): the detector's own gazetteer
    names and cities, so no value the stress variants draw (``build_pools`` excludes everything the
    detector knows) is ever seen in training; no English-word surnames (the stress test's hard case).

    ``invented_share`` > 0 adds invented words (``eval.invented_words``) so that this share of each
    list is words that exist nowhere; they are drawn to exclude every known word and every stress
    value, so the separation holds for them too."""
    if not 0.0 <= invented_share < 1.0:
        raise ValueError(f"invented_share must be within [0, 1), got {invented_share}")
    gaz = load_gazetteers()
    first = sorted({n.capitalize() for n in gaz.first_male | gaz.first_female if n.isalpha() and len(n) >= 3})
    last = sorted({n.capitalize() for n in gaz.last_names if n.isalpha() and len(n) >= 3})
    places = sorted({c.title() for c in gaz.cities if re.fullmatch(r"[a-zäöüß ]{4,}", c)})
    if invented_share:
        known, stress = known_words(), build_pools()
        taken = set(stress.first + stress.last + stress.hard_last + stress.places + stress.streets)

        def excluded(word: str) -> bool:
            return word in taken or word.lower() in known

        def more(values: list[str], kind: str) -> list[str]:
            n = round(len(values) * invented_share / (1.0 - invented_share))
            # seeded by the list's size: first and last names get different words, reruns the same
            return sorted(values + invented_words(n, kind, seed=len(values), excluded=excluded))

        first, last, places = more(first, "name"), more(last, "name"), more(places, "place")
    return StressPools(tuple(first), tuple(last), (), tuple(places), tuple(last))


def write_training_set(docs: Sequence[GoldDoc], out: Path, variants: int, seed: int,
                       copies_only: bool = False, invented_share: float = 0.0) -> int:
    """The documents and ``variants`` re-injected copies each (training pools) as annotated JSONL
    with our own labels; returns the number of rows. ``copies_only`` leaves the documents out: a
    synthetic set's own values (presidio's come from Faker) could meet the stress pools."""
    rows = ([] if copies_only else list(docs)) + stress_variants(docs, variants, seed, training_pools(invented_share))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for gd in rows:
            phi = [{"start": g.start, "end": g.end, "label": g.kind.value} for g in gd.gold if g.kind is not None]
            handle.write(json.dumps({"doc_id": gd.document.doc_id, "patient_id": gd.document.patient_id,
                                     "text": gd.document.text, "language": gd.document.language,
                                     "phi": phi}, ensure_ascii=False) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """Write a training set for ``finetune.phi_tagger`` (the dev part only: the unread part stays unread)."""
    from eval.deid import select_part
    from eval.deid_gold import load_gold
    from rag.corpus import CorpusError

    parser = argparse.ArgumentParser(prog="python -m eval.deid_stress", description=main.__doc__)
    parser.add_argument("--data", action="append", required=True, type=Path, help="annotated set; repeatable")
    parser.add_argument("--out", required=True, type=Path, help="annotated JSONL to write")
    parser.add_argument("--variants", type=int, default=6, help="re-injected copies per document")
    parser.add_argument("--seed", type=int, default=1001)
    parser.add_argument("--copies-only", action="store_true",
                        help="write only the re-injected copies, not the documents themselves")
    parser.add_argument("--invented-share", type=float, default=0.0,
                        help="share of names and places that are invented words (eval.invented_words), 0 = none")
    args = parser.parse_args(argv)
    if not 0.0 <= args.invented_share < 1.0:
        parser.error(f"--invented-share must be within [0, 1), got {args.invented_share}")
    try:
        docs = [gd for path in args.data for gd in select_part(load_gold(path), "dev")]
    except (CorpusError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = write_training_set(docs, args.out, args.variants, args.seed, args.copies_only, args.invented_share)
    what = (f"{args.variants} re-injected copies of each of {len(docs)} dev documents" if args.copies_only
            else f"{len(docs)} dev documents + {args.variants} variants each")
    print(f"{rows} annotated documents ({what}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
