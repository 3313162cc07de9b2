"""Corpus model and loaders: exact counts on the real sets, and every kind of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.config import REPO_ROOT, Settings
from rag.corpus import (
    NAMED_CORPORA,
    Corpus,
    CorpusError,
    Document,
    Problem,
    load_corpus,
    load_csv,
    load_jsonl,
    load_patients,
    load_text_folder,
    write_jsonl,
)
from tests.conftest import needs_shared
from tests.doubles import write_rows

SETTINGS = Settings()  # defaults only: no CRAG_* variable or local TOML changes what the test reads
SHARED = Path(SETTINGS.data_dir)


def doc(doc_id: str, patient: str | None = "p1", text: str = "some text", **more) -> dict:
    row = {"doc_id": doc_id, "text": text, **more}
    if patient is not None:
        row["patient_id"] = patient
    return row


# ----------------------------------------------------------------------------------- named sets


def test_synthea_ships_with_the_project_and_needs_no_shared_data(tmp_path):
    settings = SETTINGS.replace(data_dir=tmp_path / "no-shared-here")
    corpus = load_corpus("synthea", settings)
    assert corpus.source == str(REPO_ROOT / "data" / "synthea" / "notes.jsonl")
    assert (len(corpus), len(corpus.patients()), corpus.patient_structure) == (1215, 13, "native")
    assert corpus.problems == []
    first = corpus.by_id()["b107b572-64c6-addb-800d-6816b001aa55"]
    assert first.patient_id == "129c6ac7-8d06-89de-ad63-0204a93e76c3"
    assert first.case_id == "bf475146-508e-2a1a-8e3d-2b9cd8e62ef7"
    assert first.date == "1943-07-03T23:58:16.824-04:00"
    assert first.doc_type == "History and physical note; Evaluation + Plan note"
    assert (first.language, first.source) == ("en", "synthea")
    assert first.extra == {"author": "Dr. Dennis979 Effertz744",
                           "custodian": "LYON CO HLTH DEPT AND COMMUNITY CENTER"}
    assert first.text.startswith("\n1943-07-03\n")  # verbatim, not stripped


def test_synthea_patients_have_names(tmp_path):
    patients = load_patients("synthea", SETTINGS.replace(data_dir=tmp_path / "none"))
    assert len(patients) == 13
    by_id = {p.patient_id: p for p in patients}
    sumiko = by_id["129c6ac7-8d06-89de-ad63-0204a93e76c3"]
    assert (sumiko.name, sumiko.birth_date, sumiko.gender) == ("Sumiko254 Larue605 Medhurst46", "1927-05-21", "female")
    assert [p.patient_id for p in patients] == load_corpus("synthea", SETTINGS).patients()


@needs_shared
def test_synthea_falls_back_to_the_shared_copy(tmp_path):
    corpus = load_corpus("synthea", SETTINGS.replace(demo_data_dir=tmp_path / "empty"))
    assert corpus.source == str(SHARED / "synthea_fhir_10patients" / "notes.jsonl")
    assert len(corpus) == 1215


@needs_shared
@pytest.mark.parametrize(
    ("name", "documents", "patients", "structure"),
    [
        ("physionet_deid_dev", 810, 54, "native"),
        ("grascco_phi", 63, 63, "one-per-document"),
        ("mtsamples", 2357, 2357, "one-per-document"),
        ("pubmedqa_retrieval", 3358, 1000, "per-abstract"),
    ],
)
def test_named_corpus_counts(name, documents, patients, structure):
    corpus = load_corpus(name, SETTINGS)
    assert (len(corpus), len(corpus.patients()), corpus.patient_structure) == (documents, patients, structure)
    assert corpus.problems == []
    assert all(d.text.strip() and d.source == name for d in corpus.documents)


@needs_shared
def test_named_corpus_fields():
    physionet = load_corpus("physionet_deid_dev", SETTINGS).by_id()["P003-N001"]
    assert (physionet.patient_id, physionet.language, physionet.extra["phi"]) == ("P003", "en", [])

    grascco = load_corpus("grascco_phi", SETTINGS).by_id()["Albers"]
    assert (grascco.patient_id, grascco.language) == ("Albers", "de")
    span = grascco.extra["phi"][0]
    assert grascco.text[span["start"]:span["end"]] == span["text"] == "Beate Albers"

    mts = load_corpus("mtsamples", SETTINGS).by_id()["mts-0001"]
    assert (mts.specialty, mts.doc_type, mts.patient_id) == ("Allergy / Immunology", "Allergic Rhinitis", "mts-0001")
    assert mts.extra["descriptions"] and mts.extra["keywords"]

    pub = load_corpus("pubmedqa_retrieval", SETTINGS).by_id()["10135926-2"]
    assert (pub.patient_id, pub.doc_type, pub.language) == ("pmid:10135926", "SETTING", "en")


def test_missing_shared_folder_names_the_path_and_synthea(tmp_path):
    missing = tmp_path / "shared" / "data"
    with pytest.raises(FileNotFoundError) as err:
        load_corpus("mtsamples", SETTINGS.replace(data_dir=missing))
    assert str(missing) in str(err.value) and "synthea" in str(err.value)


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError) as err:
        load_corpus("no_such_corpus", SETTINGS)
    assert all(name in str(err.value) for name in NAMED_CORPORA)


def test_limit_and_path_dispatch(tmp_path):
    assert len(load_corpus("synthea", SETTINGS, limit=5)) == 5
    path = write_rows(tmp_path / "docs.jsonl", [doc("a"), doc("b")])
    assert [d.doc_id for d in load_corpus(str(path), SETTINGS).documents] == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        load_corpus(str(tmp_path / "gone.jsonl"), SETTINGS)


# -------------------------------------------------------------------------------- the document


def test_document_json_metadata_and_round_trip(tmp_path):
    d = Document("d1", "p1", "text", date="2020-01-01", language="en", extra={"phi": [{"start": 0}]})
    assert d.to_json() == {"doc_id": "d1", "patient_id": "p1", "text": "text", "date": "2020-01-01",
                           "language": "en", "extra": {"phi": [{"start": 0}]}}
    assert d.metadata() == {"doc_id": "d1", "patient_id": "p1", "date": "2020-01-01", "language": "en"}
    out = tmp_path / "out" / "documents.jsonl"
    assert write_jsonl([d], out) == 1
    assert load_jsonl(out).documents[0] == Document(**{**d.__dict__, "source": "documents"})


def test_content_hash_changes_with_text_and_metadata_only():
    d = Document("d1", "p1", "text", doc_type="note")
    same = Document("d1", "p1", "text", doc_type="note", extra={"ignored": 1})
    assert d.content_hash() == same.content_hash()
    assert len(d.content_hash()) == 64
    assert Document("d1", "p1", "text!", doc_type="note").content_hash() != d.content_hash()
    assert Document("d1", "p1", "text", doc_type="letter").content_hash() != d.content_hash()


# ------------------------------------------------------------------------------------ bad input


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_malformed_json_names_file_and_line_and_collects_all(tmp_path):
    path = write_rows(tmp_path / "bad.jsonl", [doc("a"), "{not json", doc("b"), "[1, 2]", ""])
    with pytest.raises(CorpusError) as err:
        load_jsonl(path)
    problems = err.value.problems
    assert [(p.line, p.kind) for p in problems] == [(2, "malformed"), (4, "malformed")]
    assert f"{path}:2: malformed" in str(err.value) and f"{path}:4: malformed" in str(err.value)
    corpus = load_jsonl(path, on_problem="skip")
    assert [d.doc_id for d in corpus.documents] == ["a", "b"] and len(corpus.problems) == 2


def test_duplicate_doc_id_raises_or_keeps_the_first(tmp_path):
    path = write_rows(tmp_path / "dup.jsonl", [doc("a", text="first"), doc("b"), doc("a", text="second")])
    with pytest.raises(CorpusError) as err:
        load_jsonl(path)
    (problem,) = err.value.problems
    assert (problem.line, problem.kind) == (3, "duplicate_doc_id")
    assert "line 1" in problem.detail  # both rows are named: the duplicate and the one kept
    assert f"{path}:3: duplicate_doc_id" in str(err.value)
    corpus = load_jsonl(path, on_problem="skip")
    assert [(d.doc_id, d.text) for d in corpus.documents] == [("a", "first"), ("b", "some text")]
    assert corpus.problems == [problem]


def test_empty_text_and_missing_patient_are_problems(tmp_path):
    path = write_rows(tmp_path / "gaps.jsonl", [doc("a", text="  \n"), doc("b", patient=None), doc("c"),
                                                 {"text": "no id", "patient_id": "p"}])
    with pytest.raises(CorpusError) as err:
        load_jsonl(path)
    assert [(p.line, p.kind) for p in err.value.problems] == [
        (1, "empty_text"), (2, "missing_patient_id"), (4, "missing_field")]
    corpus = load_jsonl(path, on_problem="skip")
    assert [d.doc_id for d in corpus.documents] == ["c"] and len(corpus.problems) == 3


def test_one_patient_per_document(tmp_path):
    path = write_rows(tmp_path / "letters.jsonl", [doc("a", patient=None), doc("b", patient=None)])
    corpus = load_jsonl(path, one_patient_per_document=True, language="de")
    assert corpus.patients() == ["a", "b"] and corpus.patient_structure == "one-per-document"
    assert {d.language for d in corpus.documents} == {"de"}


def test_field_map_and_extra(tmp_path):
    path = write_rows(tmp_path / "src.jsonl", [{"id": 7, "body": "x", "pid": "p", "enc": "e1", "kw": ["k"]}])
    corpus = load_jsonl(path, text_field="body", id_field="id", patient_field="pid", field_map={"enc": "case_id"})
    (d,) = corpus.documents
    assert (d.doc_id, d.patient_id, d.text, d.case_id, d.extra) == ("7", "p", "x", "e1", {"kw": ["k"]})
    with pytest.raises(ValueError, match="field_map"):
        load_jsonl(path, field_map={"enc": "nonsense"})


def test_non_utf8_bytes_report_line_and_offset(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = (json.dumps(doc("a")) + "\n").encode()
    path.write_bytes(good + b'{"doc_id": "b", "patient_id": "p1", "text": "Gr\xfc\xdfe"}\n' + good.replace(b'"a"', b'"c"'))
    with pytest.raises(CorpusError) as err:
        load_jsonl(path)
    (problem,) = err.value.problems
    assert (problem.kind, problem.line) == ("encoding", 2)
    offset = len(good) + len(b'{"doc_id": "b", "patient_id": "p1", "text": "Gr')
    assert f"byte offset {offset}" in problem.detail and "UTF-8" in problem.detail
    assert f"{path}:2: encoding" in str(err.value)
    assert [d.doc_id for d in load_jsonl(path, on_problem="skip").documents] == ["a", "c"]


def test_error_message_lists_twenty_problems_and_a_count(tmp_path):
    path = write_rows(tmp_path / "many.jsonl", ["oops"] * 25)
    with pytest.raises(CorpusError) as err:
        load_jsonl(path)
    message = str(err.value)
    assert len(err.value.problems) == 25
    assert f"{path}:20: malformed" in message and f"{path}:21:" not in message and "and 5 more" in message


def test_problem_str():
    assert str(Problem("f.jsonl", 3, "malformed", "bad")) == "f.jsonl:3: malformed: bad"


# ------------------------------------------------------------------------------------- csv, txt


def test_csv_with_patient_column_and_bad_width_row(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text(
        "note,pat,doc_type,when\n"
        "n1,P1,letter,2020-01-01\n"
        'n2,P1,"multi\nline",2020-01-02\n'
        "n3,P2,letter\n"
        "n4,P2,note,\n",
        encoding="utf-8",
    )
    kwargs = dict(text_field="doc_type", id_field="note", patient_field="pat", field_map={"when": "date"})
    with pytest.raises(CorpusError) as err:
        load_csv(path, **kwargs)
    (problem,) = err.value.problems
    assert (problem.line, problem.kind) == (5, "malformed")  # file line, after a two-line record
    assert f"{path}:5: malformed" in str(err.value)
    corpus = load_csv(path, on_problem="skip", **kwargs)
    assert [(d.doc_id, d.patient_id, d.text, d.date) for d in corpus.documents] == [
        ("n1", "P1", "letter", "2020-01-01"), ("n2", "P1", "multi\nline", "2020-01-02"), ("n4", "P2", "note", None)]
    assert corpus.patients() == ["P1", "P2"]


def test_csv_missing_patient_and_encoding(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"doc_id,patient_id,text\na,,hello\nb,p,caf\xe9\nc,p,ok\n")
    with pytest.raises(CorpusError) as err:
        load_csv(path)
    assert [(p.line, p.kind) for p in err.value.problems] == [(2, "missing_patient_id"), (3, "encoding")]


def test_text_folder_patient_from_path(tmp_path):
    root = tmp_path / "letters"
    (root / "P1").mkdir(parents=True)
    (root / "P2" / "2020").mkdir(parents=True)
    (root / "P1" / "a.txt").write_text("Befund A", encoding="utf-8")
    (root / "P2" / "2020" / "b.txt").write_text("Befund B", encoding="utf-8")
    corpus = load_text_folder(root, language="de")
    assert [(d.doc_id, d.patient_id) for d in corpus.documents] == [("P1/a", "P1"), ("P2/2020/b", "P2")]
    assert corpus.patient_structure == "native" and corpus.name == "letters"

    flat = load_text_folder(root, patient_pattern=r"/(?P<patient>[a-z])\.txt$")
    assert [d.patient_id for d in flat.documents] == ["a", "b"]
    single = load_text_folder(root, patient_pattern=None)
    assert single.patients() == ["P1/a", "P2/2020/b"] and single.patient_structure == "one-per-document"


def test_text_folder_problems(tmp_path):
    root = tmp_path / "notes"
    (root / "P1").mkdir(parents=True)
    (root / "loose.txt").write_text("no patient folder", encoding="utf-8")
    (root / "P1" / "empty.txt").write_text("   ", encoding="utf-8")
    (root / "P1" / "latin.txt").write_bytes(b"line one\nline \xe4 two\n")
    (root / "P1" / "ok.txt").write_text("fine", encoding="utf-8")
    with pytest.raises(CorpusError) as err:
        load_text_folder(root)
    kinds = {(Path(p.path).name, p.line, p.kind) for p in err.value.problems}
    assert kinds == {("loose.txt", None, "missing_patient_id"), ("empty.txt", None, "empty_text"),
                     ("latin.txt", 2, "encoding")}
    corpus = load_text_folder(root, on_problem="skip")
    assert isinstance(corpus, Corpus) and [d.doc_id for d in corpus.documents] == ["P1/ok"]
