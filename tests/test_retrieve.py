"""Scoped retrieval: a patient-scoped query never returns another patient's chunk, on any retriever."""
from __future__ import annotations

import random

import pytest

from rag.config import REPO_ROOT
from rag.index import ChunkIndex
from rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever, Scope, ScopeViolation, make_retriever
from tests.conftest import small_synthea
from tests.doubles import read_rows, synced_index


@pytest.fixture(scope="module")
def index(tmp_path_factory, synthea, tiny_embedder):
    from rag.config import load_settings

    settings = load_settings(home=tmp_path_factory.mktemp("retrieve-home"))
    corpus = small_synthea(synthea, patients=6, per_patient=15)
    return synced_index(corpus.name, tiny_embedder, settings, corpus.documents)


@pytest.fixture(scope="module")
def retrievers(index):
    dense, bm25 = DenseRetriever(index), BM25Retriever(index)
    return {"dense": dense, "dense-store": DenseRetriever(index, search="store"), "bm25": bm25,
            "hybrid": HybridRetriever(dense, bm25)}


def queries(n: int = 40) -> list[str]:
    """Real demo questions plus random clinical word salad (property-style)."""
    rows = read_rows(REPO_ROOT / "data/synthea/qrels_condition_diagnosis.jsonl")
    rng = random.Random(7)
    words = ["metformin", "cough", "hypertension", "plan", "allergies", "medications", "smoking", "pain", "fever",
             "insulin", "screening", "vaccine", "bronchitis", "sinusitis", "history", "follow", "up"]
    salad = [" ".join(rng.sample(words, rng.randint(1, 4))) for _ in range(n // 2)]
    return [r["query"] for r in rng.sample(rows, n // 2)] + salad


@pytest.mark.parametrize("kind", ["dense", "dense-store", "bm25", "hybrid"])
def test_patient_scope_never_leaks(kind, retrievers, index):
    retriever = retrievers[kind]
    patients = sorted({m["patient_id"] for m in index.all_chunks()[2]})
    assert len(patients) == 6
    seen_any = 0
    for query in queries():
        for pid in patients:
            hits = retriever.retrieve(query, Scope.patient(pid), k=10)
            assert all(h.patient_id == pid for h in hits), (kind, query, pid)
            seen_any += bool(hits)
        pair = Scope.of(patients[:2])
        assert all(h.patient_id in patients[:2] for h in retriever.retrieve(query, pair, k=20))
    assert seen_any > len(patients) * 10  # the scoped searches do find things


@pytest.mark.parametrize("kind", ["dense", "dense-store", "bm25", "hybrid"])
def test_unknown_or_empty_scope_returns_nothing(kind, retrievers):
    assert retrievers[kind].retrieve("cough", Scope.patient("no-such-patient"), k=5) == []
    assert retrievers[kind].retrieve("cough", Scope(()), k=5) == []


def test_cross_patient_scope_sees_several_patients(retrievers):
    hits = retrievers["bm25"].retrieve("medications allergies plan", Scope.all(), k=50)
    assert len({h.patient_id for h in hits}) > 1


def test_scope_reaches_the_store_query(index, monkeypatch):
    """The Chroma query itself carries the patient filter (no global top-k filtered afterwards)."""
    seen = {}
    original = index.collection.query

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(index.collection, "query", spy)
    DenseRetriever(index, search="store").retrieve("cough", Scope.patient("p-x"), k=3)
    assert seen["where"] == {"patient_id": {"$eq": "p-x"}} or seen["where"] == {"patient_id": "p-x"}


def test_hits_carry_offsets_and_metadata(retrievers, synthea):
    docs = synthea.by_id()
    for hit in retrievers["hybrid"].retrieve("cough", Scope.all(), k=10):
        doc = docs[hit.doc_id]
        assert doc.text[hit.start : hit.end] == hit.text
        assert hit.patient_id == doc.patient_id and hit.date == doc.date and hit.doc_type == doc.doc_type


def test_a_violation_raises_instead_of_returning(index, monkeypatch):
    """If the store ever ignored the filter, the defence in depth turns it into an error, not a leak."""
    original = index.collection.query

    def broken_filter(*args, **kwargs):
        kwargs.pop("where", None)
        return original(*args, **kwargs)

    monkeypatch.setattr(index.collection, "query", broken_filter)
    with pytest.raises(ScopeViolation):
        DenseRetriever(index, search="store").retrieve("cough", Scope.patient("someone-else"), k=5)


def test_exact_dense_is_the_true_cosine_ranking_of_the_scope(index):
    """Exact search ranks exactly the scope's stored vectors by cosine (HNSW only approximates this)."""
    import numpy as np

    got = index.collection.get(include=["embeddings", "metadatas"])
    pid = got["metadatas"][0]["patient_id"]
    rows = [i for i, m in enumerate(got["metadatas"]) if m["patient_id"] == pid]
    matrix = np.asarray(got["embeddings"], dtype=np.float32)[rows]
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    query = index.embedder.embed_queries(["cough and fever"])[0]
    sims = matrix @ (query / np.linalg.norm(query))
    hits = DenseRetriever(index, search="exact").retrieve("cough and fever", Scope.patient(pid), k=len(rows) + 5)
    assert len(hits) == len(rows)  # every chunk of the patient, none of anyone else's
    assert [h.score for h in hits] == pytest.approx(sorted(sims.tolist(), reverse=True), abs=1e-5)


def test_exact_dense_sees_documents_added_after_it_loaded(tmp_path, synthea, tiny_embedder):
    from rag.config import load_settings

    idx = ChunkIndex("late-docs", tiny_embedder, load_settings(home=tmp_path))
    first, later = synthea.documents[:5], synthea.documents[5:8]
    idx.sync(first, progress=False)
    dense = DenseRetriever(idx, search="exact")
    assert {h.doc_id for h in dense.retrieve("note", Scope.all(), k=100)} == {d.doc_id for d in first}
    idx.sync(first + later, progress=False)
    assert {h.doc_id for h in dense.retrieve("note", Scope.all(), k=100)} == {d.doc_id for d in first + later}


def test_unknown_dense_search_mode(index):
    with pytest.raises(ValueError, match="auto, exact, store"):
        DenseRetriever(index, search="fast")


def test_unknown_retriever_name(index):
    with pytest.raises(ValueError, match="dense, bm25, hybrid"):
        make_retriever("splade", index)
