"""finetune.split: patient-disjoint, seeded, fraction-following splits of documents and QA pairs."""
from __future__ import annotations

import json

import pytest

from finetune.split import SPLITS, assign_patients, load_assignment, main, split_by_patient
from rag.corpus import Corpus, CorpusError, Document, load_corpus
from tests.conftest import needs_shared
from tests.doubles import read_rows, write_rows


def _qa_for(docs, per_doc=2):
    return [{"qa_id": f"{d.doc_id}-{i}", "doc_id": d.doc_id, "patient_id": d.patient_id,
             "question": f"q{i}", "answer": "a"} for d in docs for i in range(per_doc)]


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("by", ["documents", "patients"])
def test_disjoint_by_patient_and_qa_follow_their_document(synthea, seed, by):
    qa = _qa_for(synthea.documents[::5])
    result = split_by_patient(synthea, qa, seed=seed, by=by)
    patients = {name: {d.patient_id for d in result.documents[name]} for name in SPLITS}
    assert not (patients["train"] & patients["dev"] or patients["train"] & patients["test"]
                or patients["dev"] & patients["test"])
    assert all(patients[name] for name in SPLITS)  # 13 patients: every split gets some
    assert sum(len(v) for v in result.documents.values()) == len(synthea)
    assert sum(len(v) for v in result.qa.values()) == len(qa)
    for name in SPLITS:
        assert {r["patient_id"] for r in result.qa[name]} <= patients[name]
    counts = result.counts()
    assert sum(c["patients"] for c in counts.values()) == len(synthea.patients())


def test_reproducible_by_seed_and_different_across_seeds(synthea):
    a = split_by_patient(synthea, seed=0).patient_split
    assert a == split_by_patient(synthea, seed=0).patient_split
    # file order does not matter, only the seed and the set of patients
    shuffled = Corpus("s", list(reversed(synthea.documents)), [], "native", "x")
    assert split_by_patient(shuffled, seed=0).patient_split == a
    assert any(split_by_patient(synthea, seed=s).patient_split != a for s in (1, 2, 3))


def test_fractions_of_documents_and_of_patients():
    # 100 patients with 1..10 documents each
    counts = {f"p{i:03d}": 1 + i % 10 for i in range(100)}
    total = sum(counts.values())
    by_docs = assign_patients(counts, seed=0, fractions=(0.6, 0.2, 0.2), by="documents")
    docs_in = {s: sum(counts[p] for p, v in by_docs.items() if v == s) for s in SPLITS}
    assert abs(docs_in["train"] / total - 0.6) < 0.03 and abs(docs_in["test"] / total - 0.2) < 0.03
    by_pat = assign_patients(counts, seed=0, fractions=(0.6, 0.2, 0.2), by="patients")
    assert [sum(1 for v in by_pat.values() if v == s) for s in SPLITS] == [60, 20, 20]
    # a zero fraction gets nothing; three patients fill three splits
    assert set(assign_patients(counts, fractions=(1, 0, 0)).values()) == {"train"}
    assert sorted(assign_patients({"a": 5, "b": 1, "c": 9}).values()) == ["dev", "test", "train"]
    with pytest.raises(ValueError):
        assign_patients(counts, fractions=(0.5, 0.5))
    with pytest.raises(ValueError):
        assign_patients(counts, fractions=(1, -1, 1))


@needs_shared
def test_corpus_without_patients_splits_by_document():
    corpus = load_corpus("mtsamples", limit=200)
    assert corpus.patient_structure == "one-per-document"
    result = split_by_patient(corpus, seed=0)
    assert result.patient_structure == "one-per-document"
    assert [len(result.documents[s]) for s in SPLITS] == [160, 20, 20]


def test_bad_qa_pairs_are_reported_with_their_line():
    docs = [Document("d1", "p1", "t"), Document("d2", "p2", "t"), Document("d3", "p3", "t")]
    qa = [{"qa_id": "a", "doc_id": "d1"}, {"qa_id": "b", "doc_id": "zz"}, {"qa_id": "c", "doc_id": "d2", "patient_id": "p1"}]
    with pytest.raises(CorpusError) as err:
        split_by_patient(docs, qa, qa_lines=[1, 4, 5], qa_source="qa.jsonl")
    text = str(err.value)
    assert "qa.jsonl:4: missing_field" in text and "'zz'" in text
    assert "qa.jsonl:5: malformed" in text and "differs from its document's patient 'p2'" in text


def test_cli_writes_splits_counts_and_assignment(tmp_path, synthea, capsys):
    docs = tmp_path / "documents.jsonl"
    from rag.corpus import write_jsonl

    write_jsonl(synthea.documents, docs)
    qa = tmp_path / "qa.jsonl"
    rows = _qa_for(synthea.documents[::10], per_doc=1)
    write_rows(qa, rows)
    out = tmp_path / "split"
    assert main(["--qa", str(qa), "--docs", str(docs), "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "| split | patients | documents | QA pairs |" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(c["qa_pairs"] for c in manifest["counts"].values()) == len(rows)
    assert manifest["inputs"]["qa"]["sha256"] and manifest["parameters"]["seed"] == 0
    assignment = load_assignment(out / "splits.json")
    for name in SPLITS:
        for row in read_rows(out / name / "qa.jsonl"):
            assert assignment[row["patient_id"]] == name
        for row in read_rows(out / name / "documents.jsonl"):
            assert assignment[row["patient_id"]] == name
    # a malformed QA line is named, and nothing is written
    qa.write_text(qa.read_text() + "{broken\n")
    assert main(["--qa", str(qa), "--docs", str(docs), "--out", str(tmp_path / "bad")]) == 1
    assert f"qa.jsonl:{len(rows) + 1}: malformed" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
