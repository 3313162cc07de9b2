"""eval.deid: the coverage rule, precision, over-masking, label mapping, residual check, CLI outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.deid import EVAL_KEY, Tally, evaluate_docs, main, markdown_table, score_document, summarize
from eval.deid_detectors import make_detector
from eval.deid_gold import GoldDoc, GoldSpan, load_gold
from eval.deid_shapes import value_shape
from finetune.phi_text import PhiSpan
from finetune.phi_types import PhiType, gold_type
from rag.corpus import CorpusError, Document
from tests.doubles import write_rows

TEXT = "Dr. Marder saw Mr. Nicholson on 03/14/2021; Parkinson disease."


def _gold_doc(spans: list[tuple[int, int, str]]) -> GoldDoc:
    gold = [GoldSpan(s, e, label, gold_type(label, TEXT[s:e])) for s, e, label in spans]
    return GoldDoc(Document(doc_id="d", patient_id="P", text=TEXT), gold)


def _span(word: str, label: PhiType, cut: int = 0) -> PhiSpan:
    start = TEXT.index(word)
    return PhiSpan(start, start + len(word) - cut, label)


GOLD = [(4, 10, "HCPName"), (19, 28, "PTName"), (32, 42, "Date"), (0, 3, "NAME_TITLE")]


def test_found_needs_90_percent_of_the_characters() -> None:
    tally = Tally()
    predicted = [_span("Marder", PhiType.NAME), _span("Nicholson", PhiType.NAME, cut=2),  # 7/9 chars: missed
                 _span("03/14/2021", PhiType.DATE)]
    score_document(_gold_doc(GOLD), predicted, TEXT, tally, keep_examples=True)
    summary = summarize(tally)
    assert summary["per_type"]["NAME"] == {**summary["per_type"]["NAME"], "gold": 2, "found": 1, "recall": 0.5}
    assert summary["per_type"]["DATE"]["recall"] == 1.0
    assert summary["excluded_gold"]["NAME_TITLE"]["count"] == 1  # titles are not counted
    assert tally.misses[0]["text"] == "Nicholson"
    # the residual check reads the output text: "Nicholson" is still there, "Marder" was not replaced either
    assert summary["overall"]["residual_in_output"] == 3


def test_precision_and_non_phi_masking() -> None:
    tally = Tally()
    predicted = [_span("Marder", PhiType.NAME), _span("Parkinson", PhiType.NAME)]
    output = TEXT.replace("Marder", "Smith").replace("Nicholson", "Brown").replace("03/14/2021", "05/02/2021")
    score_document(_gold_doc(GOLD), predicted, output, tally, keep_examples=True)
    summary = summarize(tally)
    assert summary["overall"]["precision"] == 0.5  # Parkinson is a false alarm
    assert tally.false_alarms[0]["text"] == "Parkinson"
    non_phi = sum(c.isalnum() for c in TEXT) - sum(c.isalnum() for c in "DrMarderNicholson03142021")
    assert summary["overall"]["nonphi_chars"] == non_phi
    assert summary["overall"]["nonphi_chars_masked"] == len("Parkinson")
    assert summary["overall"]["residual_in_output"] == 0


def test_label_mapping_is_one_table() -> None:
    assert gold_type("HCPName") is PhiType.NAME and gold_type("NAME_PATIENT") is PhiType.NAME
    assert gold_type("CONTACT_FAX") is PhiType.PHONE and gold_type("LOCATION_ZIP") is PhiType.ADDRESS
    assert gold_type("AGE", "98") is PhiType.AGE and gold_type("AGE", "55") is None
    assert gold_type("NAME_TITLE") is None
    with pytest.warns(UserWarning, match="unknown gold PHI label"):
        assert gold_type("SOMETHING_NEW") is PhiType.OTHER


def test_bad_gold_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"doc_id": "a", "text": "short", "phi": [{"start": 0, "end": 99, "label": "DATE"}]})
                    + "\n" + json.dumps({"doc_id": "b", "text": "no gold"}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as info:
        load_gold(path)
    assert f"{path}:1" in str(info.value) and f"{path}:2" in str(info.value)


def test_cli_writes_json_markdown_plot_and_manifest(tmp_path: Path) -> None:
    text = "Seen by Dr. Marder on 03/14/2021. Parkinson disease. Daughter Emily called."
    rows = [{"doc_id": "x1", "patient_id": "P9", "language": "en", "text": text,
             "phi": [{"start": 12, "end": 18, "label": "HCPName"}, {"start": 22, "end": 32, "label": "Date"},
                     {"start": 62, "end": 67, "label": "RelativeProxyName"}]}]
    data = tmp_path / "gold.jsonl"
    write_rows(data, rows)
    out = tmp_path / "report"
    assert main(["--data", str(data), "--out", str(out)]) == 0
    metrics = json.loads((out / "deid_metrics.json").read_text())
    assert metrics["overall"]["recall"] == 1.0 and metrics["overall"]["residual_in_output"] == 0
    assert metrics["overall"]["nonphi_chars_masked"] == 0  # Parkinson stays
    assert "| **all** |" in (out / "deid_metrics.md").read_text()
    assert (out / "deid_recall.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["documents"] == 1 and len(manifest["input"]["sha256"]) == 64
    assert "misses" not in metrics  # PHI strings only with --show-misses


def test_a_surrogate_equal_to_another_original_is_not_a_leak() -> None:
    text = "Seen 03/07/2021, again 03/14/2021."
    gold = GoldDoc(Document(doc_id="d", patient_id="P", text=text),
                   [GoldSpan(5, 15, "Date", PhiType.DATE), GoldSpan(23, 33, "Date", PhiType.DATE)])
    output = "Seen 03/14/2021, again 03/21/2021."  # shifted by a week: the first surrogate equals gold #2
    predicted = [PhiSpan(5, 15, PhiType.DATE), PhiSpan(23, 33, PhiType.DATE)]
    tally = Tally()
    score_document(gold, predicted, output, tally, keep_examples=False, replaced=[(5, 15), (23, 33)])
    assert summarize(tally)["overall"]["residual_in_output"] == 0
    leaky = Tally()
    score_document(gold, predicted, output, leaky, keep_examples=False, replaced=[(23, 33)])
    assert summarize(leaky)["overall"]["residual_in_output"] == 1


def test_context_grid_fills_every_sentence_and_reports_misses(tmp_path: Path) -> None:
    """eval.deid_grid: invented sentences x stress-pool values; a sentence with no slot is refused."""
    from eval import deid_grid

    templates = deid_grid.load_templates("place", "held_out")
    assert len(templates) >= 10 and all(t.count("{P}") == 1 for t in templates)
    assert deid_grid.load_templates("date", "tune")

    class OnlyAfterFrom:  # a detector that masks the word after "from" and nothing else
        def detect(self, text: str, language: str) -> list[PhiSpan]:
            words = text.split()
            if "from" not in words[:-1]:
                return []
            start = text.index(" from ") + len(" from ")
            end = text.find(" ", start)
            return [PhiSpan(start, end if end > 0 else len(text), PhiType.LOCATION)]

    results = deid_grid.run_grid(OnlyAfterFrom(), "place", ["Son flew in from {P} today.", "Lives in {P}."],
                                 per_template=5, seed=1)
    assert [r.tried for r in results] == [5, 5]
    assert len(results[1].missed) == 5 and results[1].recall == 0.0  # "in" is not "from"
    assert all(v and v in "Lives in " + v for v in results[1].missed)  # the missed values are reported
    assert results[0].recall > 0.5  # single-word places after "from" are found

    bad = tmp_path / "templates.json"
    bad.write_text(json.dumps({"place": {"tune": ["no slot here"]}}), encoding="utf-8")
    with pytest.raises(ValueError, match="exactly one"):
        deid_grid.load_templates("place", "tune", bad)


def test_grid_training_set_holds_tune_sentences_with_training_values(tmp_path: Path) -> None:
    """eval.deid_grid --training-out: only 'tune' sentences, values from the training pools (never the
    stress pools), spans exactly on the values, several sentences per text."""
    from eval import deid_grid
    from eval.deid_stress import build_pools
    from finetune.phi_tagger import read_annotated

    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps({"place": {"tune": ["Lives in {P}.", "PT FLOWN TO {P} TODAY."],
                                               "held_out": ["Flew from {P}."]},
                                     "date": {"tune": ["Seen {D} in clinic."]}}), encoding="utf-8")
    out = tmp_path / "grid.jsonl"
    assert deid_grid.write_training_set(out, per_template=6, seed=2, sentences_per_text=4, path=templates) == 5
    examples = read_annotated([out])
    assert sum(len(ex.spans) for ex in examples) == 18 and len(examples[0].spans) == 4
    assert not any("Flew" in ex.text for ex in examples)
    stress_places = {p.lower() for p in build_pools().places}
    for ex in examples:
        for start, end, kind in ex.spans:
            value = ex.text[start:end]
            before = ex.text[max(0, start - 9):start]
            assert kind in (PhiType.LOCATION, PhiType.DATE) and value == value.strip() and value
            assert (kind is PhiType.DATE) == before.endswith("Seen ")
            if before.endswith("FLOWN TO "):
                assert value.isupper()  # a sentence in capitals gets a capital value
            if kind is PhiType.LOCATION:
                assert value.lower() not in stress_places


def test_false_alarm_count_reports_types_and_sources_never_text(tmp_path: Path) -> None:
    """eval.deid_false_alarms: the spans our detector raises in text without PHI, counted, with the
    four report files; the report holds no word of the text."""
    from eval.deid_false_alarms import main as false_alarms

    data = tmp_path / "notes.jsonl"
    write_rows(data, [{"doc_id": "a", "patient_id": "p", "text": "Seen by Dr. Quaxley on 3/4/2021 for COPD."},
                      {"doc_id": "b", "patient_id": "p", "text": "Lasix 40 mg given, Foley in place."}])
    out = tmp_path / "report"
    assert false_alarms(["--data", str(data), "--out", str(out)]) == 0
    summary = json.loads((out / "false_alarms.json").read_text(encoding="utf-8"))
    assert summary["documents"] == 2 and summary["by_type"] == {"NAME": 1, "DATE": 1} and summary["spans"] == 2
    assert sum(summary["by_source"].values()) == 2 and 0 < summary["characters_masked"] < 0.5
    assert "Quaxley" not in (out / "false_alarms.json").read_text(encoding="utf-8")
    assert (out / "false_alarms.md").is_file() and (out / "false_alarms.png").is_file()
    assert false_alarms(["--data", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2


@pytest.mark.parametrize("kind, value, shape", [
    (PhiType.DATE, "3/8", "d/d (fraction-like)"),
    (PhiType.DATE, "11/21/45", "d/d/d"),
    (PhiType.DATE, "2045-03-08", "yyyy-d-d"),
    (PhiType.DATE, "Mar. 8th", "Mon. dth"),
    (PhiType.DATE, "dec", "mon"),
    (PhiType.DATE, "12. März 2021", "d. Month yyyy"),
    (PhiType.PHONE, "(555) 123-4567", "(d) d-d"),
    (PhiType.LOCATION, "GH", "initials"),
    (PhiType.LOCATION, "ST JUDE HOSPITAL", "3 words, UPPER, keyword"),
    (PhiType.NAME, "McDonald", "1 word, mixed"),
])
def test_value_shapes_keep_the_form_and_drop_the_text(kind: PhiType, value: str, shape: str) -> None:
    assert value_shape(kind, value) == shape


def test_misses_are_counted_by_value_shape_without_their_text(tmp_path: Path) -> None:
    text = "Seen by Dr. Qwzx on 03/14/2021 in Xylotown."
    rows = [{"doc_id": "x1", "patient_id": "P9", "language": "en", "text": text,
             "phi": [{"start": 12, "end": 16, "label": "HCPName"}, {"start": 20, "end": 30, "label": "Date"},
                     {"start": 34, "end": 42, "label": "Location"}]}]
    write_rows(tmp_path / "gold.jsonl", rows)
    summary = evaluate_docs(load_gold(tmp_path / "gold.jsonl"), make_detector("ours", EVAL_KEY, 8, None))
    shapes = {(r["type"], r["shape"]): r for r in summary["by_shape"]}
    assert shapes[("DATE", "d/d/yyyy")]["gold"] == 1 and shapes[("DATE", "d/d/yyyy")]["missed"] == 0
    table = markdown_table(summary, "t")
    assert "Xylotown" not in table and "Qwzx" not in table
    missed = [r for r in summary["by_shape"] if r["missed"]]
    assert all(f"| {r['type']} | {r['shape']} |" in table for r in missed)
