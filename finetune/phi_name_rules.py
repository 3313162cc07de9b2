"""PHI rules for person names: titles, relations, credentials, initials, gazetteers, NER.

Names are the hardest PHI class in clinical notes (eponyms, all-caps ICU notes, nicknames), so
every rule says which evidence it needs: a trigger word makes a span strong, a gazetteer hit alone
stays weak and can be vetoed by the allow-list (see ``finetune.phi_recognizers``).
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from finetune.phi_text import (
    DE_HOSPITAL,
    DRUG_SUFFIX,
    ORDINARY_SUFFIX,
    STOP_WORDS,
    TITLE_CHAIN,
    TITLES,
    PhiSpan,
    TextView,
    Token,
)
from finetune.phi_types import PhiType
from finetune.phi_vocabulary import load_vocabulary

# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

#: Titles that are also ordinary abbreviations (MS = mental status, PA = pulmonary artery): they
#: count only when the next word is a known name.
WEAK_TITLES = {"ms", "np", "pa", "md", "ho", "oa", "oä", "pd", "rn", "ass", "gez", "chefarzt", "oberarzt",
               "oberärztin", "assistenzarzt", "assistenzärztin", "stationsarzt", "stationsärztin",
               "primar", "primaria", "primarin", "nurse", "attending", "pcp", "doctor", "docter"}
ENGLISH_TITLES = {"mr", "mrs", "ms", "miss", "mister", "np", "pa", "md", "ho", "rn", "nurse", "attending",
                  "pcp", "doctor", "docter"}
#: Titles that are also clinical abbreviations; they count only as "Hr.", "Fr.", "Sr.", "Mag.".
DOTTED_TITLES = {"hr", "fr", "sr", "mag"}
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
        elif _initial_in_name_context(view, i):
            yield view.span(a, b, PhiType.NAME, "initial_context", strong=True)


#: Words before an initial + surname that introduce a person ("CVL BY V. MUPNZANA", "reported to
#: s. kimachu", "per J. Best") and words that cannot be the surname there (sides, sites, germs).
INITIAL_NAME_BEFORE = {"by", "to", "per", "with", "and", "dr", "called", "paged", "notified", "informed", "spoke"}
INITIAL_NOT_SURNAME = {"fem", "line", "ac", "wall", "head", "back", "hand", "long", "short", "side", "arm", "leg",
                       "foot", "upper", "lower", "lat", "med", "ant", "post", "coli", "aureus", "diff", "pylori", "fib",
                       "flutter", "flut", "tach"}


def _initial_in_name_context(view: TextView, i: int) -> bool:
    """An initial + word after a word that introduces a person, or before a credential ('A. Rock RRT'):
    the surname need not be known, only not clinical (or a known surname that is also a word, 'Best')."""
    toks = view.tokens
    a, b = toks[i], toks[i + 1]
    before = toks[i - 1].low.rstrip(".:,") if i > 0 and toks[i - 1].line == a.line else ""
    k = i + 3 if i + 2 < len(toks) and toks[i + 2].text == "," else i + 2  # "Q. White, RRT"
    after = toks[k].low.strip(".,") if k < len(toks) and toks[k].line == b.line else ""
    if not (before in INITIAL_NAME_BEFORE or after in CREDENTIALS) or not b.is_word or len(b.core) < 2:
        return False
    if b.low in INITIAL_NOT_SURNAME or b.low in TITLE_CHAIN or b.low in STOP_WORDS:
        return False
    vocab = load_vocabulary(view.language)
    return vocab.is_unknown(b.low) or view.gaz.is_name_word(b.core)


#: A staff role, a comma, one or two words, a comma: "notified wound nurse, esteri golden, and",
#: "met with clinical rn specialist, Xaliq John, today".
ROLE_APPOSITION = re.compile(
    r"(?i)\b(?:nurse|specialist|coordinator|therapist|worker|manager|rn|np|pa|resident|fellow|attending|chaplain|"
    r"dietician|dietitian|pharmacist|intern)\s*,\s+(?P<name>[^\W\d_]{2,}(?:\s+[^\W\d_]{2,})?)\s*,")


def role_apposition_names(view: TextView) -> Iterator[PhiSpan]:
    """A name set off by commas after a staff role; each word must be unknown to the vocabularies or a
    known name ("golden" as a surname), never a clinical word ("nurse, pt, and family")."""
    vocab = load_vocabulary(view.language)
    for m in ROLE_APPOSITION.finditer(view.text):
        words = m.group("name").split()
        if any(w.lower() in STOP_WORDS or w.lower() in NOT_A_NAME for w in words):
            continue
        known = [view.gaz.is_name_word(w) for w in words]
        unknown = [vocab.is_unknown(w.lower()) for w in words]
        if all(k or u for k, u in zip(known, unknown)) and (any(unknown) or all(known)):
            yield PhiSpan(m.start("name"), m.end("name"), PhiType.NAME, 0.8, "role_apposition", True)


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
        name_is = tok.low == "name" and j < len(toks) and toks[j].low == "is"  # "her name is Slamet Mahlaba"
        j += name_is
        if j >= len(toks) or toks[j].line - tok.line > 2:
            continue
        end = _name_sequence(view, j, max_words=3, any_case=name_is)  # "name is matiu raigne"
        if end is None or not (toks[j].capitalised or name_is):
            continue
        after = {t.low for t in toks[end + 1: end + 4]} | {t.text for t in toks[end + 1: end + 3]}
        known = view.gaz.is_name_word(toks[j].core) or any(view.gaz.is_first(t.core) for t in toks[j:end + 1])
        unknown = name_is and not any(view.ordinary(t) for t in toks[j:end + 1])
        if known or unknown or after & BIRTH_CONTEXT:
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


#: Titles that introduce nothing but a person: the word after them is a surname whatever else it
#: means ("Dr. Story", "mr Page", "DR LITTLE"). In the development notes every word after them was one.
PERSON_TITLES = {"dr", "drs", "mr", "mrs", "mister", "herr", "herrn", "frau"}
#: German words that follow "Herr"/"Frau" without being a name.
GERMAN_ROLE_WORDS = {"doktor", "oberarzt", "oberärztin", "chefarzt", "chefärztin", "professor", "professorin",
                     "kollege", "kollegin", "patient", "patientin", "pfarrer", "direktor", "direktorin", "primar",
                     "primaria", "und", "oder", "bzw"}
#: What may follow a title without being a name ("Dr. aware", "MR 2+", "Dr. in the morning").
NOT_A_NAME = {"aware", "notified", "paged", "called", "informed", "updated", "here", "office", "orders", "order", "note",
              "notes", "team", "service", "services", "on", "call", "made", "wants", "said", "says", "will", "would",
              "was", "is", "has", "had", "and", "or", "in", "at", "to", "of", "the", "re", "med", "kollege", "kollegin"}


def titled_words(view: TextView) -> Iterator[PhiSpan]:
    """The word right after a person's title is a name even when it is an ordinary word ("Dr. Story",
    "Herrn spain"), in any case. "MR" is also mitral regurgitation: in capitals the word after it must
    not be an ordinary word (it may still be a known name).
    """
    toks = view.tokens
    for i, tok in enumerate(toks):
        low = tok.low
        if low not in PERSON_TITLES or i + 1 >= len(toks):
            continue
        if view.case == "mixed" and tok.core.isupper() and low != "dr":
            continue  # "MR" in a mixed-case note is mitral regurgitation
        j = i + 1
        while j < len(toks) and toks[j].text in {".", ":"} and toks[j].line == tok.line:
            j += 1
        if j + 1 < len(toks) and toks[j].line == tok.line and len(toks[j].core) == 1 and toks[j].core.isalpha() \
                and toks[j + 1].line == tok.line and toks[j + 1].is_word:
            j += 1  # an initial first: "Frau l wandera", "Dr. H. Habibov"
        if j >= len(toks) or toks[j].line != tok.line or not toks[j].is_word or len(toks[j].core) < 2:
            continue
        nxt = toks[j]
        if nxt.low in STOP_WORDS or nxt.low in TITLE_CHAIN or nxt.low in NOT_A_NAME or nxt.low in RELATIONS \
                or nxt.low in CREDENTIALS:
            continue
        if view.language == "de" and (nxt.low in GERMAN_ROLE_WORDS or DE_HOSPITAL.search(nxt.core)):
            continue  # "Herr Oberarzt", "Frau Doktor"
        cautious = low in {"mr", "mrs"} and view.case != "mixed"
        if cautious and view.ordinary(nxt) and not view.gaz.is_name_word(nxt.core):
            continue
        first = toks[j - 1] if j > i + 1 and len(toks[j - 1].core) == 1 and toks[j - 1].core.isalpha() else nxt
        yield view.span(first, nxt, PhiType.NAME, "titled_word", strong=True)


def relation_capitalised(view: TextView) -> Iterator[PhiSpan]:
    """In mixed case, a capitalised word right after a relation is the relative's name ("daughter Good in")."""
    if view.case != "mixed" or view.language == "de":
        return
    toks = view.tokens
    for i, tok in enumerate(toks[:-1]):
        nxt = toks[i + 1]
        if tok.low not in RELATIONS or nxt.line != tok.line or not nxt.is_word or not nxt.is_title_case \
                or len(nxt.core) < 3 or view.text[tok.end:nxt.start] not in (" ", ", ", ": "):
            continue
        if nxt.low in STOP_WORDS or nxt.low in RELATIONS or nxt.low in TITLE_CHAIN or nxt.low in CREDENTIALS \
                or nxt.low in NOT_A_NAME or nxt.low in view.gaz.allow_terms:
            continue
        yield view.span(nxt, nxt, PhiType.NAME, "relation_capital", strong=True)
