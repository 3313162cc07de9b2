"""Scoped retrieval: dense (Chroma through LlamaIndex), BM25 and hybrid, one interface.

The patient scope is a security boundary (DESIGN.md 6). Every retriever applies it *inside* the
query - a Chroma ``where`` for dense search, a BM25 weight mask that zeroes other patients before
the top-k is taken - never by filtering a global top-k afterwards, which could both leak and starve
the result. As a second line of defence every result list is checked against the scope and a
violation raises instead of returning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    from rag.index import ChunkIndex

RETRIEVERS = ("dense", "bm25", "hybrid")
RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al. 2009)


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


class DenseRetriever:
    """Cosine search in the Chroma collection; the scope becomes the query's ``where`` clause."""

    name = "dense"

    def __init__(self, index: "ChunkIndex") -> None:
        self.index = index

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        vector = self.index.embedder.embed_queries([query])[0]
        return self.retrieve_by_vector(vector.tolist(), scope, k)

    def retrieve_by_vector(self, vector: list[float], scope: Scope, k: int = 10) -> list[Hit]:
        from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters
        from llama_index.core.vector_stores.types import VectorStoreQuery

        if scope.patients is not None and not scope.patients:
            return []  # an empty scope sees nothing; it must never widen to everyone
        filters = None
        if scope.patients is not None:
            if len(scope.patients) == 1:
                flt = MetadataFilter(key="patient_id", value=scope.patients[0], operator=FilterOperator.EQ)
            else:
                flt = MetadataFilter(key="patient_id", value=list(scope.patients), operator=FilterOperator.IN)
            filters = MetadataFilters(filters=[flt])
        result = self.index.vector_store.query(
            VectorStoreQuery(query_embedding=vector, similarity_top_k=k, filters=filters)
        )
        hits = []
        for rank, (node, sim) in enumerate(zip(result.nodes, result.similarities), start=1):
            cosine = 1.0 + math.log(sim) if sim > 0 else -1.0  # the store reports exp(-cosine distance)
            hits.append(_hit_from_meta(node.node_id, node.get_content(), node.metadata, cosine, rank, self.name))
        return _check_scope(hits, scope)


class BM25Retriever:
    """Lexical BM25 (``bm25s``) over the same chunks; the scope is a weight mask applied before top-k."""

    name = "bm25"

    def __init__(self, index: "ChunkIndex", stopwords: str = "en") -> None:
        import bm25s
        import Stemmer

        self.index = index
        self.stopwords = stopwords
        self.stemmer = Stemmer.Stemmer("english")
        self.ids, self.texts, self.metas = index.all_chunks()
        self.patient_of = [m["patient_id"] for m in self.metas]
        self._rows_by_patient: dict[str, list[int]] = {}
        for row, pid in enumerate(self.patient_of):
            self._rows_by_patient.setdefault(pid, []).append(row)
        self.model = bm25s.BM25()
        if self.texts:
            tokens = bm25s.tokenize(self.texts, stopwords=stopwords, stemmer=self.stemmer, show_progress=False)
            self.model.index(tokens, show_progress=False)

    def _mask(self, scope: Scope) -> Any:
        import numpy as np

        if scope.patients is None:
            return None
        mask = np.zeros(len(self.ids), dtype=np.float32)
        for pid in scope.patients:
            mask[self._rows_by_patient.get(pid, [])] = 1.0
        return mask

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        import bm25s
        import numpy as np

        if not self.ids:
            return []
        mask = self._mask(scope)
        candidates = len(self.ids) if mask is None else int(mask.sum())
        if candidates == 0:
            return []
        tokens = bm25s.tokenize([query], stopwords=self.stopwords, stemmer=self.stemmer, return_ids=False, show_progress=False)[0]
        token_ids = self.model.get_tokens_ids(list(tokens))
        if not token_ids:
            return []  # no query term occurs anywhere in the corpus
        scores = self.model.get_scores_from_ids(token_ids, weight_mask=mask)
        top = np.argsort(-scores, kind="stable")[: min(k, candidates)]
        hits = []
        for row in top:
            if scores[row] <= 0:
                break  # no query term in the chunk; masked rows are 0 too and never reach here
            hits.append(
                _hit_from_meta(self.ids[row], self.texts[row], self.metas[row], float(scores[row]), len(hits) + 1, self.name)
            )
        return _check_scope(hits, scope)


class HybridRetriever:
    """Reciprocal-rank fusion of dense and BM25, each already scoped."""

    name = "hybrid"

    def __init__(self, dense: DenseRetriever, bm25: BM25Retriever, candidates: int = 50) -> None:
        self.dense, self.bm25, self.candidates = dense, bm25, candidates

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        n = max(self.candidates, 4 * k)
        fused: dict[str, tuple[float, Hit]] = {}
        for hits in (self.dense.retrieve(query, scope, n), self.bm25.retrieve(query, scope, n)):
            for hit in hits:
                score, first = fused.get(hit.chunk_id, (0.0, hit))
                fused[hit.chunk_id] = (score + 1.0 / (RRF_K + hit.rank), first)
        ranked = sorted(fused.values(), key=lambda x: -x[0])[:k]
        out = []
        for rank, (score, hit) in enumerate(ranked, start=1):
            out.append(Hit(**{**hit.__dict__, "score": score, "rank": rank, "retriever": self.name}))
        return _check_scope(out, scope)


def make_retriever(kind: str, index: "ChunkIndex") -> Retriever:
    if kind == "dense":
        return DenseRetriever(index)
    if kind == "bm25":
        return BM25Retriever(index)
    if kind == "hybrid":
        return HybridRetriever(DenseRetriever(index), BM25Retriever(index))
    raise ValueError(f"unknown retriever {kind!r}; choose one of {', '.join(RETRIEVERS)}")

