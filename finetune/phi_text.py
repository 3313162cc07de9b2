"""The per-text view every PHI rule reads: spans, tokens, case style, language and gazetteers.

Tokenizing once per text and sharing the view keeps ~20 rules cheap; the letter classes cover
Latin-1 and Latin Extended-A so German and Eastern European names tokenize as words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from finetune.phi_gazetteers import Gazetteers
from finetune.phi_types import PhiType

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
# Word lists shared by the name and place rules
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


def _stop_words() -> frozenset[str]:
    from spacy.lang.de.stop_words import STOP_WORDS as DE_STOP
    from spacy.lang.en.stop_words import STOP_WORDS as EN_STOP

    return frozenset(w.lower() for w in (*EN_STOP, *DE_STOP))


#: Function words: never a surname, even capitalised right after a title.
STOP_WORDS = _stop_words()

DRUG_SUFFIX = re.compile(r"(?:cillin|mycin|micin|floxacin|cycline|pril|sartan|olol|dipine|azole|statin|prazole|"
                         r"tidine|triptan|mab|nib|azepam|barbital|caine|phylline|sone|olone|parin|formin|gliptin)$")
DE_HOSPITAL = re.compile(r"(?i)(?:universitäts|uni)?(?:klinikum|kliniken|klinik|krankenhaus|krankenhauses|"
                         r"spital|spitals|klinikums|reha-?zentrum|rehazentrum|praxis|kh|hospital)$")
