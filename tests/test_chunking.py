"""Chunking: exact offsets, token budget, structure-aware cuts."""
from __future__ import annotations

import re

from rag.chunking import ChunkingConfig, chunk_document
from rag.corpus import Document


def word_offsets(text: str) -> list[tuple[int, int]]:
    """A stand-in tokenizer: one token per word or punctuation mark."""
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def doc(text: str) -> Document:
    return Document(doc_id="d1", patient_id="p1", text=text, date="2020-01-01", doc_type="note")


NOTE = """
2020-01-01

# Chief Complaint
- Cough

# Medications
metformin 500 MG Oral Tablet; lisinopril 10 MG Oral Tablet.

# Assessment and Plan
Patient presents with acute bronchitis. Prescribed rest and fluids. Follow up in two weeks if no improvement.
"""


def test_offsets_point_into_the_document():
    d = doc(NOTE)
    chunks = chunk_document(d, word_offsets, ChunkingConfig(max_tokens=20, overlap_tokens=4, min_tokens=3))
    assert chunks
    for c in chunks:
        assert d.text[c.start : c.end] == c.text
        assert c.text == c.text.strip()
        assert c.patient_id == "p1" and c.doc_id == "d1"
        assert c.metadata["date"] == "2020-01-01"


def test_every_chunk_fits_the_token_budget_and_content_is_covered():
    text = NOTE * 5
    d = doc(text)
    cfg = ChunkingConfig(max_tokens=25, overlap_tokens=5, min_tokens=3)
    chunks = chunk_document(d, word_offsets, cfg)
    for c in chunks:
        assert len(word_offsets(c.text)) <= cfg.max_tokens
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and i not in covered]
    assert missing == []


def test_sections_start_new_chunks_and_are_named():
    chunks = chunk_document(doc(NOTE), word_offsets, ChunkingConfig(max_tokens=30, overlap_tokens=0, min_tokens=3))
    sections = [c.section for c in chunks]
    assert "Assessment and Plan" in sections
    plan = next(c for c in chunks if c.section == "Assessment and Plan")
    assert plan.text.startswith("# Assessment and Plan")


def test_small_note_is_one_chunk():
    chunks = chunk_document(doc(NOTE), word_offsets, ChunkingConfig(max_tokens=500))
    assert len(chunks) == 1
    assert chunks[0].text == NOTE.strip()


def test_run_on_text_is_split_into_overlapping_token_windows():
    text = " ".join(f"word{i}" for i in range(100))  # no sentence or paragraph boundary
    chunks = chunk_document(doc(text), word_offsets, ChunkingConfig(max_tokens=30, overlap_tokens=10, min_tokens=3))
    assert len(chunks) >= 4
    assert all(len(word_offsets(c.text)) <= 30 for c in chunks)
    assert chunks[1].start < chunks[0].end  # windows overlap


def test_german_label_headers_are_sections():
    text = "Anamnese:\nSeit drei Tagen Husten und Fieber.\n\nMedikation:\nRamipril 5 mg, Metformin 1000 mg.\n"
    chunks = chunk_document(doc(text), word_offsets, ChunkingConfig(max_tokens=12, overlap_tokens=0, min_tokens=2))
    assert {c.section for c in chunks} >= {"Anamnese", "Medikation"}


def test_real_tokenizer_budget(synthea, tiny_embedder):
    cfg = ChunkingConfig(max_tokens=64, overlap_tokens=8)
    for d in synthea.documents[:40]:
        for c in chunk_document(d, tiny_embedder.token_offsets, cfg):
            assert tiny_embedder.count_tokens(c.text) <= cfg.max_tokens
            assert d.text[c.start : c.end] == c.text
