"""Grounded answers: citation parsing and attribution, language, and the real embedded generator."""
from __future__ import annotations

import pytest

from rag.answer import AnswerPipeline, Citation, attribute_by_overlap, cited_numbers, detect_language, format_passages
from rag.index import ChunkIndex
from rag.prompts import load_prompt
from rag.retrieve import Hit, HybridRetriever, DenseRetriever, BM25Retriever, Scope
from tests.conftest import small_synthea


def hit(n: int, text: str, patient: str = "p1") -> Hit:
    return Hit(chunk_id=f"d{n}#0000", doc_id=f"d{n}", patient_id=patient, text=text, start=0, end=len(text),
               score=1.0 / n, rank=n, retriever="test", metadata={"date": "2020-01-0%d" % n, "doc_type": "note"})


def test_cited_numbers():
    assert cited_numbers("Metformin [1]. Lisinopril [2, 3]; again [1] and [4;5]") == [1, 2, 3, 4, 5]
    assert cited_numbers("no citations here, only [a] and (1)") == []


def test_overlap_attribution_picks_the_passage_that_holds_the_words():
    hits = [hit(1, "Cough and fever for three days."), hit(2, "Prescribed metformin 500 MG oral tablet daily.")]
    assert attribute_by_overlap("The patient takes metformin 500 MG tablet daily.", hits) == [2]
    assert attribute_by_overlap("Nothing relevant appears anywhere.", hits) == []


def test_language_detection():
    assert detect_language("Welche Medikamente nimmt die Patientin?") == "de"
    assert detect_language("Which medications is this patient on?") == "en"


def test_prompts_are_versioned_and_fill():
    for lang in ("en", "de"):
        p = load_prompt("answer", lang)
        assert p.version.startswith(f"answer-{lang}-")
        msgs = p.messages(passages=format_passages([hit(1, "text")]), question="q?")
        assert "[1]" in msgs[1]["content"] and msgs[0]["role"] == "system"


class ScriptedLLM:
    """Stands in for the generator only where the test is about our parsing, not the model."""

    def __init__(self, text: str) -> None:
        self.text = text

    def describe(self) -> str:
        return "scripted"

    def stream(self, messages, **kw):
        yield self.text


class ListRetriever:
    name = "list"

    def __init__(self, hits):
        self.hits = hits

    def retrieve(self, query, scope, k=10):
        return [h for h in self.hits if scope.allows(h.patient_id)][:k]


def test_invalid_citation_numbers_are_dropped_and_reported():
    pipe = AnswerPipeline(ListRetriever([hit(1, "metformin"), hit(2, "cough")]), ScriptedLLM("Metformin [1] and [7]."), k=2)
    answer = pipe.answer("meds?", Scope.patient("p1"))
    assert [c.n for c in answer.citations] == [1] and answer.citations[0].source == "model"
    assert answer.invalid_citations == [7]


def test_no_hits_means_no_generation():
    pipe = AnswerPipeline(ListRetriever([hit(1, "metformin", patient="p2")]), ScriptedLLM("should not be used"), k=2)
    answer = pipe.answer("Welche Medikamente?", Scope.patient("p1"))
    assert answer.citations == [] and "kein Dokument" in answer.text


@pytest.fixture(scope="module")
def llm():
    from rag.local_llm import EmbeddedLLMServer

    with EmbeddedLLMServer(threads=1) as server:
        yield server.client(timeout_s=120, max_retries=1)


@pytest.mark.slow
def test_real_generator_answers_with_citations_of_the_scoped_patient(llm, tmp_path, synthea, tiny_embedder):
    from rag.config import load_settings

    corpus = small_synthea(synthea, patients=3, per_patient=20)
    index = ChunkIndex(corpus.name, tiny_embedder, load_settings(home=tmp_path))
    index.sync(corpus.documents, progress=False)
    retriever = HybridRetriever(DenseRetriever(index), BM25Retriever(index))
    pipe = AnswerPipeline(retriever, llm, k=4, max_tokens=120)
    # Whether SmolLM2-135M's wording overlaps a passage enough to be grounded is the model's quality, not
    # the pipeline's (3 of these 6 answers here, 0 of 6 in one CI run), so the test checks that the
    # real output went through citation parsing and the overlap fallback, not how often they succeed;
    # grounding itself is tested deterministically above.
    for pid in corpus.patients():
        for question in ("Which medications is this patient on?", "What allergies does the patient have?"):
            answer = pipe.answer(question, Scope.patient(pid))
            assert answer.text.strip()
            assert answer.passages and all(h.patient_id == pid for h in answer.passages)
            chunk_ids = {h.chunk_id for h in answer.passages}
            for c in answer.citations:
                assert isinstance(c, Citation) and c.hit.chunk_id in chunk_ids and c.hit.patient_id == pid
            if not any(c.source == "model" for c in answer.citations):
                assert [c.n for c in answer.citations] == attribute_by_overlap(answer.text, answer.passages)
            assert answer.timings["first_token_s"] > 0 and "llama.cpp" in answer.generator
