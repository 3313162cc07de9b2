"""Our PHI recognizers (patterns, trigger words, gazetteers), the allow-list and overlap resolution.

Each rule is a small function ``rule(view) -> Iterable[PhiSpan]`` over a :class:`TextView` (the
text, its tokens, its case style, its language). :class:`RuleRecognizer` wraps a rule as a Presidio
``EntityRecognizer`` so Presidio stays the framework (registry, languages, NER artifacts, predefined
e-mail/URL/IBAN recognizers) while the rules that do most of the work live here.

Evidence comes in two strengths. *Strong* spans have a trigger or an unambiguous pattern ("Dr.
Marder", "MRN 1234567", "03/14/2021"); *weak* spans come from gazetteers, NER or repetition. The
allow-list of eponyms and abbreviations only vetoes weak evidence: "Parkinson" stays a disease,
"Dr. Parkinson" stays a person.

Case matters: ICU nursing notes are often all upper or all lower case, where capitalisation says
nothing, so rules that rely on it switch to stricter gazetteer/trigger evidence (``TextView.case``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

from presidio_analyzer import EntityRecognizer, RecognizerResult

from finetune.date_formats import find_dates
from finetune.phi_gazetteers import Gazetteers, load_gazetteers
from finetune.phi_types import PRIORITY, PhiType

L_UP = "A-ZÄÖÜÀ-ÖØ-ÞĀ-ſ"  # Latin-1 and Latin Extended-A (Ayşe, Lăcrămioara, Žeželj)
L_LOW = "a-zäöüßà-öø-ÿĀ-ſª"
LETTER = f"{L_UP}{L_LOW}"

# --------------------------------------------------------------------------------------------
# Spans, tokens, the per-text view
# --------------------------------------------------------------------------------------------


@dataclass
class PhiSpan:
    """A detected PHI span; offsets into the original text."""

    start: int
    end: int
    label: PhiType
    score: float = 0.85
    source: str = ""
    strong: bool = True

    def to_json(self) -> dict[str, object]:
        return {"start": self.start, "end": self.end, "label": self.label.value, "source": self.source}


@dataclass
class Token:
    start: int
    end: int
    text: str
    line: int

    @cached_property
    def core(self) -> str:
        """The word without a trailing dot ("Marder." -> "Marder", "Dr." -> "Dr")."""
        return self.text[:-1] if self.text.endswith(".") and len(self.text) > 1 else self.text

    @cached_property
    def low(self) -> str:
        return self.core.lower()

    @property
    def core_end(self) -> int:
        return self.start + len(self.core)

    @cached_property
    def is_word(self) -> bool:
        return bool(re.fullmatch(rf"[{LETTER}][{LETTER}'’\-]*", self.core))

    @cached_property
    def is_initial(self) -> bool:
        return bool(re.fullmatch(rf"[{L_UP}{L_LOW}]{{1,2}}\.", self.text)) and len(self.core) <= 2 and (
            len(self.core) == 1 or self.core[1:].islower())

    @cached_property
    def is_title_case(self) -> bool:
        return self.core[:1].isupper() and not self.core.isupper()

    @cached_property
    def is_upper(self) -> bool:
        return self.core.isupper() and len(self.core) > 1

    @property
    def capitalised(self) -> bool:
        return self.core[:1].isupper()


#: Word endings that English and German names practically never have; catches the clinical words
#: no generic word list knows ("infusing", "secretions", "repleted", "Untersuchung").
ORDINARY_SUFFIX = re.compile(r"(?:ing|ings|ed|ly|tion|tions|sion|sions|ment|ments|ness|ous|ive|ives|ity|"
                             r"ated|izes?|ung|ungen|heit|keit|lich|isch|ismus)$")
TOKEN_RE = re.compile(rf"[{LETTER}](?:[{LETTER}\d]|['’\-](?=[{LETTER}]))*\.?|\d+|\n|[^\s]")


class TextView:
    """What every rule needs about one text, computed once."""

    def __init__(self, text: str, language: str, gaz: Gazetteers, nlp_artifacts=None) -> None:
        self.text = text
        self.language = language
        self.gaz = gaz
        self.nlp_artifacts = nlp_artifacts
        self.tokens: list[Token] = []
        line = 0
        for match in TOKEN_RE.finditer(text):
            if match.group() == "\n":
                line += 1
                continue
            self.tokens.append(Token(match.start(), match.end(), match.group(), line))
        self.case = self._case_style()

    def _case_style(self) -> str:
        """'upper', 'lower' or 'mixed': whether capitals carry information in this text."""
        words = [t for t in self.tokens if t.is_word and len(t.core) > 1]
        if not words:
            return "mixed"
        upper = sum(t.core.isupper() for t in words) / len(words)
        capital = sum(t.capitalised for t in words) / len(words)
        if upper > 0.6:
            return "upper"
        if capital < 0.06:
            return "lower"
        return "mixed"

    # --- word classes -------------------------------------------------------------------------

    def common(self, tok: Token) -> bool:
        """An ordinary word: in the word lists, or shaped like one ('infusing', 'secretions')."""
        low = re.sub(r"['’]s$", "", tok.low)
        return low in self.gaz.common or tok.low in self.gaz.common

    def ordinary(self, tok: Token) -> bool:
        """Stricter than common(): also any word of a larger English vocabulary, or shaped like an
        ordinary word ('infusing', 'secretions'); for weak evidence only, since real surnames
        ('Vining', 'Abrams') can look like that too."""
        low = re.sub(r"['’]s$", "", tok.low)
        if self.common(tok) or low in self.gaz.english_words or tok.low in self.gaz.allow_terms:
            return True
        if low.endswith("s") and low[:-1] in self.gaz.english_words and not self.gaz.is_name_word(low):
            return True  # plurals: "AUNTS", "secretions"
        return bool(ORDINARY_SUFFIX.search(low)) and not self.gaz.is_name_word(low)

    def common_word(self, word: str) -> bool:
        return word.lower() in self.gaz.common

    def name_like(self, tok: Token, *, any_case: bool = False) -> bool:
        """Could be part of a name: a word, not an ordinary word, capitalised where case counts."""
        if not tok.is_word or len(tok.core) < 2 or self.common(tok):
            return False
        if self.case == "mixed" and not any_case:
            return tok.capitalised
        return True

    def span(self, first: Token, last: Token, label: PhiType, source: str, *, strong: bool = True,
             score: float = 0.85) -> PhiSpan:
        """A span from token to token; a trailing dot stays outside unless it ends an initial."""
        end = last.end if last.is_initial else last.core_end
        return PhiSpan(first.start, end, label, score, source, strong)


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

#: Titles that always introduce a person ("Dr", "Herr"); compared lower case without the dot.
TITLES = {"dr", "drs", "dr's", "dres", "mr", "mrs", "miss", "mister", "prof", "professor",
          "herr", "herrn", "hr", "frau", "fr", "mag", "dgks", "schwester", "sr", "pfleger",
          "drª", "ddr", "doz", "dra", "dr.in"}
#: Words that may sit between a title and the name ("Prof. Dr. med.", "Herr Kollege").
TITLE_CHAIN = TITLES | {"med", "univ", "univers", "rer", "nat", "dent", "mult", "habil", "pd", "oa", "oä",
                        "doz", "priv", "priv.-doz", "univ.-prof", "ass", "prim", "kollege", "kollegin",
                        "dr.med", "dipl", "ing", "phil", "sc", "ao", "uriv.-prof", "univ-prof", "ltd", "in", "ª",
                        "univ.-doz", "priv.doz"}
#: Titles that are also ordinary abbreviations (MS = mental status, PA = pulmonary artery): they
#: count only when the next word is a known name.
WEAK_TITLES = {"ms", "np", "pa", "md", "ho", "oa", "oä", "pd", "rn", "ass", "gez", "chefarzt", "oberarzt",
               "oberärztin", "assistenzarzt", "assistenzärztin", "stationsarzt", "stationsärztin",
               "primar", "primaria", "primarin", "nurse", "attending", "pcp", "doctor", "docter"}
ENGLISH_TITLES = {"mr", "mrs", "ms", "miss", "mister", "np", "pa", "md", "ho", "rn", "nurse", "attending",
                  "pcp", "doctor", "docter"}
#: Titles that are also clinical abbreviations; they count only as "Hr.", "Fr.", "Sr.", "Mag.".
DOTTED_TITLES = {"hr", "fr", "sr", "mag"}
def _stop_words() -> frozenset[str]:
    from spacy.lang.de.stop_words import STOP_WORDS as DE_STOP
    from spacy.lang.en.stop_words import STOP_WORDS as EN_STOP

    return frozenset(w.lower() for w in (*EN_STOP, *DE_STOP))


#: Function words: never a surname, even capitalised right after a title.
STOP_WORDS = _stop_words()
PARTICLES = {"von", "van", "de", "der", "den", "zu", "zur", "zum", "dos", "da", "di", "del", "la", "le",
             "du", "ten", "ter", "y", "mc", "st"}
RELATIONS = {"wife", "husband", "daughter", "daughters", "son", "sons", "sister", "brother", "mother",
             "father", "mom", "dad", "niece", "neice", "nephew", "dtr", "girlfriend", "boyfriend",
             "fiance", "fiancee", "grandson", "granddaughter", "aunt", "uncle", "cousin", "friend",
             "partner", "spokesperson", "proxy", "named", "sohn", "tochter", "ehemann", "ehefrau",
             "mutter", "vater", "bruder", "enkel", "enkelin", "lebensgefährte", "lebensgefährtin",
             "partnerin", "betreuer", "betreuerin", "neffe", "nichte", "onkel", "tante", "liebe", "lieber"}
CREDENTIALS = {"rn", "rrt", "crt", "np", "pa", "md", "lpn", "cna", "msw", "licsw", "phd", "bsn", "cns",
               "rd", "slp", "pharmd", "ccrn", "aprn", "fnp"}
AWARE = {"aware", "made", "notified", "paged", "called", "informed", "updated", "spoke", "saw", "examined",
         "pronounced", "informiert", "benachrichtigt"}
PATIENT_TRIGGERS = {"patient", "patientin", "patienten", "pat", "name", "betr", "betrifft", "versicherte",
                    "versicherter", "pt.", "re"}
BIRTH_CONTEXT = {"*", "geb", "geboren", "born", "dob", "fallnummer", "fn", "(*", "piz", "gebdat"}
SEPARATORS = {",", ":", "(", "-", "–"}


def _name_sequence(view: TextView, i: int, *, max_words: int = 3, any_case: bool = False,
                   need_known_first: bool = False, after_title: bool = False) -> int | None:
    """Index of the last token of a name starting at ``i`` (None if no name starts there)."""
    toks = view.tokens
    j, words, last = i, 0, None
    while j < len(toks) and words < max_words:
        tok = toks[j]
        if last is not None and tok.line != toks[last].line and not (view.language == "de" and words == 0):
            break
        if tok.is_initial and not view.common(tok) or (tok.is_initial and len(tok.core) == 1):
            last, j = j, j + 1
            continue
        if tok.low in WEAK_TITLES and last is not None:
            break  # "PD Dr. Hauser Chefarzt"
        if tok.low in PARTICLES and j + 1 < len(toks) and view.name_like(toks[j + 1], any_case=any_case) \
                and not ORDINARY_SUFFIX.search(toks[j + 1].low) \
                and (last is not None or tok.low in {"van", "von", "de", "mc", "zur", "dos", "st"}):
            j += 1
            continue
        # after the first word, follow its case style: "Herr Müller stellte" ends at "stellte";
        # German names are always capitalised
        word_any_case = any_case and view.language != "de" and (last is None or not toks[i].capitalised)
        if last is not None and view.ordinary(tok) and not view.gaz.is_name_word(tok.core) \
                and not (view.case != "upper" and tok.capitalised):
            break  # "NP CAROL ORDERED", "mrs. powers arrived": the name ended
        capital_common = (after_title and view.case == "mixed" and tok.is_title_case and tok.is_word
                          and len(tok.core) >= 3 and tok.low not in STOP_WORDS and tok.low not in TITLE_CHAIN
                          and tok.low not in RELATIONS and tok.low not in PATIENT_TRIGGERS and not DE_HOSPITAL.search(tok.core))
        if (view.name_like(tok, any_case=word_any_case) or capital_common) and tok.low not in TITLE_CHAIN:
            if need_known_first and last is None and not view.gaz.is_name_word(tok.core):
                return None
            last, words, j = j, words + 1, j + 1
            if tok.text.endswith(".") and not tok.is_initial:
                break  # "Dr. Marder." ends the sentence
            continue
        if last is None and words == 0 and tok.is_title_case and view.case == "mixed" and tok.is_word \
                and j + 1 < len(toks) and toks[j + 1].line == tok.line and toks[j + 1].is_title_case \
                and view.name_like(toks[j + 1]) and view.gaz.is_name_word(toks[j + 1].core):
            last, words, j = j, words + 1, j + 1  # "Rich Martino": an ordinary word as first name
            continue
        break
    if last is None or words == 0 and not any(toks[k].is_initial for k in range(i, last + 1)):
        return None
    # "Clausthal, Marie" / "FRITZLE, Fridolin": surname, comma, first name (known, or after a surname in capitals)
    if last + 2 < len(toks) and toks[last + 1].text == "," and toks[last + 2].capitalised \
            and not view.common(toks[last + 2]) and toks[last + 2].line == toks[last].line \
            and (view.gaz.is_first(toks[last + 2].core) or (toks[last].is_upper and toks[last + 2].is_title_case
                                                             and view.case == "mixed")):
        last += 2
    return last


def _extend_conjunction(view: TextView, last: int, source: str, *, any_case: bool) -> Iterator[PhiSpan]:
    """'Dr. Griffin and Swackhamer aware', 'Drs. Seiler und Wantzer': the second name counts too."""
    toks = view.tokens
    k = last + 1
    if k + 1 < len(toks) and toks[k].low in {"and", "und", "&", "or", "oder", "u"}:
        m = k + 1
        while m < len(toks) and toks[m].low in TITLE_CHAIN:
            m += 1
        if m < len(toks):
            end = _name_sequence(view, m, max_words=2, any_case=any_case)
            if end is not None and not (view.ordinary(toks[m]) and not view.gaz.is_name_word(toks[m].core)):
                yield view.span(toks[m], toks[end], PhiType.NAME, source)


def _names_before_conjunction(view: TextView, conj: int) -> Iterator[PhiSpan]:
    """'Bea Tura and Drs Joseph': the person named before 'and <title> <name>' is a person too.

    Up to two words: not ordinary vocabulary, or a first name of the broad list ("Bea"); one of
    them must not be ordinary at all, so "GIVEN AND DR X" or "PT AND DR X" stay.
    """
    toks = view.tokens
    words: list[int] = []
    k = conj - 1
    while k >= 0 and len(words) < 2 and toks[k].line == toks[conj].line and toks[k].is_word \
            and not (toks[k].text.endswith(".") and not toks[k].is_initial) and len(toks[k].core) >= 3 \
            and view.name_like(toks[k], any_case=view.case != "mixed") and toks[k].low not in TITLE_CHAIN \
            and toks[k].low not in RELATIONS and toks[k].low not in CREDENTIALS \
            and (not view.ordinary(toks[k]) or view.gaz.is_any_first(toks[k].core)):
        words.insert(0, k)
        k -= 1
    if words and any(not view.ordinary(toks[w]) for w in words):
        yield view.span(toks[words[0]], toks[words[-1]], PhiType.NAME, "conjunction", strong=False)


def title_names(view: TextView) -> Iterator[PhiSpan]:
    """Names after a title or role: 'Dr. Marder', 'DR SWACKHAMER', 'Frau Prof. Dr. med. Anna Becker'."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        low = tok.low
        weak = low in WEAK_TITLES
        if low not in TITLES and not weak:
            continue
        if low in DOTTED_TITLES and not (tok.text.endswith(".") and tok.is_title_case):
            continue  # "HR 80", "20 FR", "SR": heart rate, French size, sinus rhythm
        if low in ENGLISH_TITLES and (view.language == "de" or (view.case == "mixed" and tok.core.isupper())):
            continue  # "MR Becken" (MRT), "MS II°" (mitral stenosis)
        if low == "ms" and view.case != "mixed" and not tok.text.endswith("."):
            weak = True
        j = i + 1
        while j < len(toks) and (toks[j].low in TITLE_CHAIN or toks[j].text in {"'s", "."}) \
                and toks[j].line == tok.line or (j < len(toks) and toks[j].text == ":" and j == i + 1):
            j += 1
        if j >= len(toks) or toks[j].line - tok.line > 1:
            continue
        end = _name_sequence(view, j, any_case=not weak, need_known_first=weak, after_title=not weak)
        if end is None and not weak and tok.text.endswith(".") and toks[j].line == tok.line and toks[j].is_word \
                and len(toks[j].core) >= 4 and toks[j].low in view.gaz.last_names \
                and toks[j].low not in view.gaz.english_all:
            end = j  # "dr. noone": a surname that the stop-word list also holds ("no one")
        if end is not None and i >= 2 and toks[i - 1].low in {"and", "&"} and toks[i - 1].line == tok.line:
            yield from _names_before_conjunction(view, i - 1)
        if end is None and weak and j + 1 < len(toks) and toks[j + 1].low in AWARE \
                and view.name_like(toks[j], any_case=True) and not view.ordinary(toks[j]):
            end = j  # "NP DJURIC MADE AWARE", "md wyman aware"
        if end is None:
            continue
        yield view.span(toks[j], toks[end], PhiType.NAME, "title", strong=True)
        yield from _extend_conjunction(view, end, "title", any_case=not weak)


#: Verbs after "daughter pat": the word between is the relative's name, even a nickname that is
#: also an English word ("son rob lives", "wife pat called").
RELATIVE_VERBS = {"lives", "lived", "living", "is", "was", "has", "had", "will", "would", "who", "came", "went",
                  "returned", "arrived", "visited", "visiting", "called", "calls", "phoned", "states", "stated",
                  "says", "said", "aware", "updated", "agrees", "agreed", "wants", "wishes", "requests", "requested",
                  "lebt", "ist", "war", "kam", "rief"}


def relation_names(view: TextView) -> Iterator[PhiSpan]:
    """Relatives and contacts: 'daughter Emily', 'SON WILLIAM', 'Sohn Alois Alzheimer'."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        if tok.low not in RELATIONS or (tok.text.endswith(".") and tok.low not in {"dtr"}):
            continue
        j = i + 1
        while j < len(toks) and (toks[j].text in SEPARATORS or toks[j].low in {"is", "was", "ist", "in",
                                                                             "law", "named", "'s"}):
            if toks[j].low in {"in", "law"} and not (j + 1 < len(toks) and toks[j + 1].low == "law"):
                if toks[j].low == "in":
                    break
            j += 1
        if j >= len(toks) or toks[j].line != tok.line:
            continue
        nxt = toks[j + 1] if j + 1 < len(toks) else None
        if nxt is not None and nxt.line == tok.line and nxt.low in RELATIVE_VERBS and toks[j].is_word \
                and len(toks[j].core) >= 3 and view.gaz.is_any_first(toks[j].core) and toks[j].low not in STOP_WORDS \
                and toks[j].low not in RELATIONS and (view.case != "mixed" or toks[j].capitalised):
            yield view.span(toks[j], toks[j], PhiType.NAME, "relation", strong=True)  # "daughter pat lives"
            continue
        end = _name_sequence(view, j, max_words=2, any_case=True)
        if end is None:
            continue
        # in mixed case a relative's name is capitalised; lower-case words are ordinary words there
        if view.case == "mixed" and not toks[j].capitalised and not view.gaz.is_name_word(toks[j].core):
            continue
        if view.language == "de" and not view.gaz.is_name_word(toks[j].core) and tok.low not in {"liebe", "lieber"}:
            continue  # German nouns are capitalised too: "Tante Glaukom" (but "liebe Vroni")
        if toks[j].low in RELATIONS or (view.ordinary(toks[j]) and not view.gaz.is_name_word(toks[j].core)) \
                or toks[j].low in STOP_WORDS or ("-" in toks[j].core and view.case != "mixed"):
            continue
        yield view.span(toks[j], toks[end], PhiType.NAME, "relation", strong=True)


def parenthesised_relation_names(view: TextView) -> Iterator[PhiSpan]:
    """'URSLA MORETTI (DAUGHTER)', 'Hans Meier (Sohn)': the relation follows the name."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        if tok.low not in RELATIONS or i < 2 or toks[i - 1].text != "(":
            continue
        k, first = i - 2, None
        while k >= 0 and i - k <= 4 and toks[k].line == tok.line and (
                toks[k].is_initial or (view.name_like(toks[k], any_case=True) and not view.ordinary(toks[k]))):
            first = k
            k -= 1
        if first is not None:
            yield view.span(toks[first], toks[i - 2], PhiType.NAME, "relation", strong=True)


def family_names(view: TextView) -> Iterator[PhiSpan]:
    """'KEEP ROMERO FAMILY AWARE', 'the Nicholson family', 'Familie Müller'."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        if tok.low == "family" and i > 0 and toks[i - 1].line == tok.line:
            prev = toks[i - 1]
            if view.name_like(prev, any_case=view.case != "mixed") and len(prev.core) >= 3 \
                    and not prev.text.endswith(".") and not view.ordinary(prev) and "-" not in prev.core:
                yield view.span(prev, prev, PhiType.NAME, "family", strong=view.case == "mixed")
        if tok.low == "familie" and i + 1 < len(toks):
            end = _name_sequence(view, i + 1, max_words=2)
            if end is not None:
                yield view.span(toks[i + 1], toks[end], PhiType.NAME, "family", strong=True)


def credential_names(view: TextView) -> Iterator[PhiSpan]:
    """Signatures: 'Ilene Macdonald RN', 'Q. LANDER RRT', 'irene snell, rn', 'K. ABRAMS PA'."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        if tok.low not in CREDENTIALS or not tok.is_word:
            continue
        k = i - 1
        if k >= 0 and toks[k].text == ",":
            k -= 1
        first = None
        words = 0
        while k >= 0 and toks[k].line == tok.line and i - k <= 5:
            t = toks[k]
            if t.text.endswith(".") and not t.is_initial:
                break  # "WHEEZES. JON DEVAUX RRT": the sentence before is not part of the name
            eponym_surname = (k > 0 and k == i - 1 and t.low in view.gaz.last_names and toks[k - 1].line == t.line
                              and view.gaz.is_first(toks[k - 1].core) and not view.common(toks[k - 1])
                              and (view.case != "mixed" or (t.capitalised and toks[k - 1].capitalised)))
            if eponym_surname:  # "Bernard Foley CRT": an eponym as a surname, after a first name
                first, words, k = k, words + 1, k - 1
                continue
            if t.is_initial or (view.name_like(t, any_case=True) and len(t.core) >= 3 and t.low not in CREDENTIALS
                                and not (view.ordinary(t) and not view.gaz.is_name_word(t.core)
                                         and not (k > 0 and toks[k - 1].is_initial))
                                and t.low not in TITLE_CHAIN and t.low not in RELATIONS):
                first = k
                words += 0 if t.is_initial else 1
                k -= 1
                continue
            break
        if first is None or words == 0:
            continue
        last = i - 1 if toks[i - 1].text != "," else i - 2
        # a single unknown lower-case word before "rn" is too weak ("pt seen by rn")
        if words == 1 and not any(toks[x].is_initial for x in range(first, last + 1)) \
                and not view.gaz.is_name_word(toks[last].core) and (not toks[last].capitalised or view.case != "mixed"):
            continue
        yield view.span(toks[first], toks[last], PhiType.NAME, "credential", strong=True)


def initial_names(view: TextView) -> Iterator[PhiSpan]:
    """'V. Finn', 'L. RUUSKA', 'C. BERTHA': an initial followed by a surname."""
    toks = view.tokens
    for i in range(len(toks) - 1):
        a, b = toks[i], toks[i + 1]
        if not (a.is_initial and len(a.core) == 1 and b.line == a.line) or view.text[a.start - 1: a.start] == "/":
            continue  # "N/V. Droperidol"
        if i > 0 and re.fullmatch(r"[a-zA-Z]\.", toks[i - 1].text) and toks[i - 1].line == a.line:
            continue  # German "z. B. Panthenol", "o. B.", "z. T. Fieber"
        if view.case == "mixed":
            ok = a.core.isupper() and b.capitalised and view.name_like(b)
        else:
            ok = view.name_like(b, any_case=True) and (view.gaz.is_name_word(b.core) or _coordinated_initial_name(view, i))
        if ok and b.low not in TITLE_CHAIN and len(b.core) >= 3 and not view.ordinary(b):
            yield view.span(a, b, PhiType.NAME, "initial", strong=False)


def _is_initial_name(view: TextView, i: int) -> bool:
    """Tokens i, i+1 are 'j. o'brien': a one-letter initial and a known surname on one line."""
    toks = view.tokens
    return (0 <= i and i + 1 < len(toks) and toks[i].is_initial and len(toks[i].core) == 1
            and toks[i + 1].line == toks[i].line and view.gaz.is_name_word(toks[i + 1].core)
            and not view.ordinary(toks[i + 1]))


def _coordinated_initial_name(view: TextView, i: int) -> bool:
    """'(d. xyz and j. o'brien)': an initial + unknown word listed with an initial + known surname
    is a name too. Both must have that shape, so "e. coli and s. aureus" (no known surname) stays."""
    toks = view.tokens
    link = {"and", "&", ",", "/", "u", "und"}
    after = i + 2 < len(toks) and toks[i + 2].low in link and _is_initial_name(view, i + 3)
    before = i >= 3 and toks[i - 1].low in link and _is_initial_name(view, i - 3)
    return after or before


def gazetteer_names(view: TextView) -> Iterator[PhiSpan]:
    """A known first name, with the capitalised words after it as surname ('Joyce Jacobson')."""
    toks = view.tokens
    gaz = view.gaz
    for i, tok in enumerate(toks):
        if not tok.is_word or not gaz.is_first(tok.core) or view.common(tok) or len(tok.core) < 3:
            continue
        if tok.low in gaz.allow_terms:
            continue
        if view.case == "mixed":
            if not tok.capitalised or (tok.core.isupper() and len(tok.core) <= 4):
                continue  # "PIA", "EMA", "RITA": abbreviations, not Pia or Rita
            end = _name_sequence(view, i, max_words=3)
            if end is None:
                continue
            # "Surname, Firstname" written the other way round
            start = i
            if i >= 2 and toks[i - 1].text == "," and view.name_like(toks[i - 2]) and toks[i - 2].line == tok.line \
                    and (toks[i - 2].is_upper and len(toks[i - 2].core) > 4 or gaz.is_name_word(toks[i - 2].core)):
                start = i - 2
            if end == i and start == i and i > 0 and (toks[i - 1].low in DRUG_CONTEXT or DRUG_SUFFIX.search(tok.low)):
                continue  # "has used Allegra", "the Allegra": a drug that shares a first name
            yield view.span(toks[start], toks[end], PhiType.NAME, "gazetteer", strong=end > i or start < i)
        else:
            # no case information: a first name needs a second name-like word next to it
            end = _name_sequence(view, i, max_words=3, any_case=True)
            if end is not None and end > i and not any(
                    view.ordinary(t) or len(t.core) < 3 or "'" in t.core for t in toks[i + 1: end + 1]
                    if t.is_word and not t.is_initial):
                yield view.span(tok, toks[end], PhiType.NAME, "gazetteer", strong=False)
            elif view.case == "lower" and tok.core.islower() and len(tok.core) >= 4 and not view.ordinary(tok) \
                    and tok.low in gaz.english_all and tok.low not in gaz.frequent_english \
                    and tok.low in gaz.first_english and tok.low not in BARE_NAME_VETO \
                    and not (i > 0 and toks[i - 1].low in DRUG_CONTEXT) and not DRUG_SUFFIX.search(tok.low):
                # a lower-case note: a first name alone ("discussed with janet"). The name must be a
                # word of the general vocabulary (typos and Latin such as "perla", "ante" are not)
                # but not one of its frequent words ("mark", "rose", "hope" are English first).
                yield view.span(tok, tok, PhiType.NAME, "gazetteer_lower", strong=False)


#: English first names that are anatomy or instrument words, never a bare name in a lower-case note.
BARE_NAME_VETO = {"iris", "lens", "cornea", "bard", "mayo", "kelly", "allis", "babcock", "adson", "ochsner", "carmine"}


#: Words before a drug name ("has used Allegra", "instead of Allegra"), and drug-name endings.
DRUG_CONTEXT = {"used", "use", "using", "try", "tried", "trying", "take", "takes", "taking", "took", "on", "started",
                "start", "stopped", "stop", "continue", "continued", "of", "the", "a", "an",
                "mg", "dose", "dosed", "prescribed", "given", "gave"}
DRUG_SUFFIX = re.compile(r"(?:cillin|mycin|micin|floxacin|cycline|pril|sartan|olol|dipine|azole|statin|prazole|"
                         r"tidine|triptan|mab|nib|azepam|barbital|caine|phylline|sone|olone|parin|formin|gliptin)$")
ALLERGY_BEFORE = re.compile(r"(?i)\b(?:allergic|allergy|allergies|intolerant|intolerance|reaction|sensitive)\s+(?:to\s+)?$")


#: Verbs that make a bare first name a person in notes of any case ("bob visited", "Emily reports").
PERSON_VERBS = {"visited", "visits", "visiting", "called", "calls", "phoned", "came", "reports", "reported", "states",
                "stated", "says", "said", "updated", "aware", "agrees", "agreed", "consented", "wishes", "wants",
                "besuchte", "rief", "berichtet", "berichtete"}


def first_name_verbs(view: TextView) -> Iterator[PhiSpan]:
    """A known first name right before a verb of visiting or reporting, in any case."""
    toks = view.tokens
    for i in range(len(toks) - 1):
        tok, nxt = toks[i], toks[i + 1]
        if nxt.low not in PERSON_VERBS or nxt.line != tok.line or not tok.is_word or len(tok.core) < 3:
            continue
        if view.gaz.is_first(tok.core) and not view.ordinary(tok) and tok.low not in view.gaz.allow_terms \
                and (view.case != "mixed" or tok.capitalised):
            yield view.span(tok, tok, PhiType.NAME, "first_name_verb", strong=True)
        elif i > 0 and view.gaz.is_any_first(toks[i - 1].core) and toks[i - 1].line == tok.line \
                and len(toks[i - 1].core) >= 3 and toks[i - 1].low not in STOP_WORDS and tok.is_word \
                and not view.ordinary(tok) and not view.common(tok) and tok.low not in view.gaz.allow_terms \
                and tok.low not in CREDENTIALS and tok.low not in TITLE_CHAIN \
                and (view.case != "mixed" or (tok.capitalised and toks[i - 1].capitalised)):
            # "BEA TURA AWARE": a first name (broad list) and an unknown word before the verb
            yield view.span(toks[i - 1], tok, PhiType.NAME, "first_name_verb", strong=True)


def patient_names(view: TextView) -> Iterator[PhiSpan]:
    """'Patientin Beate Albers', 'Name: Konstantin Tupolev', 'Betr.: Asger Baastrup, geb. ...'."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        if tok.low not in PATIENT_TRIGGERS:
            continue
        j = i + 1
        while j < len(toks) and toks[j].text in {":", ",", "."}:
            j += 1
        if j >= len(toks) or toks[j].line - tok.line > 2:
            continue
        end = _name_sequence(view, j, max_words=3)
        if end is None or not toks[j].capitalised:
            continue
        after = {t.low for t in toks[end + 1: end + 4]} | {t.text for t in toks[end + 1: end + 3]}
        known = view.gaz.is_name_word(toks[j].core) or any(view.gaz.is_first(t.core) for t in toks[j:end + 1])
        if known or after & BIRTH_CONTEXT:
            yield view.span(toks[j], toks[end], PhiType.NAME, "patient", strong=True)


BIRTH_MARKERS = {"*", "geb", "geboren", "gebdat", "dob", "born"}


def birth_names(view: TextView) -> Iterator[PhiSpan]:
    """'Helmfried Koenig * 13.09.1955', 'Weil, Klementine, geb. 16.01.1993': a name before a birth date."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        if tok.low not in BIRTH_MARKERS or i == 0:
            continue
        if tok.text == "*" and not re.match(r"\s*\d", view.text[tok.end: tok.end + 3]):
            continue  # "AS ORDERED*****", not "* 13.09.1955"
        k = i - 1
        if toks[k].text in {",", "("}:
            k -= 1
        first, words = None, 0
        while k >= 0 and toks[k].line == tok.line and words < 4:
            t = toks[k]
            if t.text == "," and first is not None and k > 0 and toks[k - 1].capitalised:
                k -= 1
                continue
            if (t.is_word and t.capitalised and len(t.core) >= 2 and t.low not in STOP_WORDS
                    and t.low not in TITLE_CHAIN and t.low not in PATIENT_TRIGGERS
                    and (view.language == "de" or not view.ordinary(t) or view.gaz.is_name_word(t.core))) or \
                    (t.low in PARTICLES and first is not None):
                first, words, k = k, words + 1, k - 1
                continue
            break
        if first is not None and words >= 1:
            last = i - 1 if toks[i - 1].text not in {",", "("} else i - 2
            if toks[first].low in PARTICLES:
                first += 1
            if first <= last:
                yield view.span(toks[first], toks[last], PhiType.NAME, "birth", strong=True)


PLACE_PREPOSITIONS = {"in", "from", "to", "at", "near", "of", "via", "nach", "aus", "bei"}


def _ner_place_ok(view: TextView, words: list[Token]) -> bool:
    """The small model calls drugs and positions places ('on Protonix', 'in Trendelberg'): keep a
    GPE only after a place preposition, capitalised, not an abbreviation, not an ordinary word."""
    first = view.tokens.index(words[0])
    if first == 0 or view.tokens[first - 1].low not in PLACE_PREPOSITIONS:
        return False
    if ALLERGY_BEFORE.search(view.text[max(0, words[0].start - 30): words[0].start]) or any(
            DRUG_SUFFIX.search(t.low) for t in words):
        return False  # "allergic to Penicillin"
    return all(t.is_title_case and len(t.core) >= 3 and "'" not in t.core and "-" not in t.core
               and not view.common(t) and not ORDINARY_SUFFIX.search(t.low) for t in words)


def ner_entities(view: TextView) -> Iterator[PhiSpan]:
    """spaCy PERSON/GPE/LOC where the language has a model; filtered, since clinical text misleads it.

    Only on mixed-case text (the small English model tags nonsense on shouted notes), and never
    spans made of ordinary words ("Foley", "aline d/c'd").
    """
    artifacts = view.nlp_artifacts
    if artifacts is None or not getattr(artifacts, "entities", None) or view.case != "mixed":
        return
    for ent in artifacts.entities:
        # Presidio's artifacts carry its own names (GPE -> LOCATION); a plugged-in model may say PER/LOC
        label = {"PERSON": PhiType.NAME, "PER": PhiType.NAME, "GPE": PhiType.LOCATION, "LOC": PhiType.LOCATION,
                 "LOCATION": PhiType.LOCATION}.get(ent.label_)
        if label is None:
            continue
        words = [t for t in view.tokens if ent.start_char <= t.start < ent.end_char and t.is_word]
        if not words or any(view.common(t) or not t.capitalised or t.low in view.gaz.allow_terms
                            or "." in t.core for t in words):
            continue
        if label is PhiType.NAME and not any(view.gaz.is_name_word(t.core) for t in words) and len(words) < 2:
            continue
        if label is PhiType.NAME and (not any(view.gaz.is_name_word(t.core) for t in words) or any(
                view.ordinary(t) and not view.gaz.is_name_word(t.core) for t in words)
                or all(t.low in view.gaz.english_all for t in words)):
            continue  # "Kidney stones": a surname in some list, but here an English word
        if label is PhiType.LOCATION and not _ner_place_ok(view, words):
            continue
        yield view.span(words[0], words[-1], label, "ner", strong=False, score=0.6)


# --------------------------------------------------------------------------------------------
# Places
# --------------------------------------------------------------------------------------------

HOSPITAL_TAIL_IN = {"memorial", "regional", "rehab", "rehabilitation", "house", "va", "manor", "square",
                    "general", "home"}
HOSPITAL_TAIL_OUT = {"hospital", "hosp", "clinic", "campus", "medical", "health", "nursing", "infirmary"}
#: Keywords strong enough that the words before them are a name even in lower case ("sacred heart memorial").
HOSPITAL_STRONG = {"memorial", "regional", "hospital", "hosp", "va", "campus", "infirmary"}
#: Keywords after which a capitalised ordinary word still names a place ("Baltimore Rehab").
HOSPITAL_CAPITAL = {"rehab", "rehabilitation", "house", "manor", "square", "home"}
HOSPITAL_STOP = {"the", "a", "an", "to", "from", "at", "in", "into", "by", "of", "for", "with", "on", "and",
                 "or", "was", "is", "per", "via", "transferred", "transfered", "admitted", "sent", "taken",
                 "went", "go", "going", "back", "d/c'd", "discharged", "outside", "cardiac", "pulmonary",
                 "acute", "inpatient", "outpatient", "physical", "our", "this", "that", "his", "her", "their",
                 "local", "same", "other", "another", "er", "ed", "ew", "osh", "rehab", "hospital", "hosp", "@",
                 "leave", "left", "any", "begin", "awaiting", "poss", "possible", "possibly", "plan", "for"}
DE_HOSPITAL = re.compile(r"(?i)(?:universitäts|uni)?(?:klinikum|kliniken|klinik|krankenhaus|krankenhauses|"
                         r"spital|spitals|klinikums|reha-?zentrum|rehazentrum|praxis|kh|hospital)$")
HOSPITAL_ADJECTIVES = {"städt", "städtisches", "städtische", "evangelisches", "evangelische", "katholisches",
                       "katholische", "kath", "ev", "allgemeines", "akademisches", "kreis", "bezirks", "landes"}
DE_NAME_LINK = {"der", "des", "im", "am", "an", "st", "sankt", "ob", "bei", "zum", "zur", "vom", "von"}


def hospitals(view: TextView) -> Iterator[PhiSpan]:
    """Named hospitals and rehab centres: 'Sacred Heart Memorial', 'UNION HOSPITAL', 'Klinikum Neustadt'."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        low = tok.low
        if view.language == "de" and DE_HOSPITAL.search(tok.core) and tok.is_word:
            yield from _german_hospital(view, i)
            continue
        if "-" in low and low.split("-")[0] in HOSPITAL_TAIL_IN | HOSPITAL_TAIL_OUT:
            low = low.split("-")[0]  # "BALTIMORE VA-INTUBATED"
        if low not in HOSPITAL_TAIL_IN and low not in HOSPITAL_TAIL_OUT:
            continue
        if low in {"home", "house", "general", "medical", "health", "nursing"} and not (
                i + 1 < len(toks) and toks[i + 1].low in {"hospital", "hosp", "center", "centre"}) and low != "house":
            continue
        if low in {"house", "home"} and i > 0 and re.search(r"['’]s$", toks[i - 1].core):
            continue  # "Anne's house", "gwen smith's house": a person's home (possessive_homes)
        k, first = i - 1, None
        while k >= 0 and i - k <= 3 and toks[k].line == tok.line and toks[k].is_word and toks[k].low not in HOSPITAL_STOP \
                and not (toks[k].text.endswith(".") and not toks[k].is_initial):
            if view.case == "mixed" and not toks[k].capitalised and low not in HOSPITAL_STRONG:
                break
            if toks[k].low in STOP_WORDS or (k == i - 1 and ORDINARY_SUFFIX.search(toks[k].low)
                                              and not toks[k].is_title_case):
                break  # "HAD PROLONGED HOSPITAL STAY" (but "sacred heart hospital" is a name)
            if view.ordinary(toks[k]) and low not in HOSPITAL_STRONG and not (
                    low in HOSPITAL_CAPITAL and (view.case == "mixed" and toks[k].is_title_case
                                                 or view.case == "upper" and not view.common(toks[k]))):
                break
            first = k
            k -= 1
        if first is None:
            continue
        if i + 1 < len(toks) and toks[i + 1].low in {"course", "stay", "admission", "admissions", "discharge",
                                                        "day", "days", "policy", "bed", "records", "record"}:
            continue  # "BRIEF HOSPITAL COURSE", "prolonged hospital stay"
        last = i if low in HOSPITAL_TAIL_IN and "-" not in tok.low else i - 1
        yield view.span(toks[first], toks[last], PhiType.HOSPITAL, "hospital", strong=True)


def _german_hospital(view: TextView, i: int) -> Iterator[PhiSpan]:
    toks = view.tokens
    tok = toks[i]
    j, last = i + 1, None
    while j < len(toks) and toks[j].line == tok.line and j - i <= 5:
        t = toks[j]
        if t.low in DE_NAME_LINK and j + 1 < len(toks) and toks[j + 1].capitalised \
                and toks[j + 1].low not in TITLE_CHAIN:
            j += 1
            continue
        if t.low in STOP_WORDS or t.low in TITLE_CHAIN or (last is not None and toks[last].text.endswith(".")
                                                           and not toks[last].is_initial):
            break
        if t.is_word and t.capitalised and not DE_HOSPITAL.search(t.core) \
                and not re.search(r"(ung|heit|keit|ion|tät|schaft|logie|ik|ie)$", t.low):
            if not view.common(t) or t.low in view.gaz.cities:
                last = j
            elif not (j + 1 < len(toks) and toks[j + 1].capitalised and toks[j + 1].line == tok.line):
                break  # an ordinary word may only sit inside a name ("Klein Haasbeck")
            j += 1
            continue
        break
    compound_name = "-" in tok.core and any(p[:1].isupper() for p in tok.core.split("-")[:-1])
    if last is None and not compound_name:
        return
    first = tok
    if i > 0 and toks[i - 1].line == tok.line and (toks[i - 1].low in HOSPITAL_ADJECTIVES or (
            toks[i - 1].text.endswith(".") and toks[i - 1].is_title_case and len(toks[i - 1].core) >= 3)):
        first = toks[i - 1]  # "Städt. Klinikum", "Evangelisches Krankenhaus"
    yield view.span(first, toks[last] if last is not None else tok, PhiType.HOSPITAL, "hospital", strong=True)


SAINT = re.compile(rf"\b(?:St|ST|st|Saint|SAINT|Sankt|St\.-)\.?\s+(?P<name>[{L_UP}][{LETTER}]+|[{L_UP}]\.)")
#: Institutions named after a religious title ("Holy Cross", "Sacred Heart", "Holy Name"): the
#: adjective practically never stands before a capitalised word in clinical prose otherwise.
RELIGIOUS = re.compile(rf"(?i)\b(holy|sacred)\s+(?P<name>[{LETTER}]{{3,}})")
RELIGIOUS_OBJECTS = {"water", "communion", "oil", "oils", "spirit", "ghost", "bible", "book", "rosary", "rites",
                     "scripture", "week", "day", "days", "place", "ground"}
HOSPITAL_ABBR = re.compile(r"(?i:\b(?:to|at|from|in|into|@|by|via))\s+(?:(?i:the)\s+)?(?P<abbr>[A-Z]{1,3}H|[A-Z]{2,4}MC)\b")
WARD = re.compile(rf"(?i:\b(?:to|from|on|at|per|transfer|transferred|transfered|tx))\s+(?P<ward>[{LETTER}]{{5,}})\s?\d{{1,2}}\b"
                  r"(?!\s*(?:mg|mcg|cc|ml|l\b|%|x|u\b|units|meq|hr|h\b|/|:|\.\d|mm|min|am|pm|liters?))")


def saints_and_wards(view: TextView) -> Iterator[PhiSpan]:
    """'St. Agnes', 'ST MARY', 'Holy Family', 'to GH', 'transfer to Quartermain 2' (a named ward)."""
    gaz = view.gaz
    for m in RELIGIOUS.finditer(view.text):
        name = m.group("name")
        if name.lower() in STOP_WORDS or name.lower() in RELIGIOUS_OBJECTS \
                or (view.case == "mixed" and not (m.group(1)[0].isupper() and name[0].isupper())):
            continue
        yield PhiSpan(m.start(), m.end("name"), PhiType.HOSPITAL, 0.7, "religious", True)
    for m in SAINT.finditer(view.text):
        name = m.group("name").rstrip(".")
        if gaz.is_first(name) or len(name) == 1:
            yield PhiSpan(m.start(), m.end("name"), PhiType.HOSPITAL, 0.8, "saint", True)
    for m in HOSPITAL_ABBR.finditer(view.text):
        abbr = m.group("abbr").lower()
        if abbr not in gaz.allow_terms and abbr not in gaz.common and abbr not in gaz.english_words:
            yield PhiSpan(m.start("abbr"), m.end("abbr"), PhiType.HOSPITAL, 0.7, "hospital_abbr", True)
    for m in WARD.finditer(view.text):
        word = m.group("ward")
        after = re.match(r"\s*([A-Za-z']+)", view.text[m.end(): m.end() + 20])
        if after and after.group(1).islower() and after.group(1) not in {"in", "at", "when", "today", "this", "tomorrow", "if", "for",
                                                    "am", "pm", "tonight", "on", "and", "with", "bed"}:
            continue  # "reinsert 30 french", "recieve 1 bag": a quantity, not a ward number
        if view.ordinary(Token(m.start("ward"), m.end("ward"), word, 0)):
            continue
        if word.lower() not in gaz.common and word.lower() not in gaz.allow_terms and word.lower() not in gaz.english_words:
            yield PhiSpan(m.start("ward"), m.end("ward"), PhiType.HOSPITAL, 0.6, "ward", False)


LIVES = {"lives", "live", "living", "resides", "reside", "lived", "wohnhaft", "wohnt", "lebt", "gelebt",
         "vacationing", "wohnort"}


def places(view: TextView) -> Iterator[PhiSpan]:
    """Cities and states: after 'lives in'/'wohnhaft in', from gazetteers, in a letter's date line."""
    toks = view.tokens
    gaz = view.gaz
    for i, tok in enumerate(toks):
        # gazetteer cities (German lists) and US states, capitalised where case counts
        low = tok.low
        two = f"{low} {toks[i + 1].low}" if i + 1 < len(toks) else ""
        cities = gaz.cities if view.language == "de" else frozenset()
        if two in cities or two in gaz.states:
            if view.case != "mixed" or (tok.capitalised and toks[i + 1].capitalised):
                yield view.span(tok, toks[i + 1], PhiType.LOCATION, "city", strong=False)
            continue
        if tok.is_word and (low in cities or low in gaz.states) and (view.case != "mixed" or tok.capitalised):
            first = toks[i - 1] if i > 0 and re.fullmatch(r"[A-Z]", toks[i - 1].text) else tok  # "U Maryland"
            yield view.span(first, tok, PhiType.LOCATION, "city", strong=False)
            continue
        if view.case == "upper" and view.language == "en" and tok.is_word and tok.is_title_case \
                and len(tok.core) >= 4 and i > 0 and toks[i - 1].low in {"to", "in", "from", "at", "near"} \
                and toks[i - 1].core.isupper() and not view.common(tok) and low not in gaz.allow_terms \
                and not DRUG_SUFFIX.search(low) and not ORDINARY_SUFFIX.search(low):
            # "RETURN TO Baltimore TOMORROW": in a note typed in capitals, the one word written
            # otherwise after a place preposition was copied from somewhere (a place name)
            yield view.span(tok, tok, PhiType.LOCATION, "upper_note_place", strong=False)
            continue
        if low in LIVES:
            for j in range(i + 1, min(i + 9, len(toks))):
                if toks[j].text in {".", ";"} or toks[j].line != tok.line:
                    break
                if toks[j].low in {"in", "at", "nach", "bei"} or (low in {"wohnhaft", "wohnort"} and j == i + 1):
                    k = j + 1 if toks[j].low in {"in", "at", "nach", "bei"} else j
                    while k < len(toks) and re.fullmatch(r"[A-Z]{0,2}-?\d{4,5}-?", toks[k].text):
                        k += 1  # 'wohnhaft in A-9580-Villach'
                    if k < len(toks) and view.name_like(toks[k]) and toks[k].line == tok.line:
                        end = k + 1 if k + 1 < len(toks) and view.name_like(toks[k + 1]) and toks[k + 1].line == tok.line else k
                        yield view.span(toks[k], toks[end], PhiType.LOCATION, "lives_in", strong=True)
                        break
    # "Flensburg, 27. März 2025", "Berlin, den 22.06.2032" at the start of a line
    for m in LETTER_PLACE_DATE.finditer(view.text) if view.language == "de" else ():
        city = m.group("city")
        if view.common_word(city.split()[0]) or (not m.group("comma") and city.lower() not in gaz.cities) \
                or GERMAN_NOUN_SUFFIX.search(city.lower()):
            continue
        yield PhiSpan(m.start("city"), m.end("city"), PhiType.LOCATION, 0.8, "letter_date", True)


LETTER_PLACE_DATE = re.compile(
    rf"(?m)^[ \t]*(?P<city>[{L_UP}][{LETTER}\-]+(?:[ \-][{L_UP}][{LETTER}]+)?)(?:\s*\([A-Z]{{2}}\))?(?P<comma>,?)\s+"
    rf"(?:den|am)?\s*\d{{1,2}}\.\s?(?:\d{{1,2}}\.\s?\d{{2,4}}|[{L_UP}][{L_LOW}]+\.?\s\d{{4}})")

#: Endings of German common nouns that place names do not have ("Anlage", "Untersuchung", "Thrombose").
GERMAN_NOUN_SUFFIX = re.compile(r"(?:ung|ungen|ion|ie|ik|ose|ium|tät|ektomie|tomie|graphie|anlage|ismus|heit|keit)$")
STREET_DE = re.compile(
    rf"(?<![{LETTER}\-])(?P<street>(?:[{L_UP}][{LETTER}]*-)*[{L_UP}][{LETTER}]*"
    rf"(?:straße|strasse|strße|str\.|weg|allee|platz|gasse|ring|damm|pfad|ufer|kamp|markt|chaussee|steig|graben|zeile|promenade)"
    rf"|(?:[{L_UP}][{L_LOW}]+(?:er|e|sche|sches)\s)(?:Str\.|Straße|Strasse|Allee|Weg|Platz|Landstraße|Gasse|Ring)"
    rf"|(?:[{L_UP}][{LETTER}]*-)+(?:Straße|Strasse|Str\.|Weg|Platz|Gasse|Allee|Ring|Damm|Ufer))"
    r"\.?\s*(?P<no>\d{1,4}\s?[a-zA-Z]?\b)(?:\s?-\s?\d{1,4})?")
STREET_DE_PREP = re.compile(  # "Am Waldsaum 21" at a line start or after a comma
    rf"(?m)(?:^|(?<=, ))[ \t]*(?:Am|An der|Im|In der|Auf der|Zum|Zur|Unter den)\s[{L_UP}][{L_LOW}]+\s\d{{1,3}}\s?[a-z]?\b(?!\s*[A-Z]{{2}})")
STREET_DE_BARE = re.compile(rf"(?<![{LETTER}\-])(?:[{L_UP}][{LETTER}]*-)*[{L_UP}][{L_LOW}]*(?:straße|strasse|gasse|allee)(?=\s*,)")
STREET_EN = re.compile(
    rf"\b\d{{1,5}}[ \t]+(?:[{L_UP}][{L_LOW}]+[ \t]+){{1,2}}(?:St|Street|Ave|Avenue|Rd|Road|Blvd|Boulevard|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl|Terrace|Circle)\b\.?")
ZIP_CITY = re.compile(
    rf"(?P<zip>\b(?:D-|A-|CH-)?\d{{5}}\b|\b(?:A|CH)-\d{{4}}\b|(?<![\d.,/])\b\d{{4}}\b)(?:[ \t]+|-)(?P<city>[{L_UP}][{LETTER}]+(?:[ \t-](?:[{L_UP}][{LETTER}]+|an der|am|im|ob der|bei)(?:\s[{L_UP}][{LETTER}]+)?)?(?:\s\([A-Z]{{2}}\))?)")
#: "from ANNAPOLIS, MD", "in hampton,ma": a place preposition, a city, a state code that is not also a
#: clinical abbreviation (ID, PA, CT, MI, MS, SC and OR are left out on purpose).
CITY_STATE = re.compile(
    rf"(?i:\b(?:from|in|to|at|near|of)\s+)(?P<city>[{LETTER}]{{4,}}(?:\s[{LETTER}]+)?),\s?(?i:ak|az|ca|fl|ga|il|ia|ks|"
    r"ky|md|ma|mn|mo|mt|nv|nh|nj|nm|ny|nc|nd|oh|ri|sd|tn|tx|ut|vt|va|wa|wv|wi|wy)\b(?![\w/])")
US_STATE_ZIP = re.compile(
    r"\b(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|"
    r"OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)\s+\d{5}(?:-\d{4})?\b")


def addresses(view: TextView) -> Iterator[PhiSpan]:
    """Streets with house numbers, postcodes with their city, US 'ST 12345'."""
    text = view.text
    if view.language == "de":
        for m in STREET_DE.finditer(text):
            yield PhiSpan(m.start(), m.end(), PhiType.ADDRESS, 0.85, "street", True)
        for m in STREET_DE_PREP.finditer(text):
            yield PhiSpan(m.start(), m.end(), PhiType.ADDRESS, 0.7, "street", True)
        for m in STREET_DE_BARE.finditer(text):
            yield PhiSpan(m.start(), m.end(), PhiType.ADDRESS, 0.7, "street", True)
    for m in STREET_EN.finditer(text) if view.language == "en" else ():
        yield PhiSpan(m.start(), m.end(), PhiType.ADDRESS, 0.85, "street", True)
    for m in ZIP_CITY.finditer(text) if view.language == "de" else ():
        before = text[max(0, m.start() - 12): m.start()]
        city = m.group("city")
        zip_code = m.group("zip")
        plain4 = re.fullmatch(r"\d{4}", zip_code) is not None
        context = re.search(r"(^|\n|,|:|in|wohnhaft|\d[a-z]?)\s*$", before) is not None or before == ""
        city_known = city.split()[0].lower() in view.gaz.cities
        if view.common_word(city.split()[0]) and not city_known and len(city.split()) == 1:
            continue
        if plain4 and not (city_known or re.search(r":\s*$", before)):
            continue
        if GERMAN_NOUN_SUFFIX.search(city.split()[0].lower()):
            continue  # "2044 TIPS-Anlage", "1990 Tonsillektomie": a year before a noun
        if not (context or city_known):
            continue
        yield PhiSpan(m.start("zip"), m.end("zip"), PhiType.ADDRESS, 0.8, "zip", True)
        yield PhiSpan(m.start("city"), m.end("city"), PhiType.LOCATION, 0.8, "zip_city", True)
    if view.language == "en":
        for m in CITY_STATE.finditer(text):  # "ANNAPOLIS, MD", "Hampton, MA"
            if not view.common_word(m.group("city").split()[0]):
                yield PhiSpan(m.start("city"), m.end("city"), PhiType.LOCATION, 0.7, "city_state", True)
    for m in US_STATE_ZIP.finditer(text):
        yield PhiSpan(m.start(), m.end(), PhiType.ADDRESS, 0.7, "us_zip", True)


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


YEAR_DE = re.compile(r"(?<![\d.,:/\-])\b(?P<y>(?:19|20)\d{2})\b(?![\d:]|[.,]\d|\s*(?:mg|µg|ug|ml|ie|i\.e\.|u\b|cc|g\b|kg|mcg|"
                     r"mmol|einheiten|e\b|m\b|cm|mm|x\b|stk|tbl|tabl|%))", re.I)
MONTH_WORD_DE = re.compile(r"\b(?:Januar|Jänner|Februar|März|April|Mai|Juni|Juli|August|September|Oktober|November|"
                           r"Dezember)\b")
MONTH_WORD_EN = re.compile(r"\b(?:January|February|April|June|July|August|September|October|November|December|"
                           r"JANUARY|FEBRUARY|MARCH|APRIL|JUNE|JULY|AUGUST|SEPTEMBER|OCTOBER|NOVEMBER|DECEMBER)\b")
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
    for m in ORDINAL_DAY.finditer(view.text):
        yield PhiSpan(m.start("d"), m.end("d"), PhiType.DATE, 0.6, "day", True)


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
    r"sv-?nr\.?|sv(?=\s*:)|sozialversicherungs-?nr\.?|sozialversicherungsnummer|histologie|histo-?nr\.?))"
    r"\s*[:#.]?\s*(?:Nr\.?\s*[:.]?\s*)?(?P<id>[A-Z]{0,4}[-/ ]?\d[\dA-Za-z]*(?:[-/.][\dA-Za-z]+)*)")
ROOM_TRIGGER = re.compile(
    r"(?:\b|(?<=-))(?:Station|Stat\.|Ambulanz|Zimmer|Zi\.?|Raum|Bett|OP|Intensiv|Room|Rm\.?|Bed(?!\.)|Ward|Intensivstation|"
    r"Onkologie|Chirurgie|Kardiologie|Neurologie|Psychiatrie|Pädiatrie|Urologie|Gynäkologie|Dermatologie)"
    r"\s*[:.]?\s*(?P<id>[A-Z]{1,4}-?\d{1,4}[a-z]?\b|\d{1,4}[A-Z]?\b|[IVX]{1,4}\b)(?!\s*(?:mg|ml|%|h\b|Uhr|Tage|x))")


WARD_CODE_DE = re.compile(r"\b(?:auf|zur|nach)\s+(?:der\s+)?(?P<id>[A-Z]{1,5}-?\d{1,3}[a-z]?)\b(?![.,]\d)")


def identifiers(view: TextView) -> Iterator[PhiSpan]:
    """Record/case/accession numbers after a trigger word, and named wards/rooms/beds."""
    if view.language == "de":
        for m in WARD_CODE_DE.finditer(view.text):  # "auf PSY13", "zuvor auf KJPP-2"
            yield PhiSpan(m.start("id"), m.end("id"), PhiType.ID, 0.6, "room", True)
    for m in ID_TRIGGER.finditer(view.text):
        value = m.group("id")
        if sum(c.isdigit() for c in value) >= 3 or re.search(r"[A-Za-z]", value):
            if sum(c.isdigit() for c in value) >= 2:
                yield PhiSpan(m.start("id"), m.end("id"), PhiType.ID, 0.9, "id", True)
    for m in ROOM_TRIGGER.finditer(view.text):
        yield PhiSpan(m.start("id"), m.end("id"), PhiType.ID, 0.6, "room", True)


PHONE_TRIGGER = re.compile(
    r"(?i:\b(?:pager|pg|beeper(?:\snumber)?|beep|phone(?:\snumber)?|tel|telephone|telefon|cell|cellular|home|work|"
    r"mobile?|mobil|handy|fax|telefax|durchwahl|info|rufnummer|nummer|number|unter|reached\sat|call\sat|call)"
    r"\.?(?:\s?(?:no\.?|#|nr\.?))?)[\s:#.\-]*(?P<phone>\+?\(?\d[\d()\s/.\-–]{3,}\d(?:\s?o\.\s?\d+)?)")
PHONE_US = re.compile(r"(?<![\d/.-])(?:\(\d{3}\)\s?|\b\d{3}[\s.-]?)?\d{3}-\d{4}\b(?![-/]\d)")  # "202555-0123" too
PHONE_DE = re.compile(
    r"(?<![\d.,/])(?:\+\d{2}\s?(?:\(0\)\s?)?\(?\d{1,4}\)?|\(0\d{2,5}\)|\b0\d{2,5})(?:\s?[/\-–]\s?|\s)\d[\d\s\-–]{2,}\d(?![\d.,])")


def phones(view: TextView) -> Iterator[PhiSpan]:
    """Phone, fax and pager numbers: with a trigger word, or in an unmistakable phone shape."""
    for m in PHONE_TRIGGER.finditer(view.text):
        value = m.group("phone").rstrip(" -–/")
        digits = sum(c.isdigit() for c in value)
        trigger = m.group(0)[: m.start("phone") - m.start()].lower()
        if re.fullmatch(r"\d{1,2}[./]\d{1,2}[./]\d{2,4}|\d{1,3}/\d{1,3}", value):
            continue  # a date or a blood pressure, not a number to call
        first_word = re.split(r"[\s.:#-]", trigger.strip(), maxsplit=1)[0]
        needed = 7 if first_word in {"unter", "nummer", "number", "call", "home", "work", "info", "reached"} else 4
        if digits >= needed:
            yield PhiSpan(m.start("phone"), m.start("phone") + len(value), PhiType.PHONE, 0.85, "phone", True)
    for regex in (PHONE_US, PHONE_DE):
        for m in regex.finditer(view.text):
            times = re.fullmatch(r"(\d{3,4})-(\d{4})", m.group())
            if times and all(int(t) <= 2400 and int(t[-2:]) < 60 for t in times.groups()):
                continue  # "900-1300": a time range
            if sum(c.isdigit() for c in m.group()) >= 7:
                yield PhiSpan(m.start(), m.end(), PhiType.PHONE, 0.7, "phone_shape", True)


URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", re.I)


def urls(view: TextView) -> Iterator[PhiSpan]:
    """Web addresses with a scheme or www. (Presidio's URL recognizer takes 'secretions.no' for one)."""
    for m in URL.finditer(view.text):
        yield PhiSpan(m.start(), m.end(), PhiType.URL, 0.9, "url", True)


# --------------------------------------------------------------------------------------------
# Rule registry, Presidio wrapper
# --------------------------------------------------------------------------------------------

EMPLOYER = re.compile(
    r"(?i:\b(?:works?|worked|working|employed|employee|retired|job|ceo|president|owner|manager|engineer|"
    r"consultant|executive)\s+(?:at|for|by|from|of)\s+(?:the\s+)?)(?P<org>[A-Z][\w&-]*(?: [A-Z][\w&-]*){0,2})")


def employers(view: TextView) -> Iterator[PhiSpan]:
    """'works for Acme Corp', 'HUSBAND CEO OF ACME': a named employer after a work phrase."""
    for m in EMPLOYER.finditer(view.text):
        words = m.group("org").split(" ")
        keep = []
        for word in words:
            low = word.lower()
            if low in view.gaz.common or low in STOP_WORDS or low in view.gaz.allow_terms or ORDINARY_SUFFIX.search(low):
                break
            keep.append(word)
        if not keep or (view.case == "mixed" and not any(w[0].isupper() for w in keep)):
            continue
        end = m.start("org") + len(" ".join(keep))
        yield PhiSpan(m.start("org"), end, PhiType.ORGANIZATION, 0.6, "employer", True)


HOME_WORDS = {"house", "home", "apartment", "apt", "place", "farm", "condo", "trailer"}


def possessive_homes(view: TextView) -> Iterator[PhiSpan]:
    """"staying at ann kowalski's house": a first name (broad list) and a surname before 's + home."""
    toks = view.tokens
    for i, tok in enumerate(toks):
        if not tok.is_word or not re.search(r"['’]s$", tok.core) or i + 1 >= len(toks) \
                or toks[i + 1].low not in HOME_WORDS or toks[i + 1].line != tok.line:
            continue
        surname = re.sub(r"['’]s$", "", tok.core)
        if view.gaz.is_first(surname) and not view.common_word(surname) and len(surname) >= 3 \
                and (view.case != "mixed" or surname[:1].isupper()):
            yield PhiSpan(tok.start, tok.start + len(surname), PhiType.NAME, 0.7, "possessive_home", True)
            continue  # "at Anne's house"
        first = toks[i - 1] if i > 0 and toks[i - 1].line == tok.line else None
        if first is None or not first.is_word or len(first.core) < 3 or first.low in STOP_WORDS \
                or not view.gaz.is_any_first(first.core) or len(surname) < 3:
            continue
        if view.case == "mixed" and not (first.capitalised and surname[:1].isupper()):
            continue
        if surname.lower() in view.gaz.common and surname.lower() not in view.gaz.last_names:
            continue
        yield PhiSpan(first.start, tok.start + len(surname), PhiType.NAME, 0.7, "possessive_home", True)


Rule = Callable[[TextView], Iterable[PhiSpan]]

#: name -> (rule, languages). German runs everything except spaCy NER unless a German model is set.
RULES: dict[str, tuple[Rule, frozenset[str]]] = {
    "dates": (dates, frozenset({"en", "de"})),
    "ages": (ages, frozenset({"en", "de"})),
    "identifiers": (identifiers, frozenset({"en", "de"})),
    "phones": (phones, frozenset({"en", "de"})),
    "urls": (urls, frozenset({"en", "de"})),
    "addresses": (addresses, frozenset({"en", "de"})),
    "hospitals": (hospitals, frozenset({"en", "de"})),
    "saints_and_wards": (saints_and_wards, frozenset({"en", "de"})),
    "places": (places, frozenset({"en", "de"})),
    "employers": (employers, frozenset({"en"})),
    "title_names": (title_names, frozenset({"en", "de"})),
    "relation_names": (relation_names, frozenset({"en", "de"})),
    "credential_names": (credential_names, frozenset({"en", "de"})),
    "family_names": (family_names, frozenset({"en", "de"})),
    "parenthesised_relation_names": (parenthesised_relation_names, frozenset({"en", "de"})),
    "initial_names": (initial_names, frozenset({"en", "de"})),
    "patient_names": (patient_names, frozenset({"en", "de"})),
    "birth_names": (birth_names, frozenset({"en", "de"})),
    "first_name_verbs": (first_name_verbs, frozenset({"en", "de"})),
    "possessive_homes": (possessive_homes, frozenset({"en"})),
    "gazetteer_names": (gazetteer_names, frozenset({"en", "de"})),
    "ner_entities": (ner_entities, frozenset({"en", "de"})),
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


def context_vetoed(span: PhiSpan, text: str) -> bool:
    """Eponyms in use: 'Morbus Crohn', 'Parkinson's disease', 'Foley catheter', 'Blake drain', 'Bard Parker blade'."""
    if span.strong or span.label is not PhiType.NAME:
        return False
    before = text[max(0, span.start - 12): span.start].lower()
    after = text[span.end: span.end + 14].lower()
    return bool(re.search(r"(morbus|mb\.|m\.)\s*$", before) or
                re.match(r"['’]?s?[\s-]*(disease|syndrome|syndrom|krankheit|sign|zeichen|catheter|katheter|"
                         r"scale|score|test|tumor|tumour|lymphoma|lymphom|reflex|procedure|drains?|retractors?|forceps|"
                         r"clamps?|scissors|elevator|dilators?|tubes?|needles?|stitch|sutures?|maneuver|manoeuvre|"
                         r"blades?|knife|scalpel)", after))


def resolve_overlaps(spans: list[PhiSpan]) -> list[PhiSpan]:
    """Keep a non-overlapping set: higher type priority, then strong over weak, longer, higher score.

    Presidio breaks ties arbitrarily; the prototype turned a date into a phone-shaped number that
    way (pipeline.md A.4), so the order is explicit. A kept span absorbs overlapping spans of the
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
