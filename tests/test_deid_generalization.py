"""The layers that do not depend on having seen a name: word lists, the allow-list rule, the name-shape
classifier, the new context, date and phone rules, and the stress test that measures them (EN + DE)."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from eval import deid_stress
from eval.deid import main, select_part
from eval.deid_gold import GoldDoc, GoldSpan, load_gold
from eval.deid_stress import build_pools, known_words, stress_variants
from finetune.build_vocabulary import document_words, eponyms_in_use
from finetune.phi_detector import PhiDetector
from finetune.phi_name_shape import load_name_shape
from finetune.phi_types import PhiType, gold_type
from finetune.phi_vocabulary import load_vocabulary
from rag.corpus import CorpusError, Document
from tests.conftest import SHARED_DATA, needs_shared


@pytest.fixture(scope="module")
def detector() -> PhiDetector:
    return PhiDetector()


def _masked(detector: PhiDetector, text: str, language: str) -> dict[str, PhiType]:
    return {text[s.start:s.end]: s.label for s in detector.detect(text, language)}


def _covered(detector: PhiDetector, text: str, value: str, language: str) -> bool:
    start = text.index(value)
    covered = set()
    for span in detector.detect(text, language):
        covered |= set(range(span.start, span.end))
    return all(i in covered for i in range(start, start + len(value)) if text[i].isalnum())


# --- word lists ------------------------------------------------------------------------------


def test_vocabulary_knows_words_typos_shorthand_and_names() -> None:
    en = load_vocabulary("en")
    assert en.is_safe("secretions") and en.is_safe("carevue") and en.is_safe("hydralazine")
    assert en.misspelling_of("secretionns") and en.misspelling_of("hydralazien")  # typos of clinical words
    assert en.misspelling_of("eyees") == "eyes"  # a doubled letter in a short word
    assert en.misspelling_of("mitei") is None  # but "mite" + a letter is not a typo
    assert en.misspelling_of("Støvring") is None  # a letter English keyboards lack: a foreign name ("staring")
    assert en.is_run_together("fromsuture") and en.is_run_together("tubefeeds")
    assert en.is_name("swackhamer") and not en.is_safe("swackhamer")
    assert en.is_safe("hill") and en.is_name("hill")  # an ordinary word first: context decides
    de = load_vocabulary("de")
    assert de.is_safe("Wiedervorstellung") and de.is_safe("Thoraxdrainage")  # compounds of safe words
    assert de.is_safe("Sigmoideostomie") and de.is_safe("perihilär")  # medical endings
    assert not de.is_safe("Kipkosgei")
    assert de.misspelling_of("Ñoquera") is None and de.misspelling_of("Überwachnug") == "überwachung"  # umlauts are German


def test_name_shape_tells_names_from_mangled_words() -> None:
    shape = load_name_shape("en")
    names, words = shape.probability(["kipkosgei", "ogunwobi", "swackhamer"]), shape.probability(
        ["prauuations", "secretionns", "tomrrow"])
    assert names.min() > 0.5 > words.max()


def test_clinical_vocabulary_takes_only_lower_case_non_phi_words() -> None:
    text = "Pt seen by Dr. Marder today. Carevue shows fio 40 and ogt in place; Boston follow-up."
    words = document_words(text, [(text.index("Marder"), text.index("Marder") + 6)])
    assert {"fio", "ogt", "seen", "place"} <= words
    assert "marder" not in words and "boston" not in words  # PHI span / capitalised mid-sentence


# --- the allow-list layer, English -------------------------------------------------------------

UNSEEN = ["Kipkosgei", "Ogunwobi", "Dlamlenze", "Mumpuni", "Wafeeq"]


def test_test_names_are_unseen() -> None:
    vocab = load_vocabulary("en")
    assert not any(vocab.is_name(n) or vocab.is_safe(n) for n in UNSEEN)


@pytest.mark.parametrize("template", [
    "Dr. {} aware of labs.", "DR {} PAGED RE BP", "spoke with {} re plan", "house officer {} in to see pt",
    "resident {} aware", "signed out to {}", "case manager {} following", "{}, RN", "wife {} called",
    "pt seen by {} this am.", "per {} cont current plan", "message left for {}",
])
@pytest.mark.parametrize("case", ["title", "upper", "lower"])
def test_unseen_names_in_context_any_case(detector: PhiDetector, template: str, case: str) -> None:
    for name in UNSEEN:
        value = {"title": name, "upper": name.upper(), "lower": name.lower()}[case]
        text = template.format(value)
        assert _covered(detector, text, value, "en"), text


@pytest.mark.parametrize("text,value", [
    ("Dr. Story made aware, pt started on drip.", "Story"),  # a surname that is an English word
    ("mr Page had a very uneventful night.", "Page"),
    ("Social: daughter Good in to visit.", "Good"),
    ("transferred to Thisnes Hospital for cath", "Thisnes"),  # "Hospital" stays, as annotated
    ("pt transfered to tch for further eval", "tch"),  # a hospital's initials after a transfer
    ("d/c to St. Julienne at 4pm", "St. Julienne"),
    # unseen surnames after an initial, introduced by a person word or followed by a credential
    ("TRIPLE CVL BY V. MUPNZANA. BLEEDING AT SITE", "V. MUPNZANA"),
    ("Repeat act 140. Reported to s. kimachu. Coags ok.", "s. kimachu"),
    ("Repeat act 140. Reported to R. Best. Coags ok.", "R. Best"),
    ("later this evening. \nQ. White, RRT\n", "Q. White"),
    ("her name is Slamet Mahlaba, phone # in pink book", "Slamet Mahlaba"),
    # saints, nursing homes and misspelt hospitals whose name no list holds
    ("Was accepted by St.. Raamis but cannot leave", "St.. Raamis"),
    ("pt being d/c'd to st. tishk at 4:00pm", "st. tishk"),
    ("PATIENT WAS SCREENED BY Wanlin Nursing Home REHAB TODAY.", "Wanlin Nursing Home"),
    ("go to rehab(Feschaux Hosspital) today", "Feschaux"),
    ("PT MAY BE W/U BY ttbmc FOR POSSIBLE HEART TRANSPLANT", "ttbmc"),
    ("to podenzoi cath lab- unsuccessful ptca", "podenzoi"),
    ("pt being d/c'd to rèves clinic  at 4:00pm", "rèves"),
    ("notified wound nurse, esteri golden, and Dr. Smith", "esteri golden"),
    ("met with clinical rn specialist, Xaliq John, today", "Xaliq John"),
])
def test_context_rules(detector: PhiDetector, text: str, value: str) -> None:
    assert _covered(detector, text, value, "en"), _masked(detector, text, "en")


@pytest.mark.parametrize("text", [
    "pt with thick secreations, hydralizine given for sbp 170.",
    "CV: Cont on Natricor at .01, Lasix gtt at 20mg/hr",
    "plan: attempt to wean from ven",
    "pt. transferred from TSICU at 6:15pm",
    "Remains on Big Boy BariAir bed, CaGluconate IV overnight.",
    "bs: crackles and fromsuture site oozing, tubefeeds at goal",
    "Pt in Trendelenburg, Quinton catheter in place.",
    "converted to a. fib with RVR; E. coli and S. aureus in urine; line changed to R. fem.",
    "ST Elevation in V2, reported to ID by A. line check",
    "spoke with nurse, pt, and family; to the cath lab, then to main cath lab",
])
def test_typos_shorthand_and_products_stay(detector: PhiDetector, text: str) -> None:
    assert not [s for s in detector.detect(text, "en") if s.label is PhiType.NAME], _masked(detector, text, "en")


def test_a_nursing_home_without_a_name_stays(detector: PhiDetector) -> None:
    text = "pt from nursing home, DISCHARGED TO A NURSING HOME when stable; returns to Nursing Home."
    assert detector.detect(text, "en") == [], _masked(detector, text, "en")


# --- dates and phones -------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("will f/u 28-Apr-02. Should consider", "28-Apr-02"),
    ("last used in 12.27.94 and since", "12.27.94"),
    ("labs onFebruary 12 to hct 30", "February 12"),
    ("wean off vent, family meeting 12/5/2029", "12/5/2029"),
    ("CABG 01/01, EF 30%", "01/01"),
    ("seen since the 24th by renal", "24th"),
    ("since 24th pt has been afebrile", "24th"),  # a day before a function word or "pt"
    ("admitted on the 3rd June with sob", "3rd June"),
    ("pt was admitted in aug for a fall", "aug"),
    ("last cx 5/5 in am, no growth", "5/5"),  # when a culture was sent
    ("BC 1/5 Pending.", "1/5"),
    ("PMH: S/P MI 3/4, S/P CABG 06/25", "3/4"),
    ("smoking until late 1/4, when she", "1/4"),
    ("am labs on6 Sep 2034> to hct-30", "6 Sep 2034"),
    ("PT HAD A CT SCAN 1/4 AS WELL", "1/4"),
    ("WAS TRANSFERRED TO THE FLOOR 1/5. SINCE", "1/5"),
    ("CARDIOVERSION FRIDAY 3/3.", "3/3"),
    # a heading colon after the day; lower-case notes write month abbreviations in lower case
    ("Dec 27: pt stable overnight.", "Dec 27"),
    ("december 27: pt stable overnight.", "december 27"),
    ("labs from dec 27 reviewed", "dec 27"),
    ("cxr aug 3 showed improvement", "aug 3"),
    ("s/p cabg march 4, ef 30%", "march 4"),
])
def test_more_date_formats(detector: PhiDetector, text: str, value: str) -> None:
    assert _masked(detector, text, "en").get(value) is PhiType.DATE, _masked(detector, text, "en")


@pytest.mark.parametrize("text", ["pt c/o CP, 5/10, ECG done", "on PSV 12/10, Vt 450", "1/2 NS at 75", "motor 5/5",
                                  "drank 2/3 of the shake", "pain 3/10 at 2am", "on PS 5/5 overnight",
                                  "uo dec 20 cc/hr", "bp dec 30 points", "aug 2 days left", "pt may 2 units",
                                  "seen Dec 5:30 pm", "PT PLACED ON 1ST STEP BED", "went home after 2nd cath",
                                  "again on 2nd cpap trial", "on 4th floor now"])  # ordinals before a noun: ranks
def test_scores_and_settings_are_not_dates(detector: PhiDetector, text: str) -> None:
    assert not [s for s in detector.detect(text, "en") if s.label is PhiType.DATE]


@pytest.mark.parametrize("text,value", [
    ("will call family at 74169.", "74169"),
    ("wife (Irene Sherwood, 202232-4455) in", "202232-4455"),
    ("call family at 215-765-3542 x2216.", "215-765-3542 x2216"),
    ("cell 617 555 1234 anytime", "617 555 1234"),
    ("Tel.: ++49 (0)760 95652, Fax", "+49 (0)760 95652"),
])
def test_more_phone_formats(detector: PhiDetector, text: str, value: str) -> None:
    language = "de" if "Tel." in text else "en"
    assert _covered(detector, text, value, language), _masked(detector, text, language)


@pytest.mark.parametrize("text,value", [
    ("Can someone call me on 9472 7916? I have questions", "9472 7916"),
    ("They're not answering at 78 651 450", "78 651 450"),
    ("daughter: 082 490 1693-Office, 617 555 0199 (cell)", "082 490 1693"),
    ("daughter: 082 490 1693-Office, 617 555 0199 (cell)", "617 555 0199"),
])
def test_phones_by_contact_words(detector: PhiDetector, text: str, value: str) -> None:
    assert _covered(detector, text, value, "en"), _masked(detector, text, "en")


@pytest.mark.parametrize("text,value,language", [
    ("His social security number is 853-37-1694", "853-37-1694", "en"),
    ("ssn 853-37-1694 on file", "853-37-1694", "en"),
    ("insurance card 4131034282458809939 is expiring", "4131034282458809939", "en"),
    ("billed to 4007 0707 5369 0781 last month", "4007 0707 5369 0781", "en"),
    ("My driver's license number is 6940579", "6940579", "en"),
    ("login from 106.31.73.20 blocked", "106.31.73.20", "en"),
    ("Versichertenkarte 4131034282458809 liegt vor", "4131034282458809", "de"),
])
def test_identifier_shapes_and_triggers(detector: PhiDetector, text: str, value: str, language: str) -> None:
    spans = [s for s in detector.detect(text, language) if s.label is PhiType.ID]
    assert spans and _covered(detector, text, value, language), _masked(detector, text, language)


@pytest.mark.parametrize("text", [
    "ABG 7.35/45/80/24, BP 120/80, HR 88, temp 98.6, lactate 1.2",
    "Vent settings 500x14x5x40%, UOP 1200 cc since 0700, K 3.9 repleted",
    "CARDIAC 2 ENZYMES NEG. CARDS 1 FOLLOWING. POLICY 2 RESTRAINTS RENEWED.",
])
def test_clinical_numbers_are_not_identifiers(detector: PhiDetector, text: str) -> None:
    assert not [s for s in detector.detect(text, "en") if s.label in (PhiType.ID, PhiType.PHONE)]


@pytest.mark.parametrize("text,value,language", [
    ("Our 3 founders: Monjeau, Hill and Reed. The idea", "Hill", "en"),
    ("Our 3 founders: Monjeau, Hill and Reed. The idea", "Reed", "en"),
    ("Besuch der Töchter Kipkosgei und Rose am Nachmittag.", "Rose", "de"),
])
def test_names_listed_next_to_a_name(detector: PhiDetector, text: str, value: str, language: str) -> None:
    assert _covered(detector, text, value, language), _masked(detector, text, language)


@pytest.mark.parametrize("text", [
    "Hx of Graves and Hashimoto, on synthroid.",
    "PA LINE RFEM & ALINE L-RAD. ADEQ SEDATION.",
    "Seen by Dr. Monjeau and June follow up planned.",
])
def test_lists_do_not_make_eponyms_shorthand_or_months_names(detector: PhiDetector, text: str) -> None:
    masked = _masked(detector, text, "en")
    assert not [w for w in ("Graves", "Hashimoto", "ALINE", "June") if masked.get(w) is PhiType.NAME], masked


@pytest.mark.parametrize("text,value,language", [
    ("Family says Obaixville test was cancelled, will call back.", "Obaixville", "en"),
    ("Spoke with his wife Umbrielle, who says Obaix test is tomorrow.", "Obaix", "en"),
    ("Die Tochter sagt, der Obaixville Test wurde abgesagt.", "Obaixville", "de"),
])
def test_an_unknown_word_before_a_test_or_device_word_stays_masked(detector: PhiDetector, text: str, value: str,
                                                                   language: str) -> None:
    """The eponym veto spares a word no list knows unless it names a person or a listed eponym."""
    assert _covered(detector, text, value, language), _masked(detector, text, language)


@pytest.mark.parametrize("text,language", [
    ("JP drain: Jackson-Pratt drain placed, Weitlaner retractor used.", "en"),
    ("A Tessio catheter was placed. Utrata forceps used.", "en"),
    ("Known Dupuytren disease, Brugada syndrome ruled out.", "en"),
    ("Bekannter Morbus Crohn, Kernig-Zeichen negativ.", "de"),
    ("Lasègue-Zeichen positiv, V.a. Sjögren-Syndrom, Hickman-Katheter liegt, Babinski Zeichen negativ.", "de"),
])
def test_eponyms_in_use_stay(detector: PhiDetector, text: str, language: str) -> None:
    assert not [s for s in detector.detect(text, language) if s.label is PhiType.NAME], _masked(detector, text, language)


def test_the_eponym_list_holds_unlisted_words_before_device_nouns_and_no_names(tmp_path: Path) -> None:
    source = tmp_path / "documents.jsonl"
    source.write_text("\n".join(json.dumps({"doc_id": f"d{i}", "text": t}) for i, t in enumerate([
        "The Zorbelak retractor was placed and the wound closed.",
        "A Smith catheter was placed. The patient tolerated the procedure well.",
    ])) + "\n", encoding="utf-8")
    words, docs = eponyms_in_use([("mtsamples", source, "text")], "en")
    assert "zorbelak" in words and "smith" not in words and docs == {"mtsamples": 2}
    assert {"weitlaner", "tessio", "utrata"} <= load_vocabulary("en").eponyms  # the committed list is read


# --- German -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [
    ("Anamnese:\nEsio ist eine in unserer Klinik bekannte Patientin.", "Esio"),
    ("Die stationäre Aufnahme von Frau l wandera erfolgte zur Einleitung", "l wandera"),
    ("Herrn spain erfolgte zur Fortführung der Therapie", "spain"),
    ("eine Woche lang im St.-Olasunmbo-Hospital behandelt", "St.-Olasunmbo-Hospital"),
    ("Befund elektronisch an MVZ Campovico versendet!", "MVZ Campovico"),
    ("Praxis Dr. Lallaidh\n\nSehr geehrte Frau Kollegin", "Praxis Dr. Lallaidh"),
    ("Samovaweg 20\n93532 lanzada\n", "93532 lanzada"),
    ("SV Nr.: \t3197197974\n", "3197197974"),
])
def test_german_layers(detector: PhiDetector, text: str, value: str) -> None:
    assert _covered(detector, text, value, "de"), _masked(detector, text, "de")


@pytest.mark.parametrize("text,value", [
    # a letter's structure: the town after the street, the addressee above it, the date line's town
    ("wohnhaft Tobrakaweg 129,  perguvo\n\nWerte Frau Kollegin,", "perguvo"),
    ("in der Neurologie, Slavínstr. 98, wetsonk behandelt", "wetsonk"),
    ("Olvira Abugande\nGrønlekkeweg 48\nA-6310 Lindt", "Olvira Abugande"),
    ("Abteilung für Onkologie\nisokyrvo, am 28.08.71\n\nSehr geehrte Frau Kollegin", "isokyrvo"),
    ("Abteilung für Onkologie\nmonttegabbione, am Dezember 1984\n", "monttegabbione"),
    ("geb: 20. März 1950 wh.: 8616 batignelo, Žejeweg 180", "8616 batignelo"),
    # names in any case after a title chain, a person word and a colon, an initial, or before a birth date
    ("Mit kollegialen Grüßen\nDr. med. arnastu kcákov", "arnastu kcákov"),
    ("Assistenzarzt Dr. med. u. mdletshe OA", "u. mdletshe"),
    ("Patient: majanu f. mbulika * 27.04.2014", "majanu f. mbulika"),
    ("über unsere gemeinsame Patientin p. laoidhe. Stationär", "p. laoidhe"),
    ("Orthoptistin: Yachanu F. MBA", "Yachanu F"),
    ("am 08.05.2033 wurde Hr. qanivu zur Anschlussheilbehandlung", "qanivu"),
    ("etibor kähkönu, * 12.06.32, wohnhaft in Lindau", "etibor kähkönu"),
    ("Geschrieben von pünhane goldu", "pünhane goldu"),
    ("Zusammenfassung: priitu, ein knapp 16-jähriges Mädchen", "priitu"),
    # a specimen number with five digits before the slash
    ("Exstirpation axillär links (47833/0377: tumorfrei)", "47833/0377"),
])
def test_german_letter_structure_and_person_contexts(detector: PhiDetector, text: str, value: str) -> None:
    assert _covered(detector, text, value, "de"), _masked(detector, text, "de")


@pytest.mark.parametrize("text,value", [
    ("Seen by Dr. J. kowalczuk this am.", "J. kowalczuk"),
    ("Family meeting held. Contact: ylvarine tamsoo (daughter).", "ylvarine tamsoo"),
    ("ztorven, a 54 year old man, admitted from home.", "ztorven"),
])
def test_english_person_contexts_through_initials_and_colons(detector: PhiDetector, text: str, value: str) -> None:
    assert _covered(detector, text, value, "en"), _masked(detector, text, "en")


@pytest.mark.parametrize("text", [
    "Herr Müller, Hauptstraße 5, Erdgeschoss links",  # a floor, not a town
    "Klinik für Innere Medizin\nHauptstraße 5",  # a department above a street, not a person
    "Metformin/Sitagliptin 1000/50 mg, RR 120/80",  # doses and pressures, not specimen numbers
    "HR: 80, Fr. 3",
])
def test_german_letter_rules_leave_ordinary_lines(detector: PhiDetector, text: str) -> None:
    found = _masked(detector, text, "de")
    assert not {v for v in found if v in ("Erdgeschoss", "Klinik für Innere Medizin", "1000/50", "120/80", "3")}, found


def test_german_clinical_words_stay(detector: PhiDetector) -> None:
    text = "Z.n. Sigmoideostomie, perihilär keine Raumforderung, Wiedervorstellung bei Thoraxdrainage."
    assert not detector.detect(text, "de")


# --- the stress test ---------------------------------------------------------------------------


def _gold_doc(text: str, spans: list[tuple[str, str]], doc_id: str = "d1", patient: str = "P1") -> GoldDoc:
    gold = []
    for value, label in spans:
        start = text.index(value)
        gold.append(GoldSpan(start, start + len(value), label, gold_type(label, value)))
    return GoldDoc(Document(doc_id=doc_id, patient_id=patient, text=text, language="en"), gold)


def test_stress_variants_replace_every_counted_span_and_keep_offsets() -> None:
    text = "Dr. Marder saw pt on 8/25/1993, aged 55. Wife Mary Swackhamer at 617-555-0143, from Quartermain 2."
    doc = _gold_doc(text, [("Marder", "HCPName"), ("8/25/1993", "Date"), ("Mary", "RelativeProxyName"),
                           ("Swackhamer", "RelativeProxyName"), ("617-555-0143", "Phone"),
                           ("Quartermain", "Location"), ("55", "Age")])
    variants = stress_variants([doc], variants=4, seed=3)
    assert len(variants) == 4 and {v.document.doc_id for v in variants} == {f"d1~s{k}" for k in range(4)}
    originals = {text[g.start:g.end] for g in doc.gold}
    known = known_words()
    for variant in variants:
        assert len(variant.gold) == len(doc.gold)
        for g in variant.gold:
            value = variant.document.text[g.start:g.end]
            assert value.strip(), variant.document.text
            if g.kind is None:
                assert value == "55"  # an age up to 89 is not PHI: kept, offsets moved
            else:
                assert value not in originals
            if g.kind is PhiType.NAME:
                assert any(w.lower() not in known for w in value.split()) or value.lower() in {
                    n.lower() for n in build_pools().hard_last}
    assert stress_variants([doc], 4, seed=3)[2].document.text == variants[2].document.text
    assert stress_variants([doc], 4, seed=4)[2].document.text != variants[2].document.text


def test_a_value_a_note_repeats_gets_one_surrogate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real notes repeat a ward or a surname verbatim ("transfer to Quartermain 2" ... "QUARTERMAIN 2");
    the detector's propagation relies on it, so the stress copy keeps the repeat (its case may differ)."""
    monkeypatch.setattr(deid_stress, "TYPO_RATE", 0.0)  # a typo would change one mention on purpose
    text = ("Transfer to Quartermain 2 in AM. Wife Mary Swackhamer aware. Plan: QUARTERMAIN 2 when bed free, "
            "Mrs. Swackhamer to visit 8/25. Seen 8/25 by ortho; Sacred Heart Memorial called, Sacred Heart "
            "Memorial has a bed.")
    spans = [(m.start(), m.end(), label) for pattern, label in [
        ("Quartermain|QUARTERMAIN", "Location"), ("Mary", "RelativeProxyName"), ("Swackhamer", "RelativeProxyName"),
        ("8/25", "Date"), ("Sacred Heart Memorial", "Location")] for m in re.finditer(pattern, text)]
    doc = GoldDoc(Document(doc_id="d1", patient_id="P1", text=text, language="en"),
                  [GoldSpan(a, b, label, gold_type(label, text[a:b])) for a, b, label in sorted(spans)])
    originals = [text[g.start:g.end] for g in doc.gold]

    def repeats_kept(variant: GoldDoc) -> bool:
        new = [variant.document.text[g.start:g.end].lower() for g in variant.gold]
        return all(len({n for n, o in zip(new, originals) if o.lower() == value.lower()}) == 1 for value in originals)

    assert len(doc.gold) == 9
    assert all(repeats_kept(v) for v in stress_variants([doc], variants=12, seed=2))
    assert not any(repeats_kept(v) for v in stress_variants([doc], variants=12, seed=2, consistent=False))


@pytest.mark.parametrize(("text", "name"), [
    ("was transfered from Japigia Hospital Feb. 5 w/ after a syncopal episode", "Japigia"),
    ("FOUND UNRESPONSIVE IN LOGATEC HOSPITAL. TRANSFERRED TO ED.", "LOGATEC"),
    ("pt going to Gorontalo Medical Center tomorrow", "Gorontalo Medical Center"),
])
def test_an_unlisted_hospital_name_is_masked_without_its_keyword(detector: PhiDetector, text: str, name: str) -> None:
    """As the annotators drew it ("UNION [HOSPITAL]"), and as the hospital rule masks a listed one."""
    assert name in _masked(detector, text, "en"), _masked(detector, text, "en")


def test_a_new_hospital_keeps_its_facility_noun_outside_the_gold_span() -> None:
    """physionet annotates "LAUREL REGIONAL" and "Memorial" of "Memorial Hospital", never the facility
    noun itself ("UNION [HOSPITAL]"), so a stress hospital must not carry one into its gold either."""
    text = "TAKEN TO LAUREL REGIONAL WHERE CK POS. Was transfered from Memorial Hospital 9/13 for cath."
    doc = _gold_doc(text, [("LAUREL", "Location"), ("REGIONAL", "Location"), ("Memorial", "Location")])
    facility = re.compile(r"(?i)\bhospital\W*$")
    tails = 0
    for variant in stress_variants([doc], variants=40, seed=5):
        new = variant.document.text
        assert not [new[g.start:g.end] for g in variant.gold if facility.search(new[g.start:g.end])], new
        assert not re.search(r"(?i)(?:hospital|home|center|clinic|rehab)\W+hospital", new), new
        tails += bool(re.match(r"(?i) hospital where", new[variant.gold[1].end:]))
    assert tails  # some forms did bring a facility noun: it stands after the span
    text = "Was accepted by St. Agnes but cannot leave."  # the gold holds the period: "St." "Agnes"
    doc = _gold_doc(text, [("St.", "Location"), ("Agnes", "Location")])
    for variant in stress_variants([doc], variants=20, seed=5):
        new = variant.document.text
        name = new[variant.gold[0].start:variant.gold[-1].end]
        assert not re.search(r"\w\.\s", name) or name.startswith(("St. ", "ST. ", "st. ")), new  # "TEOR. MEMORIAL"


def test_a_date_cut_over_several_gold_words_keeps_its_own_punctuation() -> None:
    """Word-level gold ("Jan" "5" of "Jan. 5", "St" "Elizabeth") once kept the old joints: "May.. 24",
    "July 26,, 2012", "September. 28", "Holy. Nuhu"."""
    text = "Seen Jan. 5 by cardiology, echo Jan 5, 2101 ok."
    words = [(5, 8), (10, 11), (32, 35), (36, 37), (39, 43)]
    doc = GoldDoc(Document(doc_id="d1", patient_id="P1", text=text, language="en"),
                  [GoldSpan(a, b, "Date", PhiType.DATE) for a, b in words])
    assert [text[a:b] for a, b in words] == ["Jan", "5", "Jan", "5", "2101"]
    full_month = re.compile(r"(?i)\b(?:january|february|march|april|june|july|august|september|october|november|"
                            r"december)\.")
    for variant in stress_variants([doc], variants=40, seed=1):
        new = variant.document.text
        assert ".." not in new and ",," not in new and not full_month.search(new), new
        assert all(new[g.start:g.end].strip() for g in variant.gold)
    text = "Was accepted by St. Elizabeth but cannot leave. Dr. Marder, Jon aware."
    words = [(16, 18, "Hospital", PhiType.LOCATION), (20, 29, "Hospital", PhiType.LOCATION),
             (52, 58, "HCPName", PhiType.NAME), (60, 63, "HCPName", PhiType.NAME)]
    doc = GoldDoc(Document(doc_id="d2", patient_id="P1", text=text, language="en"),
                  [GoldSpan(a, b, label, kind) for a, b, label, kind in words])
    assert [text[a:b] for a, b, _, _ in words] == ["St", "Elizabeth", "Marder", "Jon"]
    for variant in stress_variants([doc], variants=20, seed=1):
        places = [g for g in variant.gold if g.kind is PhiType.LOCATION]
        names = [g for g in variant.gold if g.kind is PhiType.NAME]
        new = variant.document.text
        assert "." not in new[places[0].start:places[-1].end], new  # not "Holy. Nuhu"
        assert new[names[0].end:names[1].start] == ", "  # a name drawn word by word keeps its comma
    text = "wohnhaft Hauptstr. 8, 47809 Krefeld, der sich"
    doc = GoldDoc(Document(doc_id="d3", patient_id="P1", text=text, language="de"),
                  [GoldSpan(9, 20, "LOCATION_STREET", PhiType.ADDRESS), GoldSpan(22, 27, "LOCATION_ZIP", PhiType.ADDRESS),
                   GoldSpan(28, 35, "LOCATION_CITY", PhiType.LOCATION)])
    for variant in stress_variants([doc], variants=5, seed=1):
        street, city = variant.gold[0], variant.gold[-1]
        assert "," in variant.document.text[street.end:city.start]  # one string for two spans: the old joint stays


def test_stress_pools_hold_nothing_the_detector_knows() -> None:
    pools = build_pools()
    known = known_words()
    sample = random.Random(0).sample(list(pools.first) + list(pools.last) + list(pools.places), 300)
    assert not [w for w in sample if any(part.lower() in known for part in w.replace("-", " ").split())]
    assert pools.summary()["first_names"] > 500 and pools.summary()["places"] > 500


def test_parts_are_disjoint_by_patient_and_stable() -> None:
    docs = [_gold_doc(f"note {i}", [], doc_id=f"d{i}", patient=f"P{i % 12}") for i in range(60)]
    dev, unread = select_part(docs, "dev"), select_part(docs, "unread")
    assert len(dev) + len(unread) == 60 and unread
    assert not {g.document.patient_id for g in dev} & {g.document.patient_id for g in unread}
    assert [g.document.doc_id for g in select_part(list(reversed(docs)), "unread")] == \
        [g.document.doc_id for g in reversed(unread)]


def test_presidio_synthetic_set_reads_as_gold_split_by_template(tmp_path: Path) -> None:
    data = tmp_path / "synth.json"
    data.write_text(json.dumps([
        {"full_text": "His social security number is 853-37-1694", "template_id": 3,
         "spans": [{"entity_type": "US_SSN", "entity_value": "853-37-1694", "start_position": 30, "end_position": 41}]},
        {"full_text": "Mr. Ryan moved here from Assen", "template_id": 7,
         "spans": [{"entity_type": "TITLE", "start_position": 0, "end_position": 3},
                   {"entity_type": "PERSON", "start_position": 4, "end_position": 8},
                   {"entity_type": "GPE", "start_position": 25, "end_position": 30}]},
    ]), encoding="utf-8")
    docs = load_gold(data)
    assert [g.document.patient_id for g in docs] == ["template-3", "template-7"]
    assert [(g.label, g.kind) for g in docs[1].gold] == [("TITLE", None), ("PERSON", PhiType.NAME),
                                                         ("GPE", PhiType.LOCATION)]
    assert docs[0].gold[0].kind is PhiType.ID and docs[0].document.text[30:41] == "853-37-1694"
    data.write_text('[{"full_text": "x", "spans": [{"entity_type": "GPE"}]}]', encoding="utf-8")
    with pytest.raises(CorpusError, match="item 1"):
        load_gold(data)


def test_unread_part_cannot_show_its_misses(tmp_path: Path) -> None:
    data = tmp_path / "gold.jsonl"
    data.write_text('{"doc_id": "a", "patient_id": "P1", "text": "Dr. Marder aware.", '
                    '"phi": [{"start": 4, "end": 10, "label": "HCPName"}]}\n', encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--part", "unread", "--show-misses", "--out", str(tmp_path / "out")])


def test_cli_reports_stress_next_to_the_original(tmp_path: Path) -> None:
    data = tmp_path / "gold.jsonl"
    data.write_text('{"doc_id": "a", "patient_id": "P1", "text": "Dr. Marder aware, seen 8/25/1993.", '
                    '"phi": [{"start": 4, "end": 10, "label": "HCPName"}, {"start": 23, "end": 32, "label": "Date"}]}\n',
                    encoding="utf-8")
    assert main(["--data", str(data), "--stress", "2", "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "deid_metrics.md").read_text(encoding="utf-8")
    assert "Original vs stress" in report and "| NAME | 1 / 2 |" in report
    assert (tmp_path / "out" / "deid_recall.png").stat().st_size > 1000


@needs_shared
def test_stress_recall_on_the_development_part() -> None:
    """A floor on the dev part's stress variants, so a change that loses generalization fails here
    (measured 0.978 at the commit that added it; docs/results.md has all parts)."""
    from eval.deid import evaluate

    summary = evaluate(SHARED_DATA / "physionet_deid_dev" / "notes.jsonl", part="dev", stress=1, limit=250)
    assert summary["stress"]["overall"]["recall"] >= 0.95
    assert summary["stress"]["overall"]["precision"] >= 0.8
    assert load_gold(SHARED_DATA / "physionet_deid_dev" / "notes.jsonl")  # the set loads as gold


def test_day_month_dates_after_on_call_outs_and_misspelt_hospitals(detector: PhiDetector) -> None:
    """Context rules of this session, on invented English text: a day after "on" beats a pain score
    after it; "c/o to X" (an ICU call-out) is a place; a misspelt "regional"/"hospital" ends a name."""
    text = "Chest pain on 4/12 and again ON 3/10 HAD CP at rest; awoke on 1/1 with SOB."
    masked = _masked(detector, text, "en")
    assert masked.get("4/12") is PhiType.DATE and masked.get("3/10") is PhiType.DATE
    assert masked.get("1/1") is PhiType.DATE
    for not_a_date in ("Rates pain 3/10 after meds.", "Remains on 5/5 psv overnight.", "Strength 5/5 in all limbs."):
        assert not any(label is PhiType.DATE for label in _masked(detector, not_a_date, "en").values()), not_a_date
    assert _covered(detector, "Plan: c/o to varvaresso if stable overnight.", "varvaresso", "en")
    assert _covered(detector, "Bed offered at rehab (TOLVANEN REGIONNAL) for tomorrow.", "TOLVANEN REGIONNAL", "en")


def test_day_month_dates_after_admissions_and_equal_pairs_no_ventilator_uses(detector: PhiDetector) -> None:
    """"ADMITTED TO OSH 12/10 WITH C/O CP" is a day despite the pain word after it; "on 3/3" and
    "ON 2/2" are days (no ventilator is set to 2-4); "12/26 of 2035" is a day; settings stay."""
    text = "PT ADMITTED TO OSH 12/10 WITH C/O CHEST PAIN. S/P CABG X2 ON 2/2. F/c changed on 3/3. in 12/26 of 2035."
    masked = _masked(detector, text, "en")
    for value in ("12/10", "2/2", "3/3", "12/26"):
        assert masked.get(value) is PhiType.DATE, (value, masked)
    for setting in ("Remains on 5/5 psv overnight.", "pt tried on 5/5 today, did well"):
        assert not any(label is PhiType.DATE for label in _masked(detector, setting, "en").values()), setting
    assert not _masked(detector, "transfer to tsicu 2 today", "en")  # a unit, not a named ward


@pytest.mark.parametrize("text,value", [
    ("Brought in by Gudmeby EMS after fall at home.", "Gudmeby"),  # a town's service names the town
    ("Pt is a 67 yo man from Seixal admitted with CP.", "Seixal"),  # capitalised mid-sentence: no typo of "sexual"
    ("Pt was born in háj.", "háj"),  # short, but with a letter English lacks
    ("Pt recently returned from a trip to Poggiridenti.", "Poggiridenti"),
])
def test_places_in_contexts_no_note_taught(detector: PhiDetector, text: str, value: str) -> None:
    """Sentences like those of `eval.deid_grid` (tune part), with invented values."""
    assert _covered(detector, text, value, "en"), _masked(detector, text, "en")


@pytest.mark.parametrize("text,value", [
    ("PT PRESENTED TO OBAIX WITH CP.", "OBAIX"),  # presenting somewhere is arriving there
    ("pt brought by ems to bzenec.", "bzenec"),
    ("Dispo: Oreye 4 in am.", "Oreye"),  # a named ward after a disposition label or a bed
    ("awaiting bed doksy 7.", "doksy"),
    ("OSH: OREYE.", "OREYE"),  # the value of a place label, after a colon or in parentheses
    ("transferred from osh (bzenec).", "bzenec"),
    ("Outside hospital: Obaix, records faxed.", "Obaix"),
    ("pt is a oreye resident.", "oreye"),  # a town's residents and natives name the town
    ("TO DOKSY CATH LAB FOR PCI.", "DOKSY"),  # a named cath lab, even one letter away from a word
    ("Son brought him to oreye for eval.", "oreye"),  # the patient between the verb and "to"
    ("Daughter drove pt to Bzenec ER.", "Bzenec"),  # a town's ER, like its ED
])
def test_places_in_labels_and_after_arrival_words(detector: PhiDetector, text: str, value: str) -> None:
    """Invented sentences of the tenth round (contexts written for it, values from the stress pools)."""
    assert _covered(detector, text, value, "en"), _masked(detector, text, "en")


def test_labels_and_arrival_words_leave_known_words(detector: PhiDetector) -> None:
    text = ("Pt presented to ED with CP. Home: lives with wife. OSH (records faxed). Awaiting bed on floor. "
            "Pt taken to the cath lab. Dispo: rehab vs home. Pt is a nursing home resident. Wife brought pt to ER.")
    assert not detector.detect(text, "en"), _masked(detector, text, "en")


def test_clinical_typos_and_services_after_place_words_stay(detector: PhiDetector) -> None:
    text = "wean from sedaton as tol, down from basline, pt in resp distress, to ED via EMS. Pt went to ED."
    assert not detector.detect(text, "en"), _masked(detector, text, "en")


def test_a_possessive_home_is_no_hospital_even_with_a_space_before_the_s(detector: PhiDetector) -> None:
    text = 'he was stating, "at rifair \'s house." in addition'
    spans = {text[s.start:s.end]: s.label for s in detector.detect(text, "en")}
    assert "rifair" in spans and not [v for v in spans if "house" in v], spans


def test_days_right_after_a_clinical_event(detector: PhiDetector) -> None:
    """A fraction-shaped m/d, an ordinal or a month abbreviation right after an event word is the day
    it happened ("intubated 1/1", "Foley placed 23rd", "intubated oct"); amounts after the same words
    and ranks stay ("changed 1/2 hour later", "placed 2nd IV")."""
    for text, value in [("Pt was intubated 1/1 for resp failure.", "1/1"), ("Pt had a fall 1/4 at home.", "1/4"),
                        ("Central line changed over wire 1/3.", "1/3"), ("Plan for PEG placement 5/5.", "5/5"),
                        ("Foley placed 23rd, draining clear yellow urine.", "23rd"),
                        ("Next dose of gent due 3rd at 0800.", "3rd"), ("Pt was intubated oct for resp failure.", "oct"),
                        ("Last dose of lasix given 15th at 10am.", "15th"), ("Lasix given 1/4 at 10am.", "1/4")]:
        assert _masked(detector, text, "en").get(value) is PhiType.DATE, (text, _masked(detector, text, "en"))
    for text in ("Dressing changed 1/2 hour later.", "IV placed 2nd attempt.", "NGT removed 1/2 way.",
                 "Treated with 1/2 of D50.", "Given 1/2 amp D50.", "given 1/2 hour after zaroxolyn",
                 "given 1/2 D50", "given 2nd dose of vanco", "dec BS at bases, UO dec"):
        assert not any(label is PhiType.DATE for label in _masked(detector, text, "en").values()), text


def test_a_home_or_work_number_is_a_phone_from_five_digits_or_after_a_label(detector: PhiDetector) -> None:
    """"HOME-56656", "work: 44113" are labels, "HOME 56656" a pager; "home 2 days", "home-2000 ml" are
    not numbers to call."""
    for text, value in [("CELL-444/229-3170 & HOME-56656.", "56656"), ("work: 44113 after 5pm", "44113")]:
        assert _masked(detector, text, "en").get(value) is PhiType.PHONE, (text, _masked(detector, text, "en"))
    assert _masked(detector, "HOME 56656 or cell", "en").get("56656") is PhiType.PHONE
    for text in ("pt went home 2 days ago", "d/c home-2000 ml fluid", "pt home 2000 mg"):
        assert not _masked(detector, text, "en"), text


@pytest.mark.parametrize("text,value", [
    ("Pt was on Emines 5 prior to MICU admission.", "Emines"),  # a ward's number before "prior"
    ("Spoke with charge RN on volvera 4 re bed.", "volvera"),
    ("Pt ok. Quarteira 3 RN aware of transfer.", "Quarteira"),  # a ward as the subject of a staff line
])
def test_named_wards_before_more_followers_and_as_subjects(detector: PhiDetector, text: str, value: str) -> None:
    assert _masked(detector, text, "en").get(value) is PhiType.HOSPITAL, _masked(detector, text, "en")


def test_drugs_and_doses_before_the_same_followers_stay(detector: PhiDetector) -> None:
    for text in ("pt on levo 5 prior to transfer", "on propofol 20 prior to intubation", "levophed 5 rn aware",
                 "recieve 1 bag of plts"):
        assert not _masked(detector, text, "en"), text


@pytest.mark.parametrize("text,value", [
    ("PT IS PREPARED TO GO TO PEINS MEDICAL CENTER TODAY.", "PEINS MEDICAL CENTER"),  # the keyword in any case
    ("slated to go to rehab (moneglia medical centter) today", "moneglia medical centter"),  # a misspelt keyword
    ("TAKEN TO tuoro clinic WHERE CK'S POS.", "tuoro clinic"),
    ("TAKEN TO BEZZECCA NURSING HMOE WHERE CK'S AND TROPONIN POS.", "BEZZECCA NURSING HMOE"),
    ("TRANSFERRED FROM PEINS MEMORAL TODAY", "PEINS MEMORAL"),  # a long keyword's misspelling still counts
])
def test_a_hospital_name_is_masked_with_its_clinic_or_centre(detector: PhiDetector, text: str, value: str) -> None:
    """The keywords the annotators drew inside the name go with it in every case ("Hospital" and
    "campus" stay outside, as in the physionet gold: "UNION HOSPITAL")."""
    assert _covered(detector, text, value, "en"), _masked(detector, text, "en")
    assert _masked(detector, "TAKEN TO UNION HOSPITAL WHERE EKG POS", "en") == {"UNION": PhiType.HOSPITAL}


def test_a_department_before_clinic_or_centre_is_no_name(detector: PhiDetector) -> None:
    for text in ("She was seen in the Urology Clinic today.", "FOLLOW UP IN NEUROLOGY CLINIC.",
                 "f/u in coumadin clinic next week", "seen in Neuro-Oncology Clinic", "Physiatry Clinic"):
        assert not _masked(detector, text, "en"), text


@pytest.mark.parametrize("text,value", [
    ("tried to call her, name is matiu raigne phone # in pink book.", "matiu raigne"),  # "name is" in lower case
    ("pt alert. dumitra jahm from speech and swallow in to see pt.", "dumitra jahm"),  # a person from a service
    ("spoke with rhinehart from PT re d/c", "rhinehart"),
])
def test_names_by_name_is_and_by_their_service(detector: PhiDetector, text: str, value: str) -> None:
    assert _covered(detector, text, value, "en"), _masked(detector, text, "en")


def test_services_after_ordinary_words_stay(detector: PhiDetector) -> None:
    for text in ("call from pharmacy re dose", "recs from nutrition appreciated", "orders from PT for ambulation",
                 "her name is on the board.", "sputum from ETT thick"):
        assert not _masked(detector, text, "en"), text


def test_supplies_feeds_and_weekday_abbreviations_are_no_names(detector: PhiDetector) -> None:
    """Products written capitalised ("Ultracal", "Xerofoam") that no corpus vouches for in lower case
    come from the curated supplies list; a misspelt relation is still a relation."""
    for text in ("TF started, Ultracal at 10cc, increased to 20cc/hr", "NPO FOR PERMACATH PLACEMENT IN OR TODAY",
                 "PLAN TO TRACH ON THURS, WIFE IN AND CONSENT OBTAINED", "Flexiseal in place, draining brown stool.",
                 "SHE GETS METROGEL FOLLOWED BY XEROFOAM AND DSD BID.", "Wife has called, and step duaghter called."):
        assert not _masked(detector, text, "en"), text
    assert _masked(detector, "spoke with daughter kipkosgei", "en") == {"kipkosgei": PhiType.NAME}


def test_holdout_folds_split_by_patient_and_the_collected_words_can_be_swapped() -> None:
    from eval.deid_holdout import patient_folds
    from finetune.phi_vocabulary import load_vocabulary, use_collected_words

    docs = [_gold_doc("x", [], doc_id=f"d{i}", patient=f"P{i % 7}") for i in range(20)]
    folds = patient_folds(docs, 3, seed=5)
    assert set().union(*folds) == {f"P{i}" for i in range(7)} and sum(map(len, folds)) == 7
    assert folds == patient_folds(docs, 3, seed=5)
    try:
        use_collected_words("en", {"zzqxwv"})
        assert load_vocabulary("en").is_safe("zzqxwv")
    finally:
        use_collected_words("en", None)
    assert not load_vocabulary("en").is_safe("zzqxwv") and load_vocabulary("en").is_safe("ultracal")
