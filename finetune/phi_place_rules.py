"""PHI rules for places and organisations: hospitals, saints and wards, towns, addresses, employers.

English and German notes name places differently ("Klinikum Essen-Mitte", "transferred to
MGH"); the rules keep both languages side by side so a fix for one is seen next to the other.
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from finetune.date_formats import MONTHS_DE, MONTHS_EN
from finetune.phi_text import (
    DE_HOSPITAL,
    DRUG_SUFFIX,
    L_LOW,
    L_UP,
    LETTER,
    ORDINARY_SUFFIX,
    STOP_WORDS,
    TITLE_CHAIN,
    PhiSpan,
    TextView,
    Token,
)
from finetune.phi_types import PhiType
from finetune.phi_unknown_rules import HOSPITAL_TAIL_OUT, UNIT_NAME
from finetune.phi_vocabulary import Vocabulary, load_vocabulary

# --------------------------------------------------------------------------------------------
# Places
# --------------------------------------------------------------------------------------------

#: Keywords inside a hospital's span ("Sacred Heart Memorial", "Baltimore Rehab", "Tuoro Clinic") and
#: outside it (``HOSPITAL_TAIL_OUT``: "UNION HOSPITAL", "mazur campus"), as the physionet annotators drew
#: them; "Medical Center" and "Health Center" go in whole. A name never masked without its keyword would
#: leave half of it.
HOSPITAL_TAIL_IN = {"memorial", "regional", "rehab", "rehabilitation", "house", "va", "manor", "square",
                    "general", "home", "clinic"}
#: Keywords strong enough that the words before them are a name even in lower case ("sacred heart memorial").
HOSPITAL_STRONG = {"memorial", "regional", "hospital", "hosp", "va", "campus", "infirmary"}
#: Keywords after which a capitalised ordinary word still names a place ("Baltimore Rehab").
HOSPITAL_CAPITAL = {"rehab", "rehabilitation", "house", "manor", "square", "home"}
HOSPITAL_TAILS = HOSPITAL_TAIL_IN | HOSPITAL_TAIL_OUT
CENTRE_WORDS = {"center", "centre", "cnter", "cntr", "ctr"}
MISSPELT_HOSPITAL = re.compile(r"hos{1,2}pi?t[ai]?l|hopsital|hospitol|hosptial")
#: A medical specialty by its ending ("Nephrology", "Physiatry", "NeuroOncology"): a department before
#: "Clinic" or "Center", not its name.
DEPARTMENT = re.compile(r"(?:olog(?:y|ie)|iatr(?:y|ics|ie)|surgery)$")
#: Short keywords whose misspellings (two letters swapped, one dropped or doubled: "NURSING HMOE", "Tuoro
#: Clinc") the vocabulary's typo check leaves alone, as it needs five letters and the right order.
SHORT_KEYWORDS = ("home", "house", "clinic", "manor", "rehab", "center", "centre")
#: Keywords whose one-edit misspellings still end a hospital name (``Vocabulary.misspelling_of``).
MISSPELLING_TARGETS = {"hospital", "regional", "memorial"}
HOSPITAL_STOP = {"the", "a", "an", "to", "from", "at", "in", "into", "by", "of", "for", "with", "on", "and",
                 "or", "was", "is", "per", "via", "transferred", "transfered", "admitted", "sent", "taken",
                 "went", "go", "going", "back", "d/c'd", "discharged", "outside", "cardiac", "pulmonary",
                 "acute", "inpatient", "outpatient", "physical", "our", "this", "that", "his", "her", "their",
                 "local", "same", "other", "another", "er", "ed", "ew", "osh", "rehab", "hospital", "hosp", "@",
                 "leave", "left", "any", "begin", "awaiting", "poss", "possible", "possibly", "plan", "for"}
HOSPITAL_ADJECTIVES = {"städt", "städtisches", "städtische", "evangelisches", "evangelische", "katholisches",
                       "katholische", "kath", "ev", "allgemeines", "akademisches", "kreis", "bezirks", "landes"}
DE_NAME_LINK = {"der", "des", "im", "am", "an", "st", "sankt", "ob", "bei", "zum", "zur", "vom", "von"}


def hospitals(view: TextView) -> Iterator[PhiSpan]:
    """Named hospitals and rehab centres: 'Sacred Heart Memorial', 'UNION HOSPITAL', 'Klinikum Neustadt'."""
    toks = view.tokens
    vocab = load_vocabulary(view.language)
    for i, tok in enumerate(toks):
        low = tok.low
        if view.language == "de" and DE_HOSPITAL.search(tok.core) and tok.is_word:
            yield from _german_hospital(view, i)
            continue
        if "-" in low and low.split("-")[0] in HOSPITAL_TAILS:
            low = low.split("-")[0]  # "BALTIMORE VA-INTUBATED"
        if MISSPELT_HOSPITAL.fullmatch(low):
            low = "hospital"  # "Feschaux Memorial Hosspital"
        elif 4 <= len(low) <= 10 and low[0] in "hcmr" and tok.is_word and low not in HOSPITAL_TAILS:
            # "General Hopital", "MONTABONE REGIONNAL", "NURSING HMOE" (the first letter is a cheap
            # pre-check: typos keep it)
            target = _short_keyword(low, vocab) if len(low) <= 7 else None
            if target is None and len(low) >= 6 and low[0] in "hrm":
                target = vocab.misspelling_of(low)
                target = target if target in MISSPELLING_TARGETS else None
            low = target or low
        if low not in HOSPITAL_TAILS:
            continue
        centre_after = i + 1 < len(toks) and (toks[i + 1].low in CENTRE_WORDS or toks[i + 1].is_word and _short_keyword(
            toks[i + 1].low, vocab) in CENTRE_WORDS)  # "Medical Center", "medical centter"
        if low in {"home", "house", "general", "medical", "health", "nursing"} and not (
                centre_after or i + 1 < len(toks) and toks[i + 1].low in {"hospital", "hosp"}) and low != "house" \
                and not (low == "home" and i > 0 and toks[i - 1].low == "nursing"):  # "Wanlin Nursing Home"
            continue
        if low in {"house", "home"} and re.search(r"['’]\s?s\s*$", view.text[max(0, tok.start - 6):tok.start]):
            continue  # "Anne's house", "gwen smith 's house": a person's home (possessive_homes)
        nursing_home = low == "home" and i > 0 and toks[i - 1].low == "nursing"
        k, first = (i - 2 if nursing_home else i - 1), None
        while k >= 0 and i - k <= 3 + nursing_home and toks[k].line == tok.line and toks[k].is_word \
                and toks[k].low not in HOSPITAL_STOP \
                and not (toks[k].text.endswith(".") and not toks[k].is_initial):
            unknown = vocab.is_unknown(toks[k].core, typos_known=True)
            if view.case == "mixed" and not toks[k].capitalised and low not in HOSPITAL_STRONG \
                    and not (unknown and k > 0 and toks[k - 1].low in {"to", "at", "from", "@"}):  # "to rèves clinic"
                break
            if low not in HOSPITAL_STRONG and (DEPARTMENT.search(toks[k].low) or not unknown and vocab.is_clinical(
                    toks[k].core) and not vocab.is_name(toks[k].core)):
                break  # a department: "Urology Clinic", "GI clinic", "Neuro-Oncology Clinic", "heart failure center"
            if toks[k].low in STOP_WORDS or (k == i - 1 and ORDINARY_SUFFIX.search(toks[k].low)
                                              and not toks[k].is_title_case and not unknown):
                break  # "HAD PROLONGED HOSPITAL STAY" (but "sacred heart hospital", "sorring regional" are names)
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
        if low in {"medical", "health"} and centre_after:
            last = i + 1  # "ASKEBY MEDICAL CNTER"
        else:
            last = i if low in HOSPITAL_TAIL_IN and "-" not in tok.low else i - 1
        yield view.span(toks[first], toks[last], PhiType.HOSPITAL, "hospital", strong=True)


def _short_keyword(low: str, vocab: Vocabulary) -> str | None:
    """The short keyword a word misspells by one swap, drop or doubling ("hmoe", "clinc", "hosue"),
    when the word itself is nothing the vocabulary knows."""
    from rapidfuzz.distance import OSA

    if vocab.is_safe(low) or vocab.is_frequent(low):
        return None
    return next((k for k in SHORT_KEYWORDS if k[0] == low[0] and OSA.distance(low, k) == 1), None)


#: German hospital names by their form: "St.-Marien-Hospital", "MVZ Mitte-Nord", "Praxis Dr. med. Weber",
#: "Helios Klinikum Zelem", "Kreiskrankenhaus Samrée", "Obourg-Klinik". The name part must not be a
#: German word ("Klinik für Innere Medizin", "Klinikum der Universität").
DE_HOSPITAL_FORMS = (
    re.compile(rf"(?i)\bSt\.?-[{LETTER}]+(?:-[{LETTER}]+)*-(?:Hospital|Krankenhaus|Klinikum|Klinik|Stift|Spital)\b"),
    re.compile(rf"(?i)\b(?:MVZ|Praxis(?:\s+Dr\.?(?:\s*med\.?)?)?|(?:Helios|Asklepios|Sana|Vivantes|Universitäts|Uni|Kreis)?"
               rf"[ \t-]?Klinikum|(?:Kreis|Stadt|Bezirks)?krankenhaus|Klinik)[ \t]+(?P<name>[{LETTER}][{LETTER}\-]+)"),
    re.compile(rf"(?i)\b(?P<name>[{LETTER}]{{3,}})-(?:Klinik|Klinikum|Krankenhaus|Hospital)\b"),
)


def german_hospital_forms(view: TextView) -> Iterator[PhiSpan]:
    vocab = load_vocabulary("de")
    for regex in DE_HOSPITAL_FORMS:
        for m in regex.finditer(view.text):
            name = m.groupdict().get("name")
            if name is not None:
                first = name.split("-")[0].lower()
                if first in STOP_WORDS or first in TITLE_CHAIN or vocab.is_safe(first) and not vocab.is_name(first):
                    continue
            yield PhiSpan(m.start(), m.end(), PhiType.HOSPITAL, 0.75, "hospital_form", True)


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


SAINT = re.compile(rf"\b(?:St|ST|st|Saint|SAINT|Sankt|St\.-)\.{{0,2}}\s+(?P<name>[{L_UP}][{LETTER}]+|[{L_UP}]\.)")
#: "d/c'd to st. tishk", "accepted by st.. raamis": any case after a word that leads to a place.
SAINT_AFTER_PLACE_WORD = re.compile(
    rf"(?i)\b(?:to|at|from|by|in|into|via)\s+(?P<st>st|saint)\.{{0,2}}\s+(?P<name>[{LETTER}]{{3,}})")
#: Institutions named after a religious title ("Holy Cross", "Sacred Heart", "Holy Name"): the
#: adjective practically never stands before a capitalised word in clinical prose otherwise.
RELIGIOUS = re.compile(rf"(?i)\b(holy|sacred)\s+(?P<name>[{LETTER}]{{3,}})")
RELIGIOUS_OBJECTS = {"water", "communion", "oil", "oils", "spirit", "ghost", "bible", "book", "rosary", "rites",
                     "scripture", "week", "day", "days", "place", "ground"}
#: "to podenzoi cath lab", "TO ASCREA CATH LAB": a word no vocabulary knows, in front of the unit.
NAMED_CATH_LAB = re.compile(rf"(?i)\b(?:to|at|from|in)\s+(?P<name>[{LETTER}]{{3,}})\s+cath\.?\s*lab")
HOSPITAL_ABBR = re.compile(r"(?i:\b(?:to|at|from|in|into|@|by|via))\s+(?:(?i:the)\s+)?(?P<abbr>[A-Z]{1,3}H|[A-Z]{1,4}MC)\b")
#: The same shapes in any case after a transfer ("transferred to tch", "admitted to pomc", "ADM TO THE ymc"),
#: where the word is neither clinical shorthand ("osh") nor frequent English ("bath").
HOSPITAL_ABBR_ANY_CASE = re.compile(r"(?i)\b(?:to|at|from|into|@|via|by)\s+(?:the\s+)?(?P<abbr>[a-z]{1,4}h|[a-z]{1,4}mc|[a-z]{2,3}lc)\b")
WARD = re.compile(rf"(?i:\b(?:to|from|on|at|per|transfer|transferred|transfered|tx|bed|dispo:))\s+(?P<ward>[{LETTER}]{{5,}})\s?\d{{1,2}}\b"
                  r"(?!\s*(?:mg|mcg|cc|ml|l\b|%|x|u\b|units|meq|hr|h\b|/|:|\.\d|mm|min|am|pm|liters?))")
#: Lower-case words that may follow a ward's number ("to Quartermain 2 when bed ready", "on X 5 prior to
#: MICU", "RN on X 4 re bed"); any other lower-case word makes the number a quantity ("recieve 1 bag").
WARD_FOLLOWERS = {"in", "at", "when", "today", "this", "tomorrow", "if", "for", "am", "pm", "tonight", "on", "and",
                  "with", "bed", "prior", "before", "after", "until", "re", "via", "per", "by", "rn", "nurse", "team",
                  "aware", "staff", "charge", "report"}
#: A ward as the subject of a staff line: "Quartermain 3 RN aware of transfer", "X 2 charge nurse called".
WARD_SUBJECT = re.compile(rf"(?:^|[.;!]\s+|\n\s*)(?P<ward>[{LETTER}]{{5,}})\s?\d{{1,2}}\s+"
                          r"(?i:rn|nurse|charge|aware|notified|called|staff|team|informed)\b", re.MULTILINE)


def saints_and_wards(view: TextView) -> Iterator[PhiSpan]:
    """'St. Agnes', 'ST MARY', 'Holy Family', 'to GH', 'transfer to Quartermain 2' (a named ward)."""
    gaz = view.gaz
    vocab = load_vocabulary(view.language)
    for m in RELIGIOUS.finditer(view.text):
        name = m.group("name")
        if name.lower() in STOP_WORDS or name.lower() in RELIGIOUS_OBJECTS \
                or (view.case == "mixed" and not (m.group(1)[0].isupper() and name[0].isupper())):
            continue
        yield PhiSpan(m.start(), m.end("name"), PhiType.HOSPITAL, 0.7, "religious", True)
    for m in SAINT.finditer(view.text):
        name = m.group("name").rstrip(".")
        if gaz.is_first(name) or len(name) == 1 or vocab.is_unknown(name):  # not "ST Elevation"
            yield PhiSpan(m.start(), m.end("name"), PhiType.HOSPITAL, 0.8, "saint", True)
    for m in SAINT_AFTER_PLACE_WORD.finditer(view.text):
        name = m.group("name")
        if gaz.is_first(name) or vocab.is_unknown(name):
            yield PhiSpan(m.start("st"), m.end("name"), PhiType.HOSPITAL, 0.7, "saint", True)
    for m in NAMED_CATH_LAB.finditer(view.text) if view.language == "en" else ():
        if vocab.is_unknown(m.group("name")):  # a name here, even one a letter away from a word ("doksy")
            yield PhiSpan(m.start("name"), m.end("name"), PhiType.HOSPITAL, 0.7, "cath_lab", True)
    for m in HOSPITAL_ABBR.finditer(view.text):
        abbr = m.group("abbr").lower()
        if abbr not in gaz.allow_terms and abbr not in gaz.common and abbr not in gaz.english_words:
            yield PhiSpan(m.start("abbr"), m.end("abbr"), PhiType.HOSPITAL, 0.7, "hospital_abbr", True)
    for m in HOSPITAL_ABBR_ANY_CASE.finditer(view.text) if view.language == "en" else ():
        abbr = m.group("abbr").lower()
        if abbr not in gaz.allow_terms and abbr not in gaz.common and vocab.is_unknown(abbr):
            yield PhiSpan(m.start("abbr"), m.end("abbr"), PhiType.HOSPITAL, 0.6, "hospital_abbr", True)
    for m in (*WARD.finditer(view.text), *WARD_SUBJECT.finditer(view.text)):
        word = m.group("ward")
        after = re.match(r"\s*([A-Za-z']+)", view.text[m.end(): m.end() + 20]) if m.re is WARD else None
        if after and after.group(1).islower() and after.group(1) not in WARD_FOLLOWERS:
            continue  # "reinsert 30 french", "recieve 1 bag": a quantity, not a ward number
        if view.ordinary(Token(m.start("ward"), m.end("ward"), word, 0)) or UNIT_NAME.match(word):
            continue  # "to tsicu 2": a unit, not a ward's name
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
        if (city[0].islower() or m.group("month_year")) and city.lower() not in gaz.cities \
                and load_vocabulary("de").is_safe(city.split()[0]):
            continue  # "isokyrö, am 28.08.71", "lirone, 04/2025": any case, but no German word
        yield PhiSpan(m.start("city"), m.end("city"), PhiType.LOCATION, 0.8, "letter_date", True)


LETTER_PLACE_DATE = re.compile(
    rf"(?m)^[ \t]*(?P<city>[{LETTER}][{LETTER}\-]+(?:[ \-][{L_UP}][{LETTER}]+)?)(?:\s*\([A-Z]{{2}}\))?(?P<comma>,?)\s+"
    rf"(?:den|am)?\s*(?:\d{{1,2}}\.\s?(?:\d{{1,2}}\.\s?\d{{2,4}}|[{L_UP}][{L_LOW}]+\.?\s\d{{4}})"
    rf"|(?P<month_year>(?:{'|'.join(m.capitalize() for m in MONTHS_DE + MONTHS_EN)})\s\d{{4}}|\d{{1,2}}/\d{{4}})(?=[ \t]*$))")

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
#: After a street and house number: the town, alone on the rest of the line or before a comma
#: ("Rožmberská-Allee 129,  pergusa", "Bispegasse 105  CHANLY", "Slavínstr. 98, wetsens behandelt").
TOWN_AFTER_STREET = re.compile(
    rf"[ \t]*(?:,[ \t]*|[ \t]{{2,}}|[ \t]+(?=[{L_UP}]{{2,}}\b))(?P<town>[{LETTER}][{LETTER}'\-]{{2,}}(?:[ \t][{L_UP}][{LETTER}'\-]+)?)"
    rf"(?=[ \t]*(?:$|\n|,|\.|[ \t]+[{L_LOW}]))")
STREET_EN = re.compile(
    rf"\b\d{{1,5}}[ \t]+(?:[{L_UP}][{L_LOW}]+[ \t]+){{1,2}}(?:St|Street|Ave|Avenue|Rd|Road|Blvd|Boulevard|Lane|Ln|Drive|Dr|Way|Court|Ct|Place|Pl|Terrace|Circle)\b\.?")
ZIP_CITY = re.compile(
    rf"(?P<zip>\b(?:[A-Z]{{1,2}}-)?\d{{5}}\b|\b[A-Z]{{1,2}}-\d{{4}}\b|(?<![\d.,/])\b\d{{4}}\b)(?:[ \t]+|-)(?P<city>[{LETTER}][{LETTER}]+(?:[ \t-](?:[{L_UP}][{LETTER}]+|an der|am|im|ob der|bei)(?:\s[{L_UP}][{LETTER}]+)?)?(?:\s\([A-Z]{{2}}\))?)")
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
            yield from _town_after_street(view, m.end())
        for m in STREET_DE_PREP.finditer(text):
            yield PhiSpan(m.start(), m.end(), PhiType.ADDRESS, 0.7, "street", True)
            yield from _town_after_street(view, m.end())
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
        strong = re.search(r"(?::|\bin|\bwh\.?:?|wohnhaft)\s*$", before) is not None
        if not city[0].isupper() and not (context and (len(zip_code) >= 5 or "-" in zip_code)) \
                and not (strong and not load_vocabulary("de").is_safe(city.split()[0])):
            continue  # a lower-case town only after a full postcode where an address stands, or after "wh.:"
        if view.common_word(city.split()[0]) and not city_known and len(city.split()) == 1:
            continue
        if plain4 and not (city_known or strong):
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


#: A letter's address block: a line of two or three words right above a street line.
ADDRESSEE_ABOVE_STREET = re.compile(
    rf"(?m)^[ \t]*(?P<name>[{LETTER}][{LETTER}'\-]+(?:[ \t][{LETTER}][{LETTER}'\-]+){{1,2}})[ \t]*\n(?=[ \t]*(?:{STREET_DE.pattern}))")


def addressees(view: TextView) -> Iterator[PhiSpan]:
    """"Līga Abuga / Grønløkkeweg 48": the line above a street is its resident, when one of its words
    is on no German word list or is a first name ("Klinik für Innere Medizin" stays)."""
    vocab = load_vocabulary("de")
    for m in ADDRESSEE_ABOVE_STREET.finditer(view.text):
        words = m.group("name").split()
        if any(w.lower() in STOP_WORDS or w.lower() in TITLE_CHAIN or DE_HOSPITAL.search(w)
               or GERMAN_NOUN_SUFFIX.search(w.lower()) for w in words):
            continue
        if all(vocab.is_safe(w) for w in words) and not view.gaz.is_any_first(words[0]):
            continue
        yield PhiSpan(m.start("name"), m.end("name"), PhiType.NAME, 0.75, "addressee", True)


def _town_after_street(view: TextView, end: int) -> Iterator[PhiSpan]:
    """The town written after an address's house number, in any case; never an ordinary word
    ("Hauptstr. 5, Erdgeschoss") unless the town list knows it."""
    m = TOWN_AFTER_STREET.match(view.text, end)
    if m is None:
        return
    town = m.group("town")
    first = town.split()[0].lower()
    if (load_vocabulary(view.language).is_safe(first) or GERMAN_NOUN_SUFFIX.search(first)) \
            and first not in view.gaz.cities:
        return
    yield PhiSpan(m.start("town"), m.end("town"), PhiType.LOCATION, 0.75, "town_after_street", True)


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
