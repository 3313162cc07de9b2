"""The allow-list layer: a word nobody listed as safe, standing where a name or a place can stand, is PHI.

Gazetteer and trigger rules find the names they were written for; this rule finds the rest the way
Philter does, by exclusion. Every word is looked up in ``finetune.phi_vocabulary``: a safe word (or
an inflection, a German compound, an obvious misspelling of one) stays; a word that is on no safe
list is masked, as a place after a place preposition and as a name otherwise. It does not need to
have seen the name, so names from any country, in any case, misspelt or not, are caught.

What keeps its precision: clinical shorthand collected from non-PHI notes is on the safe list;
words without a vowel ("sxn", "drsg") and numbers are never names; words of fewer than three
letters need a trigger rule; eponyms in use ("Quinton catheter") are vetoed by the shared context
check. Spans are weak evidence unless the word is a known name, so the allow-list of eponyms still
applies.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from finetune.phi_name_rules import CREDENTIALS, DOTTED_TITLES, RELATIONS
from finetune.phi_name_shape import load_name_shape
from finetune.phi_text import STOP_WORDS, TITLE_CHAIN, TITLES, PhiSpan, TextView, Token
from finetune.phi_types import PhiType
from finetune.phi_vocabulary import load_vocabulary

#: Place prepositions ("lives in", "transferred from"); "to" counts only after a transfer verb.
PLACE_BEFORE = {"in", "from", "at", "into", "near", "via", "@", "nach", "aus", "bei", "towards", "outside"}
MIN_LETTERS = 3
#: Hospital units ("MICU", "TSICU", "CSRU", "PACU"): shorthand, never a name or a place.
UNIT_NAME = re.compile(r"(?i)^[a-z]{0,3}(?:icu|ccu|cu|ru|pacu)$")
#: A lower-case letter followed by a capital inside a word ("CaGluconate", "ReNeph", "EPstudy" reads
#: the other way) marks a product or glued shorthand; names do it only after Mc, Mac, De, Di, La...
_CAMEL = re.compile(r"[a-zäöü][A-ZÄÖÜ]|^[A-Z]{2,}[a-z]")
_NAME_PREFIX = re.compile(r"^(?:Mc|Mac|De|Di|Da|Du|La|Le|Van|Von|Fitz|St)[A-Z][a-z]")
_VOWEL = re.compile(r"[aeiouyäöüàáâãåæèéêëìíîïòóôõøùúûýÿāăąēėęěīįıōőœūůűų]", re.IGNORECASE)


#: Words right before a name: titles and roles ("per", "spoke with", "house officer", "resident").
NAME_BEFORE = {"dr", "drs", "doctor", "per", "nurse", "rn", "np", "pa", "md", "ho", "resident", "fellow",
               "intern", "attending", "officer", "pcp", "cardiologist", "surgeon", "mr", "mrs", "ms", "miss", "herr",
               "herrn", "frau", "patient", "patientin", "name", "called", "paged", "notified", "informed", "told",
               "asked", "messaged", "gez", "prof", "oa", "oä", "fa", "fä", "assistenzarzt", "assistenzärztin",
               "oberarzt", "oberärztin", "chefarzt", "chefärztin", "stationsarzt", "stationsärztin", "orthoptistin",
               "orthoptist", "psychologin", "psychologe", "physiotherapeutin", "physiotherapeut", "pat", "liebe",
               "lieber", "kollegin", "kollege", "doz", "primarin", "primar", *RELATIONS}
#: Words right after a name ("Kipkosgei aware", "Snell, RN", "Ultaigh (daughter)").
NAME_AFTER = {"aware", "notified", "paged", "called", "informed", "updated", "rn", "md", "np", "pa", "rrt", "ho",
              "visited", "came", "spoke", "said", "states", "stated", "agrees", "consented", "wants", "wishes",
              "requests", *CREDENTIALS, *RELATIONS}
#: Ordinary words that are also common surnames but in a note follow "aware"-like words or roles as
#: anything but a person ("MD AWARE", "pt called", "charge nurse aware").
NOT_NAMES = {"team", "family", "md", "rn", "nurse", "doctor", "staff", "pt", "patient", "charge", "house", "son", "wife",
             "daughter", "husband", "sister", "brother", "mother", "father", "parents", "resident", "fellow",
             "attending", "surgeon", "service", "unit", "floor", "will", "may", "can", "also", "all", "both", "who",
             "then", "now", "here", "there", "today", "tonight", "again", "well",
             "cardiology", "renal", "surgery", "medicine", "neuro", "ortho", "micu", "ccu", "icu", "ed", "er", "or"}
#: Phrases that end right before a name ("spoke with", "seen by", "d/w", "case manager", "signed out to").
NAME_PHRASE_BEFORE = re.compile(
    r"(?i)(?:\b(?:spoke|spoken|talked|discussed|d/w|dw|consulted|met|conferred)\s*(?:with|w/?|to)?|"
    r"\b(?:seen|evaluated|examined|assessed|covered|followed|called|paged|visited|reviewed|started|ordered)\s+by|"
    r"\b(?:house\s+officer|case\s+manager|social\s+worker|sw|slp|rrt|chaplain|covering|attending|"
    r"intern|resident|fellow|nurse\s+practitioner|dietitian|nutritionist|pharmacist)|"
    r"\b(?:signed|sign|handed)\s+(?:out|over)\s+to|\b(?:page|call|message|msg|phone\s+call)\s+(?:from|to|for)|"
    r"\b(?:message|msg|voicemail|vm)\s+(?:left\s+)?(?:for|with)|"
    # German sign-off lines: "Geschrieben von", "diktiert durch OA", "Befund freigegeben von"
    r"\b(?:geschrieben|diktiert|freigegeben|vidiert|erstellt|unterschrieben|unterzeichnet|gezeichnet)\s+(?:von|durch)"
    r"(?:\s+(?:OA|OÄ|FA|FÄ|CA|Dr\.?|Prof\.?))?)\s*[:.,]?\s*$")
#: After a name: the service its bearer works for ("kathy from case management", "dumitra jahm from speech and
#: swallow", "Rhinehart from PT called").
SERVICE_AFTER = re.compile(
    r"(?i)[ \t]+from[ \t]+(?:the[ \t]+)?(?:speech|swallow|pt\b|ot\b|physical[ \t]+therapy|occupational[ \t]+therapy|"
    r"nutrition|dietary|social[ \t]+work|sw\b|case[ \t]+management|cm\b|pharmacy|respiratory|rt\b|admitting|"
    r"pastoral|chaplaincy|palliative|hospice|vna)")
#: After a name: a birth date ("etibar kähkönen, * 12.06.32", "Weil, geb. 16.01.1993").
BIRTH_AFTER = re.compile(r"(?i)[ \t]*,?[ \t]*(?:\*|geb\.|geboren|born|dob)[ \t]*:?[ \t]*\d")
#: After a name: its bearer's age as an apposition ("Lasmono, eine knapp 16-jährige Patientin",
#: "Kipkosgei, a 54 year old man").
AGE_APPOSITION_AFTER = re.compile(
    r"(?i)\s*,\s*(?:ein|eine|einen|einer|der|die|a|an)\s+(?:[^\W\d]+\s+){0,2}\d{1,3}\s?-?\s?(?:jährig|j\.|year|yo\b|y/o|y\.o)")
#: Plain prepositions and verbs: context only for words on no list ("by Mitei", "Dockx visited").
WEAK_BEFORE = {"by"}
WEAK_AFTER = {"will", "would", "following", "follows", "evaluated", "saw", "sees", "recommends", "recommended",
              "ordered", "wrote", "feels", "thinks", "reports", "reported", "plans", "visited", "present", "says",
              "said", "agrees", "came", "called",
              # German: what a child or a patient named in a letter does ("Esio ist", "Hemang erhielt")
              "ist", "war", "wurde", "würde", "wird", "hat", "habe", "hatte", "sei", "erhielt", "erhält", "zeigte",
              "zeigt", "berichtet", "berichtete", "kam", "klagt", "klagte", "entwickelte", "befindet", "befand",
              "konnte", "kann", "soll", "sollte", "möchte", "gibt", "gab", "lebt", "wohnt", "erscheint", "stellte",
              "besucht", "besuchte", "nimmt", "nahm", "geht", "ging", "spielt", "isst", "trinkt", "schläft",
              "scheint", "schien", "fühlt", "fühlte", "wirkt", "wirkte", "profitiert", "profitierte"}
#: "to" counts after a transfer verb ("transferred to tch", "admitted to pomc", "d/c to Farini", "c/o to
#: sartano" = ICU call-out, "presented to", "EMS to"), also with the patient between ("brought pt to",
#: "drove her to").
TRANSFER_TO = re.compile(r"(?i)\b(?:transferred|transfered|transfer|tx|sent|admitted|adm|brought|back|returned|return|"
                         r"discharged?|d/c'?d?|dc'?d?|moved|move|going|go|went|taken|came|drove|flown|flew|referred|"
                         r"accepted|c/o|call(?:ed)?\s+out|trip|travel(?:l?ed|l?ing)?|drive|driving|driven|fly|flying|"
                         r"headed|heading|visit|relocated|presented|presents|presenting|ems|ambulance|"
                         r"medflight|medflighted|airlifted|took)\s+(?:(?:pt|patient|him|her|them)\s+)?to\s+(?:the\s+)?$")


def _word(tok: Token) -> str:
    """The word without a possessive or a contraction ("Kipkosgei's" -> "Kipkosgei", "c'ed" -> "c")."""
    core = tok.core
    if re.match(r"^[A-Za-z]['’][A-Z]", core):  # O'Driscoll, D'Angelo (but "C'ed")
        return core
    return re.split(r"['’]", core)[0]


def _candidate(view: TextView, tok: Token) -> str | None:
    """Why a word might be PHI: 'unknown' (on no safe list), 'typo', 'clinical typo' or 'run-together'
    (resembles safe words, so only context makes it a name), 'name' (a common first name or surname
    that is not an ordinary word); None where it is safe or shorthand."""
    if not tok.is_word:
        return None
    word = _word(tok)
    if len(word) < MIN_LETTERS or tok.low in TITLE_CHAIN or tok.low in STOP_WORDS or UNIT_NAME.match(word) \
            or _CAMEL.search(word) and not _NAME_PREFIX.match(word) or view.text[tok.start - 1: tok.start].isdigit():
        return None  # "TSICU", "CaGluconate", "2NDARY": units, products and glued shorthand
    vocab = load_vocabulary(view.language)
    parts = word.split("-")
    if len(parts) > 1 and any(len(p) < MIN_LETTERS for p in parts):
        return None  # "bp-neosyn", "gu-uo": a clinical prefix, not a double-barrelled name
    if len(parts) == 1 and vocab.is_safe(word):
        # "Hill", "Page", "Good": an ordinary word that is also a common surname or first name is a
        # name only where a person trigger says so (decided in _decide)
        return "ordinary name" if vocab.is_common_name(word) and len(word) >= 3 and tok.low not in NOT_NAMES else None
    kinds = []
    for part in parts:
        if vocab.is_safe(part) or not _VOWEL.search(part) and not vocab.is_name(part):
            return None
        if vocab.is_common_name(part):
            kinds.append("name")
            continue
        target = vocab.misspelling_of(part)
        if target in RELATIONS or target in NOT_NAMES:
            return None  # "son & dauther visited", "step duaghter called": a relation or a role, misspelt
        if target is not None and vocab.is_clinical(target):
            # "Natricor", "Diminshed": a clinical word, capitalised or not; one edit from a rare drug
            # name ("Malnate" ~ "malonate") is weaker evidence, which a place preposition outweighs
            kinds.append("drug typo" if vocab.is_drug_only(target) else "clinical typo")
            continue
        kinds.append("typo" if target is not None else "run-together" if vocab.is_run_together(part) else "unknown")
    for kind in ("clinical typo", "drug typo", "typo", "run-together", "unknown"):
        if kind in kinds:
            return kind
    return "name"


def _context(view: TextView, toks: list[Token], i: int) -> str | None:
    """What the neighbours say about a word: 'person' (a title, role or relation before it, "spoke
    with", "aware" or ", RN" after it), 'place' (a place preposition or "St." before it, a hospital
    or a town's service after it, the value of a place label), 'weak' (a plain preposition or a verb
    people do: "by Mitei", "Dockx will call"), or None."""
    tok = toks[i]
    before = toks[i - 1] if i > 0 and toks[i - 1].line == tok.line else None
    after = toks[i + 1] if i + 1 < len(toks) and toks[i + 1].line == tok.line else None
    if after is not None and after.text == "," and i + 2 < len(toks) and toks[i + 2].line == tok.line:
        after = toks[i + 2]  # "Snell, RN"
    # the label before a colon or a parenthesis: "OSH: Obaix", "OSH (Obaix)", "Patient: majani"
    label = toks[i - 2] if before is not None and before.text in (":", "(") and i > 1 \
        and toks[i - 2].line == tok.line else None
    if label is not None and before.text == ":":
        before = label  # "Orthoptistin: Yachana" reads as "Orthoptistin Yachana"
    if before is not None and (before.low in NAME_BEFORE or before.low in DOTTED_TITLES and before.text.endswith(".")
                               and before.is_title_case) \
            or after is not None and after.low in NAME_AFTER or BIRTH_AFTER.match(view.text, tok.core_end) \
            or SERVICE_AFTER.match(view.text, tok.core_end) \
            or NAME_PHRASE_BEFORE.search(view.text[max(0, tok.start - 24): tok.start]) \
            or _after_title_chain(toks, i) or AGE_APPOSITION_AFTER.match(view.text, tok.core_end, tok.core_end + 60):
        return "person"
    if before is not None and (before.low in PLACE_BEFORE or before.low in HOSPITAL_BEFORE) \
            or after is not None and (after.low in HOSPITAL_AFTER or after.low in PLACE_AFTER
                                      or after.low in PLACE_AFTER_ONLY.get(view.language, ())) \
            or label is not None and label.low in PLACE_LABELS:
        return "place"
    if before is not None and before.low in ("to", "the") \
            and TRANSFER_TO.search(view.text[max(0, tok.start - 30): tok.start]):
        return "place"
    if before is not None and before.low in WEAK_BEFORE or after is not None and after.low in WEAK_AFTER:
        return "weak"
    return None


def _after_title_chain(toks: list[Token], i: int) -> bool:
    """"Dr. med. arnas", "Prof. Dr. med. u. mdletshe", "Patientin p. laoidh": a title chain or a person
    trigger, then perhaps an initial, on one line.

    The chain's last word ("med", "habil") is no person trigger of its own; what opened it is.
    """
    k = i - 1
    if k >= 0 and toks[k].is_initial and len(toks[k].core) == 1 and toks[k].line == toks[i].line:
        k -= 1  # "u. mdletshe": the first name's initial
        if k >= 0 and toks[k].line == toks[i].line and toks[k].low in NAME_BEFORE:
            return True  # "Patientin p. laoidh"
    chain = 0
    while k >= 0 and toks[k].line == toks[i].line and (toks[k].low in TITLE_CHAIN or toks[k].text == "."):
        chain += toks[k].text != "."
        if toks[k].low in TITLES:
            return chain >= 2 or k < i - 1  # a bare "Dr" before the word itself is NAME_BEFORE's case
        k -= 1
    return False


def _decide(view: TextView, toks: list[Token], i: int, kind: str | None) -> str | None:
    """Mask this word, and why ('person', 'place', 'weak', 'capital', 'name', 'shape'), or None.

    Context decides first: after a person trigger anything unlisted is a name (even a word that
    resembles a clinical one, except "per protcol"); after a place trigger anything but a clinical
    typo, unless it is capitalised mid-sentence ("from Seixal"); after a weak trigger only words on
    no list. Without context, shorthand-sized words and
    typos stay, and the rest is masked when it is a known name or spelled like one
    (``phi_name_shape``)."""
    if kind is None:
        return None
    tok = toks[i]
    context = _context(view, toks, i)
    if kind == "clinical typo":  # "Diminshed", "per protcol"; but "from Seixal" is no typo of "sexual"
        if context == "place" and _capital_mid_sentence(view, tok):
            return context
        return context if context == "person" and i > 0 and toks[i - 1].low != "per" else None
    if kind == "drug typo":  # "Natricor at .01", but "from Malnate"
        return context if context in ("person", "place") and i > 0 and toks[i - 1].low != "per" else None
    if kind == "ordinary name":  # "DAUGHTER TUDORA WATER", "HILL AWARE", but never "per protocol"
        return "person" if context == "person" and not (i > 0 and toks[i - 1].low == "per") else None
    if context == "person" or context == "place" and (len(_word(tok)) > 4 or _foreign_letter(_word(tok), view.language)):
        # a short word after "from"/"in" is shorthand ("wean from ven"), unless its language lacks one
        # of its letters ("in háj"); initials have their rule
        return context
    if _capital_mid_sentence(view, tok):
        return "capital"
    if kind in ("typo", "run-together"):
        return None
    if context == "weak" and len(_word(tok)) >= 4:
        return context
    if len(_word(tok)) <= 4:
        return None  # "reck", "chux", "marg": shorthand more often than a name, unless context says person
    if kind == "name":
        return "name"
    if view.language == "de" and tok.capitalised:  # German capitalises every noun: capitals say nothing,
        return "unknown"  # so an unknown capitalised word is masked; a lower-case one must look like a name
    return "shape" if load_name_shape(view.language).is_name_like(_word(tok)) else None


def _capital_mid_sentence(view: TextView, tok: Token) -> bool:
    """In mixed case, a capitalised word inside a sentence was written as a name, whatever it resembles."""
    if view.case != "mixed" or not tok.is_title_case or view.language == "de":
        return False
    before = view.text[max(0, tok.start - 3): tok.start]
    return not re.search(r"(^|[.!?:;\n]\s*)$", before) and tok.start > 0


def _joins(view: TextView, a: Token, b: Token) -> bool:
    """Two tokens of one name: same line, nothing but a space (or a hyphen) between them, and the
    first does not end a sentence ("Milzhilus. Tumormanschette")."""
    gap = view.text[a.end:b.start]
    return a.line == b.line and gap in (" ", "-", "  ") and (not a.text.endswith(".") or a.is_initial)


#: Keywords after a hospital's name that the physionet annotators leave outside its span ("UNION
#: HOSPITAL", "mazur campus"); ``phi_place_rules`` draws the same line.
HOSPITAL_TAIL_OUT = {"hospital", "hosp", "campus", "medical", "health", "nursing", "infirmary"}
#: Words that make a place a hospital when they follow it ("Thisnes Hospital", "Cavalo Medical Center").
HOSPITAL_AFTER = {"hospital", "hosp", "memorial", "regional", "general", "medical", "center", "centre", "rehab",
                  "rehabilitation", "clinic", "manor", "nursing", "home", "house", "infirmary", "institute", "va",
                  "klinik", "klinikum", "krankenhaus", "spital"}
#: Services named after their town ("Orbais ED", "Gudme EMS", "per Resana police"): the word before is a place.
PLACE_AFTER = {"ed", "ems", "police", "pd", "fd", "fire", "rescue", "ambulance", "vna", "hospice", "county",
               "airport", "township", "resident", "residents", "native"}
#: The same in one language only: "Bzenec ER" (in German "er" is "he").
PLACE_AFTER_ONLY = {"en": {"er"}}
#: Labels whose value, after a colon or in parentheses, is a place ("OSH: Obaix", "Outside hospital (Obaix)",
#: "Residence: doksy").
PLACE_LABELS = {"osh", "hospital", "hosp", "residence", "hometown", "address", "town", "city", "home", "facility",
                "snf", "rehab"}
#: Letters beyond ASCII that a language's own words use; any other one marks a foreign name ("háj", "NIVÅ").
_OWN_LETTERS = {"en": "", "de": "äöüßÄÖÜ"}


def _foreign_letter(word: str, language: str) -> bool:
    """A short word with a letter its language lacks is a foreign name, not shorthand."""
    own = _OWN_LETTERS.get(language, "")
    return any(ord(c) > 127 and c not in own for c in word)
#: ... and when they precede it ("St. Julienne", "Holy Ytuika").
HOSPITAL_BEFORE = {"st", "saint", "holy", "sacred", "sankt"}
#: The prefix of this layer's span sources ("unknown_word:place"): the eponym veto treats its spans apart.
UNKNOWN_WORD_SOURCE = "unknown_word:"


def unknown_words(view: TextView) -> Iterator[PhiSpan]:
    toks = view.tokens
    vocab = load_vocabulary(view.language)
    kinds = [_candidate(view, t) for t in toks]
    flagged = [_decide(view, toks, k, kind) for k, kind in enumerate(kinds)]
    i = 0
    while i < len(toks):
        if not flagged[i]:
            i += 1
            continue
        first = last = i
        # neighbours of an unknown word that belong to it: further unknown words, rare words of a
        # place ("garessio borgo ponte"), name words in mixed case ("Adam Kipkosgei")
        while first > 0 and _joins(view, toks[first - 1], toks[first]) and (
                kinds[first - 1] is not None or _belongs(view, toks[first - 1], toks[i], vocab)):
            first -= 1
        if first > 0 and toks[first - 1].is_initial and len(toks[first - 1].core) == 1 \
                and _joins(view, toks[first - 1], toks[first]):
            first -= 1  # "p. laoidh": the first name's initial belongs to the name
        while last + 1 < len(toks) and _joins(view, toks[last], toks[last + 1]):
            if kinds[last + 1] is not None or _belongs(view, toks[last + 1], toks[i], vocab):
                last += 1
            elif _initial_between(view, toks, last, kinds):
                last += 2  # "majani f. mbuli": a middle initial between two unlisted words
            else:
                break
        if last + 1 < len(toks) and toks[last + 1].is_initial and toks[last + 1].core.isupper() \
                and len(toks[last + 1].core) == 1 and _joins(view, toks[last], toks[last + 1]):
            last += 1  # "Yachana F. MBA": a trailing initial, as sign-off lines write it
        label = PhiType.NAME
        while last + 1 < len(toks) and toks[last + 1].line == toks[last].line and toks[last + 1].low in HOSPITAL_AFTER \
                and view.text[toks[last].end:toks[last + 1].start].strip() == "" \
                and not re.search(r"['’]s$", toks[last].core):  # "Anne's house" is a person's home
            last, label = last + 1, PhiType.HOSPITAL
        while first > 0 and toks[first - 1].line == toks[first].line and toks[first - 1].low in HOSPITAL_BEFORE \
                and view.text[toks[first - 1].end:toks[first].start].strip() in ("", "."):
            first, label = first - 1, PhiType.HOSPITAL
        before = toks[first - 1].low if first > 0 and toks[first - 1].line == toks[first].line else ""
        why = next(flagged[k] for k in range(first, last + 1) if flagged[k])
        if label is PhiType.NAME and (before in PLACE_BEFORE or why == "place"):
            label = PhiType.LOCATION
        known = any(vocab.is_name(_word(t)) for t in toks[first:last + 1])
        end = last
        while label is PhiType.HOSPITAL and end > first and not flagged[end] and toks[end].low in HOSPITAL_TAIL_OUT:
            end -= 1  # "Japigia [Hospital]": the keyword stays outside, as the hospital rule leaves it
        span = view.span(toks[first], toks[end], label, f"{UNKNOWN_WORD_SOURCE}{why}", strong=False,
                         score=0.7 if known else 0.6)
        if label is not PhiType.HOSPITAL:  # "Anne's": the possessive stays outside
            span.end = min(span.end, toks[last].start + len(_word(toks[last])))
        yield span
        i = last + 1


def _initial_between(view: TextView, toks: list[Token], k: int, kinds: list[str | None]) -> bool:
    mid = k + 1
    return mid + 1 < len(toks) and toks[mid].is_initial and len(toks[mid].core) == 1 \
        and _joins(view, toks[mid], toks[mid + 1]) and kinds[mid + 1] is not None


def _belongs(view: TextView, tok: Token, anchor: Token, vocab) -> bool:
    """A neighbour of an unknown word is part of the same name or place when it is a rare word
    (not frequent English, not clinical) or, in mixed case, a capitalised name word next to a
    capitalised anchor ("Adam Kipkosgei", "Mauri Hill"); never a function word, title or relation."""
    if not tok.is_word or len(tok.core) < 2 or tok.low in STOP_WORDS or tok.low in TITLE_CHAIN \
            or tok.low in RELATIONS or tok.low in CREDENTIALS or tok.low in view.gaz.allow_terms \
            or tok.low in HOSPITAL_AFTER or tok.low in HOSPITAL_BEFORE:
        return False
    word = _word(tok)
    if view.case == "mixed" and tok.is_title_case and anchor.is_title_case and vocab.is_name(word):
        return True
    return len(word) >= MIN_LETTERS and _VOWEL.search(word) is not None and not vocab.is_frequent(word) \
        and not (view.case == "mixed" and tok.core.islower() != anchor.core.islower())
