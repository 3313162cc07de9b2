"""Training pair sources: inverse cloze and QA pairs, restricted to the patients a split allows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.pairs import (
    Pair,
    chunk_corpus,
    description_pairs,
    inverse_cloze_pairs,
    locate_evidence,
    qa_pairs,
    read_pairs,
    sentences,
    write_pairs,
)
from finetune.qa_schema import read_qa
from rag.chunking import ChunkingConfig
from rag.corpus import Corpus, CorpusError, Document


def _offsets(text: str) -> list[tuple[int, int]]:
    """Whitespace tokens: the chunker only needs token offsets, not a model."""
    import re

    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _corpus() -> Corpus:
    long = " ".join(f"Sentence number {i} mentions heparin drip rate {i} units." for i in range(40))
    docs = [
        Document("d1", "p1", "Pt admitted with chest pain. Troponin elevated at 2.3. Started on heparin drip."),
        Document("d2", "p1", "Follow up: chest pain resolved. Heparin stopped today. Plan cardiac cath tomorrow."),
        Document("d3", "p2", "Febrile to 39.1 overnight. Blood cultures sent. Started vancomycin and zosyn."),
        Document("d4", "p3", long),
    ]
    return Corpus("toy", docs, [], "native", "toy")


def test_sentences_split_on_punctuation_and_lines() -> None:
    text = "First one here. Second one?\nThird line.. fourth bit"
    parts = [text[a:b] for a, b in sentences(text)]
    assert parts == ["First one here.", "Second one?", "Third line", "fourth bit"]


def test_inverse_cloze_only_from_allowed_patients_and_deterministic() -> None:
    corpus = _corpus()
    chunks = chunk_corpus(corpus, _offsets, ChunkingConfig(max_tokens=40, overlap_tokens=0, min_tokens=5),
                          patients=["p1", "p3"])
    assert set(chunks) == {"d1", "d2", "d4"}
    pairs = inverse_cloze_pairs(chunks, per_chunk=2, remove_prob=1.0, min_words=3, seed=1)
    assert pairs and {p.patient_id for p in pairs} == {"p1", "p3"}
    for p in pairs:
        assert p.source == "ict" and p.query not in p.positive  # removed from its passage (prob 1)
        chunk = next(c for c in chunks[p.doc_id] if c.chunk_id == p.chunk_id)
        assert p.query in chunk.text
    again = inverse_cloze_pairs(chunks, per_chunk=2, remove_prob=1.0, min_words=3, seed=1)
    assert [p.to_json() for p in again] == [p.to_json() for p in pairs]
    kept = inverse_cloze_pairs(chunks, per_chunk=1, remove_prob=0.0, min_words=3, seed=1)
    assert all(p.query in p.positive for p in kept)


def test_description_pairs_take_the_summary_and_its_best_chunk() -> None:
    filler = " ".join(f"Routine line {i} without findings." for i in range(40))
    docs = [
        Document("m1", "m1", filler + " Impression: left knee effusion, aspiration performed.",
                 extra={"descriptions": ["Aspiration of a left knee effusion."]}),
        Document("m2", "m2", "Cardiology consult for atrial fibrillation.", extra={"descriptions": "AFib consult note"}),
        Document("m3", "m3", "No summary here.", extra={"descriptions": ["too short"]}),
        Document("m4", "m4", "No metadata at all."),
    ]
    corpus = Corpus("toy", docs, [], "one-per-document", "toy")
    chunks = chunk_corpus(corpus, _offsets, ChunkingConfig(max_tokens=60, overlap_tokens=0))
    assert len(chunks["m1"]) > 1
    pairs = description_pairs(corpus, chunks)
    assert [(p.doc_id, p.query, p.source) for p in pairs] == [
        ("m1", "Aspiration of a left knee effusion.", "description"), ("m2", "AFib consult note", "description")]
    assert "knee effusion" in pairs[0].positive and pairs[0].chunk_id != chunks["m1"][0].chunk_id
    assert pairs[0].patient_id == "m1"
    sample = description_pairs(corpus, chunks, limit=1, seed=3)
    assert len(sample) == 1 and sample == description_pairs(corpus, chunks, limit=1, seed=3)


def test_locate_evidence_exact_fuzzy_and_fallback() -> None:
    corpus = _corpus()
    doc = corpus.by_id()["d4"]
    chunks = chunk_corpus(corpus, _offsets, ChunkingConfig(max_tokens=30, overlap_tokens=0, min_tokens=5))["d4"]
    assert len(chunks) > 3
    chunk, how = locate_evidence("Sentence number 33 mentions  heparin\ndrip rate 33", chunks, doc.text)
    assert how == "exact" and "number 33 " in chunk.text
    chunk, how = locate_evidence("sentence numbr 21 mentions heparin drip rate 21 unit", chunks, doc.text)
    assert how == "fuzzy" and "number 21 " in chunk.text
    chunk, how = locate_evidence("completely unrelated words about a femur fracture", chunks, doc.text)
    assert how == "first" and chunk is chunks[0]


def test_qa_pairs_follow_the_split_and_reject_unknown_documents(tmp_path: Path) -> None:
    corpus = _corpus()
    chunks = chunk_corpus(corpus, _offsets, ChunkingConfig(max_tokens=40, overlap_tokens=0, min_tokens=5))
    rows = [
        {"qa_id": "q1", "doc_id": "d1", "question": "What was the troponin level?", "evidence": "Troponin elevated at 2.3"},
        {"qa_id": "q2", "doc_id": "d3", "question": "Which antibiotics were started?", "evidence": "vancomycin and zosyn"},
    ]
    pairs = qa_pairs(rows, corpus, chunks, patients={"p1"})
    assert [p.extra["qa_id"] for p in pairs] == ["q1"]  # p2 is not a training patient
    assert pairs[0].positive.startswith("Pt admitted") and pairs[0].extra["located"] == "exact"
    with pytest.raises(CorpusError, match="not in corpus"):
        qa_pairs([{"qa_id": "x", "doc_id": "nope", "question": "?"}], corpus, chunks)


def test_pairs_round_trip_and_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    pairs = [Pair("q", "p", "d1", "p1", "d1#0000", "qa", ["n"], {"qa_id": "a"})]
    path = tmp_path / "pairs.jsonl"
    assert write_pairs(pairs, path) == 1
    assert read_pairs(path)[0] == pairs[0]
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(CorpusError, match=r"pairs.jsonl:2"):
        read_pairs(path)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"doc_id": "d1", "question": "ok?"}) + "\n" + json.dumps({"doc_id": "d1"}) + "\n")
    with pytest.raises(CorpusError, match=r"qa.jsonl:2"):
        read_qa(qa, required=("doc_id", "question"))
