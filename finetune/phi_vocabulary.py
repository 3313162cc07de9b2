"""The allow-list layer's word lists: which words are safe, which are names, which look misspelt.

Rules that need a name to be in a gazetteer miss every name nobody listed. Philter (UCSF) turned
the question around: a word that is not on a list of known safe words is suspect. This module
builds that list once per process from packages, never from annotated PHI:

- **safe words**: Philter's own whitelist of non-names (``philter-lite``, BSD-3), the lower-case
  entries of two English dictionaries (Webster's 2nd and GCIDE from ``english-words``), German
  word forms (``wordfreq``), the project's stop words and clinical words, and clinical shorthand
  collected from non-PHI text (``resources/clinical_vocabulary.<lang>.txt``,
  ``finetune.build_vocabulary``) plus a curated list of supplies, tube feeds and shorthand that
  corpora write capitalised (``resources/clinical_supplies.en.txt``);
- **name words**: first and last names of Faker's locales, the 1990 US census lists (``names``)
  and Philter's name lists. A name word counts as safe only where it is also clinical shorthand,
  an ordinary lower-case dictionary word used often enough ("hill", "baker", "rose"), or on the
  project's lists; context rules decide those;
- **misspellings**: a word one edit away from a safe word of five or more letters ("secreations",
  "hydralizine") is a typo, not a name, unless it is a name word itself.
"""
from __future__ import annotations

import importlib.util
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from finetune.phi_gazetteers import RESOURCES, load_gazetteers, read_list

#: An English dictionary word that is also a name stays safe only when it is at least this common
#: (wordfreq's Zipf scale: 3 = once per million words): "hill", "baker", "doze", but not "snell".
NAME_WORD_MIN_ZIPF = 2.5
#: Census surnames up to this rank (about two thirds of the population) count as common names, which
#: outweigh "looks like shorthand or a typo"; rarer ones ("neice", "ballon") are as often typos.
COMMON_SURNAME_RANK = 5000
#: Typos are of words the writer uses: clinical words, drugs, and English words this common. Rare words
#: make bad targets: a third of unseen foreign names lie one edit from some rare word ("Kabiru" ~ "jabiru").
TYPO_MIN_ZIPF = 3.5
#: The parts of run-together words ("fromsuture") must be at least this common (or clinical).
RUN_TOGETHER_MIN_ZIPF = 3.5
#: Stems of inflected words ("secretions" -> "secretion") must be at least this common or clinical; the
#: dictionaries and Philter's list hold fragments ("thisn") that would make "Thisnes" a plural.
STEM_MIN_ZIPF = 2.5
#: Letters a writer of the language does not type by mistake: a word with one is a foreign name, not a typo.
FOREIGN_LETTER = {"en": re.compile(r"[^\x00-\x7f]"), "de": re.compile(r"[^\x00-\x7fäöüß]")}
#: Misspelling check: only against safe words of this length or more (short words are too close to names).
TYPO_MIN_LENGTH = 5
#: German word forms from wordfreq down to this Zipf frequency (lower is mostly names and typos).
GERMAN_MIN_ZIPF = 1.0
#: Long words may be misspelt twice ("reaacumulation"): checked by edit distance against safe words this long.
LONG_TYPO_LENGTH = 8
#: Two-letter words that may stand on either side of a run-together pair ("decreasedin", "inupper").
SHORT_WORDS = frozenset({"in", "to", "on", "at", "of", "up", "is", "it", "an", "no", "as", "by", "or", "so", "am", "pm",
                         "iv", "po", "pt", "be", "we", "he", "me", "my", "do", "go", "if", "a"})
#: Endings of medical terms in English, German and Latin ("Sigmoideostomie", "Cholezystolithiasis",
#: "perihilär", "intraabdominell"): a long word that ends like this is a term, not a name.
MEDICAL_ENDING = re.compile(
    r"(?:itis|itiden|osis|ektomie|ectomy|tomie|otomy|stomie|ostomy|plastik|plasty|skopie|scopy|graphie|grafie|"
    r"graphy|pathie|pathy|ämie|aemia|urie|uria|algie|algia|lyse|lysis|penie|penia|zytose|cytosis|megalie|megaly|"
    r"plegie|plegia|trophie|trophy|karzinose|sklerose|sclerosis|lithiasis|stase|stasis|ektasie|ectasia|elektase|"
    r"elektasen|dynie|rrhoe|rrhea|rrhagie|pexie|zele|thrombose|nekrose|fibrose|stenose|ose[n]?|"
    r"isch|ische|ischer|ischen|isches|är|äre|ären|ärer|ärem|ös|öse|ösen|öser|ösem|ieren|iert|ierte|ierten|"
    r"ung|ungen|ismus|mycin|cillin|prazol|olol|sartan)$")
#: Inflections stripped before a look-up; German adds its case endings.
_SUFFIXES = {"en": ("'s", "’s", "'d", "’d", "s'", "s", "es", "ed", "d", "ing", "ly", "er", "ers"),
             "de": ("s", "es", "e", "en", "n", "er", "em", "ern", "ens")}


@dataclass(frozen=True)
class Vocabulary:
    language: str
    safe: frozenset[str]
    names: frozenset[str]  # every name word of every list, lower case (Philter's lists hold many rare strings)
    #: safe words (>= TYPO_MIN_LENGTH letters; 4-letter ones for insertions) and their one-letter
    #: deletions -> the safe word, so a misspelling can name the word it misspells
    typo_index: dict[str, str]
    #: safe words of >= LONG_TYPO_LENGTH letters by first letter, for the two-edit check of long words
    long_words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: names of the census and Faker lists: common enough to outweigh "looks like shorthand or a typo"
    common_names: frozenset[str] = frozenset()
    #: safe words that are frequent or clinical: the parts of run-together words
    frequent: frozenset[str] = frozenset()
    #: clinical shorthand, drugs and project words
    clinical: frozenset[str] = frozenset()
    #: words an inflection may be stripped down to: clinical and common words only
    stems: frozenset[str] = frozenset()
    #: drug names that the project's clinical word lists do not hold
    drugs: frozenset[str] = frozenset()
    #: unlisted eponyms that non-PHI text puts before a device or disease noun ("Weitlaner retractor"):
    #: ``resources/eponyms_in_use.<lang>.txt``, built by ``finetune.build_vocabulary``
    eponyms: frozenset[str] = frozenset()

    def _forms(self, word: str) -> list[str]:
        low = word.lower().strip(".'’-")
        forms = [low]
        if self.language == "de" and "ß" in low:
            forms.append(low.replace("ß", "ss"))
        for suffix in _SUFFIXES.get(self.language, ()):
            if low.endswith(suffix) and len(low) - len(suffix) >= 4:
                forms.append(low[: -len(suffix)])
        return forms

    def is_safe(self, word: str) -> bool:
        """A known non-PHI word, in any inflection the suffix list covers, or a German compound of them."""
        forms = self._forms(word)
        whole = forms[:2] if self.language == "de" and "ß" in forms[0] else forms[:1]  # "Größe" = "grösse"
        if any(f in self.safe for f in whole) or any(f in self.stems for f in forms[len(whole):]) \
                or (len(forms[0]) >= 8 and MEDICAL_ENDING.search(forms[0])):
            return True
        if self.language != "de":
            return False
        return self._compound(forms[0]) or ("ß" in forms[0] and self._compound(forms[0].replace("ß", "ss")))

    def is_name(self, word: str) -> bool:
        low = re.sub(r"['’]s$", "", word.lower().strip(".'’-"))
        return low in self.names

    def is_frequent(self, word: str) -> bool:
        """Common English or German, or clinical: a word that does not make a neighbour part of a name."""
        return any(f in self.frequent for f in self._forms(word))

    def is_common_name(self, word: str) -> bool:
        low = re.sub(r"['’]s$", "", word.lower().strip(".'’-"))
        return low in self.common_names

    def misspelling_of(self, word: str) -> str | None:
        """The safe word this one misspells: one edit (insertion, deletion, substitution, swap) from a
        word of >= 5 letters, or two from one of >= 8 letters with the same first letter
        ("exterbation", "maintainace"); None when it resembles nothing, or when it has a letter the
        language's keyboard does not ("Støvring", "Imeľ" in an English note: nobody types ø by mistake)."""
        low = word.lower()
        if len(low) < TYPO_MIN_LENGTH or FOREIGN_LETTER[self.language].search(low):
            return None
        for i in range(-1, len(low)):
            variant = low if i < 0 else low[:i] + low[i + 1:]
            target = self.typo_index.get(variant)
            if target is None or target[0] != low[0]:  # people rarely mistype the first letter
                continue
            if len(target) < TYPO_MIN_LENGTH and not (0 < i and low[i] == low[i - 1]):
                continue  # a short word only by a doubled letter ("eyees"), not "mite" -> "Mitei"
            return target
        for i in range(len(low) - 1):
            swapped = low[:i] + low[i + 1] + low[i] + low[i + 2:]
            if low[i] != low[i + 1] and self.typo_index.get(swapped) == swapped:
                return swapped
        if len(low) < LONG_TYPO_LENGTH:
            return None
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import extractOne

        best = extractOne(low, self.long_words.get(low[0], ()), scorer=Levenshtein.distance, score_cutoff=2)
        return best[0] if best else None

    def is_clinical(self, word: str) -> bool:
        """Clinical shorthand, a drug or a project word (not just general English)."""
        return word.lower() in self.clinical

    def is_unknown(self, word: str, *, typos_known: bool = False) -> bool:
        """In no vocabulary, neither clinical nor frequent (and, with ``typos_known``, not a misspelling
        of a known word): what an unseen name looks like to the context rules."""
        if self.is_clinical(word) or self.is_frequent(word):
            return False
        return not (typos_known and self.misspelling_of(word) is not None)

    def is_drug_only(self, word: str) -> bool:
        """On the drug list but not among the words our clinical text uses."""
        return word.lower() in self.drugs

    def is_run_together(self, word: str) -> bool:
        """Two safe words typed without a space: 'fromsuture', 'alsoinvestigating', 'tubefeeds'."""
        low = word.lower()
        for i in range(1, len(low) - 1):
            head, tail = low[:i], low[i:]
            if (head in self.frequent and (len(head) >= 3 or head in SHORT_WORDS)) and \
                    (tail in self.frequent and (len(tail) >= 3 or tail in SHORT_WORDS)):
                return True
        return False

    def _compound(self, low: str) -> bool:
        """German compounds of safe words: 'Thoraxdrainage', 'Wiedervorstellung', 'Nierenzyste'."""
        if len(low) < 8:
            return False
        for i in range(3, len(low) - 3):
            head, tail = low[:i], low[i:]
            if head.rstrip("s") in self.safe or head in self.safe:
                if tail in self.safe or any(f in self.safe for f in self._forms(tail)) or self._compound(tail):
                    return True
        return False


def _philter_sets() -> dict[str, list[str]]:
    spec = importlib.util.find_spec("philter_lite")
    if spec is None or not spec.origin:
        raise RuntimeError("philter-lite is not installed: its word lists feed the allow-list layer "
                           "(pip install 'philter-lite==0.6.0')")
    with open(Path(spec.origin).parent / "filters" / "set.toml", "rb") as f:
        return tomllib.load(f)


def _census_names(max_surname_rank: int | None = None) -> set[str]:
    """First names and surnames of the 1990 US census (``names``); surnames by rank if asked."""
    spec = importlib.util.find_spec("names")
    if spec is None or not spec.origin:
        return set()
    folder = Path(spec.origin).parent
    out: set[str] = set()
    for name in ("dist.all.last", "dist.female.first", "dist.male.first"):
        path = folder / name
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if parts and (max_surname_rank is None or name != "dist.all.last" or int(parts[3]) <= max_surname_rank):
                out.add(parts[0].lower())
    return out


def _dictionary_lower() -> set[str]:
    """Lower-case headwords of Webster's 2nd and GCIDE: ordinary words, not proper nouns."""
    from english_words import get_english_words_set

    return {w for w in get_english_words_set(["web2", "gcide"], lower=False, alpha=True) if w.islower()}


#: Collected words standing in for the committed list, per language (``use_collected_words``).
_COLLECTED_OVERRIDE: dict[str, set[str]] = {}


def use_collected_words(language: str, words: set[str] | None) -> None:
    """Let this process's vocabulary use ``words`` instead of ``clinical_vocabulary.<language>.txt``
    (None: the committed file again). For measurement only: ``eval.deid_holdout`` builds the list
    without some patients to see the false alarms of notes whose words it never saw."""
    if words is None:
        _COLLECTED_OVERRIDE.pop(language, None)
    else:
        _COLLECTED_OVERRIDE[language] = {w.lower() for w in words}
    reload_vocabulary()


def reload_vocabulary() -> None:
    """Forget this process's vocabularies (and the name-shape model trained on them), so the next use
    reads the word lists again: after they were rewritten or overridden."""
    from finetune.phi_name_shape import load_name_shape

    load_vocabulary.cache_clear()
    load_name_shape.cache_clear()


def _clinical(language: str) -> set[str]:
    """The words collected from non-PHI text (``finetune.build_vocabulary``) and the curated supplies list."""
    words: set[str] = set(_COLLECTED_OVERRIDE.get(language, ()))
    files = [f"clinical_supplies.{language}.txt"]
    if language not in _COLLECTED_OVERRIDE:
        files.insert(0, f"clinical_vocabulary.{language}.txt")
    for name in files:
        path = RESOURCES / name
        if path.is_file():
            words |= {w.lower() for line in path.read_text(encoding="utf-8").splitlines()
                      if not line.startswith("#") for w in line.split()}
    return words


def _eponyms_in_use(language: str) -> set[str]:
    """The eponyms non-PHI text puts before a device or disease noun (``finetune.build_vocabulary``)."""
    name = f"eponyms_in_use.{language}.txt"
    return set(read_list(name)) if (RESOURCES / name).is_file() else set()


def _long_words(words: set[str]) -> dict[str, tuple[str, ...]]:
    by_letter: dict[str, list[str]] = {}
    for word in words:
        if len(word) >= LONG_TYPO_LENGTH - 1 and word.isalpha():
            by_letter.setdefault(word[0], []).append(word)
    return {letter: tuple(sorted(ws)) for letter, ws in by_letter.items()}


def _drug_words() -> set[str]:
    """Single words of the ~107,000 drug names and brands of ``drug-named-entity-recognition`` (MIT)."""
    import bz2
    import pickle

    spec = importlib.util.find_spec("drug_named_entity_recognition")
    if spec is None or not spec.origin:
        return set()
    path = Path(spec.origin).parent / "drug_ner_dictionary.pkl.bz2"
    with bz2.open(path) as f:
        variants = pickle.load(f).get("drug_variant_to_canonical", {})  # noqa: S301 (a file of an installed package)
    return {w for name in variants for w in re.findall(r"[a-z]{4,}", name.lower())}


def _typo_index(words: set[str]) -> dict[str, str]:
    """Each safe word and its one-letter deletions -> the word. A 4-letter word enters as itself only,
    so a doubled letter ("eyees") finds it but a dropped one does not turn "Lane" into "lan"."""
    index: dict[str, str] = {}
    for word in sorted(words):
        if not word.isalpha() or len(word) < TYPO_MIN_LENGTH - 1:
            continue
        index.setdefault(word, word)
        if len(word) >= TYPO_MIN_LENGTH:
            for i in range(len(word)):
                index.setdefault(word[:i] + word[i + 1:], word)
    return index


def _zipf_table(language: str) -> dict[str, float]:
    """wordfreq's word -> Zipf frequency (log10 of occurrences per billion words), read once."""
    import math

    from wordfreq import get_frequency_dict

    return {w: math.log10(f * 1e9) for w, f in get_frequency_dict(language, wordlist="large").items() if f > 0}


@lru_cache(maxsize=2)
def load_vocabulary(language: str) -> Vocabulary:
    """Built once per process (a few seconds); every list comes from an installed package or resources/."""
    gaz = load_gazetteers()
    philter = _philter_sets()
    listed = set(gaz.first_male | gaz.first_female | gaz.last_names | gaz.first_extra)
    common_names = listed | _census_names(max_surname_rank=COMMON_SURNAME_RANK)
    names = listed | _census_names() | set(philter.get("firstnames", ())) | set(philter.get("lastnames", ()))
    core = set(gaz.common | gaz.allow_terms) | _clinical(language)
    drugs = _drug_words()
    project = core | drugs
    if language == "de":
        zipf = _zipf_table("de")
        ordinary = {w for w, z in zipf.items() if z >= GERMAN_MIN_ZIPF and w.isalpha()
                    and (w not in names or z >= NAME_WORD_MIN_ZIPF + 1)}
        safe = project | ordinary | _clinical("en")
        common = {w for w in ordinary if zipf[w] >= TYPO_MIN_ZIPF}
    else:
        zipf = _zipf_table("en")
        dictionary = _dictionary_lower()
        general = dictionary | set(philter.get("nonames", ())) | set(gaz.english_words)
        safe = project | {w for w in general if w not in names
                          or (w in dictionary and zipf.get(w, 0.0) >= NAME_WORD_MIN_ZIPF)}
        common = {w for w in safe if zipf.get(w, 0.0) >= TYPO_MIN_ZIPF}
    safe.discard("")
    frequent = project | {w for w in safe if zipf.get(w, 0.0) >= RUN_TOGETHER_MIN_ZIPF} | SHORT_WORDS
    stems = project | {w for w in safe if zipf.get(w, 0.0) >= STEM_MIN_ZIPF}
    # a drug's typo is one edit from a drug name of six or more letters; the rule decides with context,
    # since among ~100,000 drug names many unseen place names have a neighbour ("Malnate" ~ "malonate")
    typo_source = core | common | {d for d in drugs if len(d) >= 6}
    return Vocabulary(language, frozenset(safe), frozenset(names), _typo_index(typo_source), _long_words(core | common),
                      frozenset(common_names), frozenset(frequent), frozenset(project), frozenset(stems),
                      frozenset(drugs - core), frozenset(_eponyms_in_use(language)))
