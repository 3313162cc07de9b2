"""Scoped retrieval: dense (Chroma through LlamaIndex), BM25 and hybrid, one interface.

The patient scope is a security boundary (docs/design.md §6). Every retriever applies it *inside* the
query - dense search ranks only the scope's stored vectors (exact search) or passes the scope as the
Chroma ``where`` (HNSW, for very large stores), BM25 zeroes other patients with a weight mask before
the top-k is taken - never by filtering a global top-k afterwards, which could both leak and starve
the result. As a second line of defence every result list is checked against the scope and a
violation raises instead of returning.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rag.fusion import RRF_K, Fusion, fusion_for
from rag.language import detect_language

if TYPE_CHECKING:
    from rag.index import ChunkIndex

RETRIEVERS = ("dense", "bm25", "hybrid")


class ScopeViolation(RuntimeError):
    """A retriever returned a chunk outside the requested scope: a bug, never a result."""


@dataclass(frozen=True)
class Scope:
    """Which patients a query may see. ``patients=None`` means all patients (cross-patient mode)."""

    patients: tuple[str, ...] | None = None

    @classmethod
    def all(cls) -> "Scope":
        return cls(None)

    @classmethod
    def patient(cls, patient_id: str) -> "Scope":
        return cls((patient_id,))

    @classmethod
    def of(cls, patient_ids: Sequence[str]) -> "Scope":
        return cls(tuple(dict.fromkeys(patient_ids)))

    @property
    def is_all(self) -> bool:
        return self.patients is None

    def allows(self, patient_id: str) -> bool:
        return self.patients is None or patient_id in self.patients

    def restrict_to(self, allowed: Sequence[str] | None) -> "Scope":
        """Intersect with a user's allowed patients (``None`` = no restriction)."""
        if allowed is None:
            return self
        if self.patients is None:
            return Scope.of(allowed)
        permitted = set(allowed)
        return Scope(tuple(p for p in self.patients if p in permitted))

    def describe(self) -> str:
        if self.patients is None:
            return "all patients"
        if len(self.patients) == 1:
            return f"patient {self.patients[0]}"
        return f"{len(self.patients)} patients"


@dataclass
class Hit:
    chunk_id: str
    doc_id: str
    patient_id: str
    text: str
    start: int
    end: int
    score: float
    rank: int
    retriever: str
    metadata: dict = field(default_factory=dict)

    @property
    def date(self) -> str | None:
        return self.metadata.get("date")

    @property
    def doc_type(self) -> str | None:
        return self.metadata.get("doc_type")

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "retriever": self.retriever,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "patient_id": self.patient_id,
            "date": self.date,
            "doc_type": self.doc_type,
            "section": self.metadata.get("section"),
            "start": self.start,
            "end": self.end,
            "text": self.text,
        }


def _hit_from_meta(chunk_id: str, text: str, meta: dict, score: float, rank: int, retriever: str) -> Hit:
    keep = {k: v for k, v in meta.items() if not k.startswith("_") and k not in {"doc_hash", "n_chunks"}}
    return Hit(
        chunk_id=chunk_id,
        doc_id=meta["doc_id"],
        patient_id=meta["patient_id"],
        text=text,
        start=int(meta["start"]),
        end=int(meta["end"]),
        score=float(score),
        rank=rank,
        retriever=retriever,
        metadata=keep,
    )


def _check_scope(hits: list[Hit], scope: Scope) -> list[Hit]:
    for hit in hits:
        if not scope.allows(hit.patient_id):
            raise ScopeViolation(f"retriever returned chunk {hit.chunk_id} outside {scope.describe()}")
    return hits


class Retriever(Protocol):
    name: str

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]: ...


DENSE_SEARCHES = ("auto", "exact", "store")
EXACT_MAX_CHUNKS = 250_000  # 250k x 384-d float32 is ~380 MB in memory; beyond that the store's HNSW answers


class DenseRetriever:
    """Cosine search over one index's chunks; the scope restricts the candidates before ranking.

    ``exact`` scores every chunk in scope by its true cosine, using the vectors stored in Chroma.
    ``store`` asks Chroma's HNSW with the scope as the query's ``where`` clause. HNSW is approximate,
    and on templated clinical notes (many near-identical vectors) under a patient filter it is poor:
    the RAG suite measured a 65% overlap with the exact top-5 on synthea, with answers that varied
    between processes. ``auto`` (default) is exact up to ``EXACT_MAX_CHUNKS`` chunks and the store's
    HNSW beyond. ``bench/dense_search.py`` on synthea's 3,010 chunks (two runs, machine shared with
    other jobs): exact p50 2.3-17 ms over all patients and 0.9-1.5 ms for one; HNSW 2.6-6.3 ms and
    9.3-16 ms.
    """

    name = "dense"

    def __init__(self, index: "ChunkIndex", search: str = "auto",
                 query_vectors: Mapping[str, Sequence[float]] | None = None) -> None:
        if search not in DENSE_SEARCHES:
            raise ValueError(f"unknown dense search {search!r}; choose one of {', '.join(DENSE_SEARCHES)}")
        self.index = index
        self.search = search
        self.query_vectors = query_vectors or {}  # questions embedded beforehand, in batches (evaluations)
        self.retries = 0  # store answers shorter than the scope allows, asked again
        self.short_returns = 0  # ... and still short: counted, so a report can say so

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        vector = self.query_vectors.get(query)
        if vector is None:
            vector = self.index.embedder.embed_queries([query])[0].tolist()
        return self.retrieve_by_vector(vector, scope, k)

    def retrieve_by_vector(self, vector: Sequence[float], scope: Scope, k: int = 10) -> list[Hit]:
        if scope.patients is not None and not scope.patients:
            return []  # an empty scope sees nothing; it must never widen to everyone
        if self.exact:
            return self._exact(vector, scope, k)
        found = self.index.store_query(vector, scope.patients, k)
        if len(found) < k:
            # Chroma's HNSW answers shorter under a patient filter (measured on synthea, whose templated
            # notes give many identical vectors: 92 of a patient's 96 chunks, ef_search 100): ask once
            # more for more, and count what stays short instead of returning a truncated list silently
            expected = min(k, self.index.count_in_scope(scope.patients))
            if len(found) < expected:
                self.retries += 1
                found = self.index.store_query(vector, scope.patients, 2 * k + 10)[:k]
                if len(found) < expected:
                    self.short_returns += 1
        return _check_scope([_hit_from_meta(cid, text, meta, cos, rank, self.name)
                             for rank, (cid, text, meta, cos) in enumerate(found, start=1)], scope)

    @property
    def exact(self) -> bool:
        return self.search == "exact" or (self.search == "auto" and self.index.count() <= EXACT_MAX_CHUNKS)

    def _exact(self, vector: Sequence[float], scope: Scope, k: int) -> list[Hit]:
        stored = self.index.stored()
        rows = stored.rows(scope.patients)
        if rows.size == 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        query = query / (np.linalg.norm(query) or 1.0)
        sims = stored.matrix[rows] @ query
        order = np.argsort(-sims, kind="stable")[:k]  # ties keep the fixed chunk-id order
        hits = [
            _hit_from_meta(stored.ids[rows[i]], stored.texts[rows[i]], stored.metas[rows[i]], float(sims[i]), rank, self.name)
            for rank, i in enumerate(order.tolist(), start=1)
        ]
        return _check_scope(hits, scope)


class BM25Retriever:
    """Lexical BM25 over the same chunks (the index's ``LexicalIndex``); the scope is a weight mask
    applied before top-k."""

    name = "bm25"

    def __init__(self, index: "ChunkIndex", stopwords: str = "en") -> None:
        self.index = index
        self.stopwords = stopwords

    @property
    def lexical(self):
        return self.index.lexical(self.stopwords)

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        lexical = self.lexical
        if not lexical.ids:
            return []
        mask = lexical.mask(scope.patients)
        candidates = len(lexical.ids) if mask is None else int(mask.sum())
        if candidates == 0:
            return []
        scores = lexical.scores(query, mask)
        if scores is None:
            return []  # no query term occurs anywhere in the corpus
        top = np.argsort(-scores, kind="stable")[: min(k, candidates)]
        hits = []
        for row in top:
            if scores[row] <= 0:
                break  # no query term in the chunk; masked rows are 0 too and never reach here
            hits.append(_hit_from_meta(lexical.ids[row], lexical.texts[row], lexical.metas[row], float(scores[row]),
                                       len(hits) + 1, self.name))
        return _check_scope(hits, scope)


class HybridRetriever:
    """Weighted reciprocal-rank fusion of dense and BM25, each already scoped; the weights depend on
    whether the query crosses patients and, where the fusion has weights per language, on the
    question's language (see :mod:`rag.fusion`)."""

    name = "hybrid"

    def __init__(self, dense: DenseRetriever, bm25: BM25Retriever, candidates: int = 50,
                 fusion: Fusion | None = None) -> None:
        self.dense, self.bm25, self.candidates = dense, bm25, candidates
        self.fusion = fusion or Fusion()

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        n = max(self.candidates, 4 * k)
        language = detect_language(query) if self.fusion.languages else None
        weights = self.fusion.for_scope(scope.is_all, language)
        fused: dict[str, tuple[float, Hit]] = {}
        for weight, hits in ((weights.dense, self.dense.retrieve(query, scope, n)),
                             (weights.bm25, self.bm25.retrieve(query, scope, n))):
            for hit in hits:
                score, first = fused.get(hit.chunk_id, (0.0, hit))
                fused[hit.chunk_id] = (score + weight / (RRF_K + hit.rank), first)
        ranked = sorted(fused.values(), key=lambda x: -x[0])[:k]
        out = []
        for rank, (score, hit) in enumerate(ranked, start=1):
            out.append(Hit(**{**hit.__dict__, "score": score, "rank": rank, "retriever": self.name}))
        return _check_scope(out, scope)


def make_retriever(kind: str, index: "ChunkIndex", *, search: str = "auto",
                   query_vectors: Mapping[str, Sequence[float]] | None = None,
                   fusion: Fusion | None = None) -> Retriever:
    """The one place a retriever is built (app, ``rag.search``, ``eval.ir``, ``eval.ragas_suite``,
    ``eval.answers``): ``kind`` over ``index`` (its embedder, its chunks, its BM25). ``search`` picks
    exact or the store's HNSW for dense search; ``query_vectors`` are questions embedded beforehand;
    ``fusion`` overrides the hybrid weights tuned for the index's embedder (:func:`rag.fusion.fusion_for`)."""
    if kind == "dense":
        return DenseRetriever(index, search, query_vectors)
    if kind == "bm25":
        return BM25Retriever(index)
    if kind == "hybrid":
        return HybridRetriever(DenseRetriever(index, search, query_vectors), BM25Retriever(index),
                               fusion=fusion or fusion_for(index.embedder))
    raise ValueError(f"unknown retriever {kind!r}; choose one of {', '.join(RETRIEVERS)}")
