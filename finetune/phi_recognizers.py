"""The registry of our PHI rules, their Presidio wrapper, the allow-list and overlap resolution.

Each rule is a small function ``rule(view) -> Iterable[PhiSpan]`` over a :class:`TextView` (the
text, its tokens, its case style, its language; ``finetune.phi_text``). The rules live by what they
find: ``phi_name_rules``, ``phi_place_rules``, ``phi_number_rules``. :class:`RuleRecognizer` wraps a
rule as a Presidio ``EntityRecognizer`` so Presidio stays the framework (registry, languages, NER
artifacts, predefined e-mail/URL/IBAN recognizers) while our rules do most of the work.

Evidence comes in two strengths. *Strong* spans have a trigger or an unambiguous pattern ("Dr.
Marder", "MRN 1234567", "03/14/2021"); *weak* spans come from gazetteers, NER or repetition. The
allow-list of eponyms and abbreviations only vetoes weak evidence: "Parkinson" stays a disease,
"Dr. Parkinson" stays a person.

Case matters: ICU nursing notes are often all upper or all lower case, where capitalisation says
nothing, so rules that rely on it switch to stricter gazetteer/trigger evidence (``TextView.case``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from presidio_analyzer import EntityRecognizer, RecognizerResult

from finetune.date_formats import MONTHS_EN
from finetune.phi_gazetteers import Gazetteers, load_gazetteers
from finetune.phi_name_rules import (
    birth_names,
    credential_names,
    family_names,
    first_name_verbs,
    gazetteer_names,
    initial_names,
    ner_entities,
    parenthesised_relation_names,
    patient_names,
    possessive_homes,
    relation_capitalised,
    relation_names,
    role_apposition_names,
    title_names,
    titled_words,
)
from finetune.phi_number_rules import ages, dates, identifiers, phones, urls
from finetune.phi_place_rules import (
    addressees,
    addresses,
    employers,
    german_hospital_forms,
    hospitals,
    places,
    saints_and_wards,
)
from finetune.phi_text import LETTER, ORDINARY_SUFFIX, TITLE_CHAIN, PhiSpan, TextView
from finetune.phi_types import PRIORITY, PhiType
from finetune.phi_unknown_rules import UNKNOWN_WORD_SOURCE, unknown_words
from finetune.phi_vocabulary import load_vocabulary

# --------------------------------------------------------------------------------------------
# Rule registry, Presidio wrapper
# --------------------------------------------------------------------------------------------

Rule = Callable[[TextView], Iterable[PhiSpan]]

#: name -> (rule, languages). German runs everything except spaCy NER unless a German model is set.
RULES: dict[str, tuple[Rule, frozenset[str]]] = {
    "dates": (dates, frozenset({"en", "de"})),
    "ages": (ages, frozenset({"en", "de"})),
    "identifiers": (identifiers, frozenset({"en", "de"})),
    "phones": (phones, frozenset({"en", "de"})),
    "urls": (urls, frozenset({"en", "de"})),
    "addresses": (addresses, frozenset({"en", "de"})),
    "addressees": (addressees, frozenset({"de"})),
    "hospitals": (hospitals, frozenset({"en", "de"})),
    "german_hospital_forms": (german_hospital_forms, frozenset({"de"})),
    "saints_and_wards": (saints_and_wards, frozenset({"en", "de"})),
    "places": (places, frozenset({"en", "de"})),
    "employers": (employers, frozenset({"en"})),
    "title_names": (title_names, frozenset({"en", "de"})),
    "relation_names": (relation_names, frozenset({"en", "de"})),
    "credential_names": (credential_names, frozenset({"en", "de"})),
    "family_names": (family_names, frozenset({"en", "de"})),
    "parenthesised_relation_names": (parenthesised_relation_names, frozenset({"en", "de"})),
    "initial_names": (initial_names, frozenset({"en", "de"})),
    "role_apposition_names": (role_apposition_names, frozenset({"en"})),
    "patient_names": (patient_names, frozenset({"en", "de"})),
    "birth_names": (birth_names, frozenset({"en", "de"})),
    "first_name_verbs": (first_name_verbs, frozenset({"en", "de"})),
    "possessive_homes": (possessive_homes, frozenset({"en"})),
    "gazetteer_names": (gazetteer_names, frozenset({"en", "de"})),
    "ner_entities": (ner_entities, frozenset({"en", "de"})),
    "titled_words": (titled_words, frozenset({"en", "de"})),
    "relation_capitalised": (relation_capitalised, frozenset({"en"})),
    "unknown_words": (unknown_words, frozenset({"en", "de"})),
}


@dataclass
class _ViewCache:
    """The last TextView, so the ~15 recognizers of one analyze() call tokenize once."""

    key: tuple[int, str, int] | None = None
    view: TextView | None = None


_VIEW_CACHE = _ViewCache()


def view_for(text: str, language: str, nlp_artifacts=None) -> TextView:
    key = (id(text), language, id(nlp_artifacts))
    if _VIEW_CACHE.key != key or _VIEW_CACHE.view is None or _VIEW_CACHE.view.text is not text:
        _VIEW_CACHE.key = key
        _VIEW_CACHE.view = TextView(text, language, load_gazetteers(), nlp_artifacts)
    return _VIEW_CACHE.view


class RuleRecognizer(EntityRecognizer):
    """One of our rules as a Presidio recognizer for one language."""

    def __init__(self, name: str, rule: Rule, language: str) -> None:
        self.rule = rule
        super().__init__(supported_entities=[t.value for t in PhiType], name=f"{name}_{language}",
                         supported_language=language)

    def load(self) -> None:  # gazetteers load lazily, once per process
        return None

    def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list[RecognizerResult]:
        view = view_for(text, self.supported_language, nlp_artifacts)
        results = []
        for span in self.rule(view):
            if span.end <= span.start:
                continue
            results.append(RecognizerResult(
                span.label.value, span.start, span.end, span.score,
                recognition_metadata={RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                      "phi_source": span.source, "phi_strong": span.strong}))
        return results


# --------------------------------------------------------------------------------------------
# Allow-list, overlap resolution, repetition
# --------------------------------------------------------------------------------------------


def allowed(span: PhiSpan, text: str, gaz: Gazetteers) -> bool:
    """True when a weak span is only clinical vocabulary (eponyms, abbreviations) and must stay."""
    if span.strong or span.label not in (PhiType.NAME, PhiType.LOCATION, PhiType.HOSPITAL, PhiType.ORGANIZATION):
        return False
    phrase = " ".join(re.findall(rf"[{LETTER}'’]+", text[span.start: span.end].lower()))
    if phrase in gaz.allow_terms:
        return True
    words = phrase.split()
    return bool(words) and all(w in gaz.allow_terms or w in gaz.common for w in words)


#: A cue before a weak name that makes it a disease eponym ("Morbus Crohn", "M. Bechterew"); not "a.m."
EPONYM_BEFORE = re.compile(r"(?:^|[^\w.])(morbus|mb\.|m\.)\s*$")
#: A noun after a weak name that makes it an eponym in use ("Parkinson's disease", "Foley catheter")
EPONYM_AFTER = re.compile(
    r"['’]?s?[\s-]*(disease|syndrome|syndrom|krankheit|sign|zeichen|catheter|katheter|"
    r"scale|score|test|tumor|tumour|lymphoma|lymphom|reflex|procedure|drains?|retractors?|forceps|"
    r"clamps?|scissors|elevator|dilators?|tubes?|needles?|stitch|sutures?|maneuver|manoeuvre|"
    r"blades?|knife|scalpel)")


def eponym_context(span: PhiSpan, text: str) -> bool:
    """The words around a span make it read as an eponym (see :data:`EPONYM_BEFORE`, :data:`EPONYM_AFTER`)."""
    before = text[max(0, span.start - 12): span.start].lower()
    return bool(EPONYM_BEFORE.search(before) or EPONYM_AFTER.match(text[span.end: span.end + 14].lower()))


def name_parts(phrase: str) -> list[str]:
    """The words of a phrase and the parts of its hyphenated ones ("Jackson-Pratt": Jackson, Pratt)."""
    words = re.findall(rf"[{LETTER}][{LETTER}'’\-]*", phrase)
    return [p for w in words for p in dict.fromkeys((w, *w.split("-"))) if p]


def context_vetoed(span: PhiSpan, text: str, language: str) -> bool:
    """Eponyms in use: 'Morbus Crohn', 'Parkinson's disease', 'Foley catheter', 'Blake drain', 'Bard Parker blade'.

    A word no list knows (the allow-list layer's spans) is spared unless it names a person or a listed
    eponym: the context alone also fits a place or a relative ("Family says Obaixville test was
    cancelled"), and dropping those lost more than half of the unread part's missed places
    (docs/results.md, "the eponym veto").
    """
    if span.strong or span.label is not PhiType.NAME or not eponym_context(span, text):
        return False
    if not span.source.startswith(UNKNOWN_WORD_SOURCE):
        return True
    vocab = load_vocabulary(language)
    return any(vocab.is_name(p) or p.lower() in vocab.eponyms for p in name_parts(text[span.start: span.end]))


def resolve_overlaps(spans: list[PhiSpan]) -> list[PhiSpan]:
    """Keep a non-overlapping set: higher type priority, then strong over weak, longer, higher score.

    Presidio breaks ties arbitrarily; the prototype turned a date into a phone-shaped number that
    way, so the order is explicit. A kept span absorbs overlapping spans of the
    same type (their union), so "Dr. Van Leeuwen" found as "Van" and "Van Leeuwen" is one span.
    """
    order = sorted(spans, key=lambda s: (PRIORITY[s.label], not s.strong, -(s.end - s.start), -s.score))
    kept: list[PhiSpan] = []
    for span in order:
        clash = [k for k in kept if k.start < span.end and span.start < k.end]
        if not clash:
            kept.append(PhiSpan(span.start, span.end, span.label, span.score, span.source, span.strong))
            continue
        if all(k.label is span.label for k in clash) and len(clash) == 1:
            k = clash[0]
            k.start, k.end = min(k.start, span.start), max(k.end, span.end)
            continue
        # a different type overlaps: keep the part outside ("Tobias Öhler" of "Tobias Öhler Kaiserstrße")
        left = min(k.start for k in clash)
        right = max(k.end for k in clash)
        if span.start < left and left - span.start >= 2:
            kept.append(PhiSpan(span.start, left, span.label, span.score, span.source, span.strong))
        elif span.end > right and span.end - right >= 2:
            kept.append(PhiSpan(right, span.end, span.label, span.score, span.source, span.strong))
    kept.sort(key=lambda s: s.start)
    merged: list[PhiSpan] = []
    for span in kept:  # unions may now touch a neighbour: merge same types, else the higher priority wins
        if merged and span.start < merged[-1].end:
            prev = merged[-1]
            if prev.label is span.label:
                prev.end = max(prev.end, span.end)
            elif PRIORITY[span.label] < PRIORITY[prev.label]:
                merged[-1] = span
            continue
        merged.append(span)
    return merged


def propagate(spans: list[PhiSpan], text: str, gaz: Gazetteers) -> list[PhiSpan]:
    """Mark every other mention of a detected name/place word in the same text ('Dr. Marder' ... 'Marder').

    Only words that are not ordinary vocabulary and not allow-listed spread, so one false hit on
    a common word cannot mask a whole note. Matching ignores case: notes mix 'Nicholson'/'nicholson'.
    """
    covered = [(s.start, s.end) for s in spans]
    words: dict[str, PhiType] = {}
    for span in spans:
        if span.label not in (PhiType.NAME, PhiType.HOSPITAL, PhiType.LOCATION) or not span.strong:
            continue
        for word in re.findall(rf"[{LETTER}][{LETTER}'’\-]+", text[span.start: span.end]):
            low = word.lower()
            if len(low) >= 3 and low not in gaz.common and low not in gaz.allow_terms and low not in TITLE_CHAIN \
                    and not ORDINARY_SUFFIX.search(low) and (low not in gaz.english_words or gaz.is_name_word(low)):
                words.setdefault(low, span.label)
    if not words:
        return spans
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                         + r")(?:s|'s|’s)?(?![\w-])", re.IGNORECASE)
    extra = []
    for m in pattern.finditer(text):
        if any(s < m.end() and m.start() < e for s, e in covered):
            continue
        extra.append(PhiSpan(m.start(), m.end(), words[m.group(1).lower()], 0.5, "repeat", False))
    return sorted(spans + extra, key=lambda s: s.start)


#: A name's neighbour in a list: "Graves and Reed", "Monjeau, Graves", "Smith & Jones".
_LIST_LINK = r"\s*(?:,\s*(?:and\s+|&\s*)?|\s+(?:and|&|or|und|oder)\s+)"
_NEXT_IN_LIST = re.compile(rf"^{_LIST_LINK}(?P<w>[{LETTER}][{LETTER}'’\-]+)")
_PREVIOUS_IN_LIST = re.compile(rf"(?P<w>[{LETTER}][{LETTER}'’\-]+){_LIST_LINK}$")
_CALENDAR_WORDS = {*MONTHS_EN, "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}


def coordinated_names(spans: list[PhiSpan], text: str, gaz: Gazetteers, case: str) -> list[PhiSpan]:
    """Names listed next to a found name ("Monjeau, Graves and Reed", "daughters Mary and Rose").

    A surname that is also an English word ("Graves", "Reed") has no evidence of its own; in a list
    whose other member is a person it does. Only capitalised words on a name list join, and only
    where capitals carry information (``case`` "mixed": in an upper-case ICU note "RFEM & ALINE" is
    shorthand), never eponyms or calendar words ("Graves and Hashimoto", "Smith and June"). Lists
    grow from both ends until nothing joins.
    """
    if case != "mixed":
        return spans
    found = [s for s in spans if s.label is PhiType.NAME]
    covered = [(s.start, s.end) for s in spans]
    extra: list[PhiSpan] = []
    while found:
        grown: list[PhiSpan] = []
        for span in found:
            for m, offset in ((_NEXT_IN_LIST.match(text[span.end: span.end + 40]), span.end),
                              (_PREVIOUS_IN_LIST.search(text[max(0, span.start - 40): span.start]),
                               max(0, span.start - 40))):
                if m is None:
                    continue
                word = m.group("w")
                start, end = offset + m.start("w"), offset + m.end("w")
                low = word.lower()
                if not word[0].isupper() or not gaz.is_name_word(word) or low in _CALENDAR_WORDS \
                        or low in gaz.allow_terms or low in TITLE_CHAIN or any(s < end and start < e for s, e in covered):
                    continue
                new = PhiSpan(start, end, PhiType.NAME, 0.5, "name_list", True)
                covered.append((start, end))
                grown.append(new)
        extra += grown
        found = grown
    return sorted(spans + extra, key=lambda s: s.start) if extra else spans
