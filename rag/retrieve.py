"""Scoped retrieval: dense (Chroma through LlamaIndex), BM25 and hybrid, one interface.

The patient scope is a security boundary (DESIGN.md 6). Every retriever applies it *inside* the
query - dense search ranks only the scope's stored vectors (exact search) or passes the scope as the
Chroma ``where`` (HNSW, for very large stores), BM25 zeroes other patients with a weight mask before
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


DENSE_SEARCHES = ("auto", "exact", "store")
EXACT_MAX_CHUNKS = 250_000  # 250k x 384-d float32 is ~380 MB in memory; beyond that the store's HNSW answers


class _StoredVectors:
    """Every chunk vector of one index, normalised, in a fixed order, with rows per patient.

    Loaded from the Chroma collection itself (the very vectors the store holds) and reloaded when the
    collection changes (chunk count or index manifest written by another sync).
    """

    def __init__(self, index: "ChunkIndex") -> None:
        import numpy as np

        self.stamp = _index_stamp(index)
        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict] = []
        blocks: list[Any] = []
        total, page = index.collection.count(), 5000
        for offset in range(0, total, page):
            got = index.collection.get(include=["documents", "metadatas", "embeddings"], limit=page, offset=offset)
            ids += got["ids"]
            texts += got["documents"]
            metas += got["metadatas"]
            blocks.append(np.asarray(got["embeddings"], dtype=np.float32))
        order = sorted(range(len(ids)), key=ids.__getitem__)  # deterministic whatever the store's paging
        self.ids = [ids[i] for i in order]
        self.texts = [texts[i] for i in order]
        self.metas = [metas[i] for i in order]
        matrix = np.concatenate(blocks)[order] if blocks else np.zeros((0, index.embedder.dim), dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.matrix = matrix / np.where(norms == 0, 1, norms)
        self.rows_by_patient: dict[str, list[int]] = {}
        for row, meta in enumerate(self.metas):
            self.rows_by_patient.setdefault(meta["patient_id"], []).append(row)

    def rows(self, scope: Scope) -> Any:
        import numpy as np

        if scope.patients is None:
            return np.arange(len(self.ids))
        return np.array(sorted(r for p in scope.patients for r in self.rows_by_patient.get(p, [])), dtype=int)


def _index_stamp(index: "ChunkIndex") -> tuple[int, int]:
    path = index.manifest_path
    return index.collection.count(), (path.stat().st_mtime_ns if path.is_file() else 0)


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

    def __init__(self, index: "ChunkIndex", search: str = "auto") -> None:
        if search not in DENSE_SEARCHES:
            raise ValueError(f"unknown dense search {search!r}; choose one of {', '.join(DENSE_SEARCHES)}")
        self.index = index
        self.search = search
        self._vectors: _StoredVectors | None = None

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        vector = self.index.embedder.embed_queries([query])[0]
        return self.retrieve_by_vector(vector.tolist(), scope, k)

    def retrieve_by_vector(self, vector: Sequence[float], scope: Scope, k: int = 10) -> list[Hit]:
        if scope.patients is not None and not scope.patients:
            return []  # an empty scope sees nothing; it must never widen to everyone
        if self.exact:
            return self._exact(vector, scope, k)
        return self._store(vector, scope, k)

    @property
    def exact(self) -> bool:
        return self.search == "exact" or (self.search == "auto" and self.index.count() <= EXACT_MAX_CHUNKS)

    def _stored_vectors(self) -> _StoredVectors:
        if self._vectors is None or self._vectors.stamp != _index_stamp(self.index):
            self._vectors = _StoredVectors(self.index)
        return self._vectors

    def _exact(self, vector: Sequence[float], scope: Scope, k: int) -> list[Hit]:
        import numpy as np

        stored = self._stored_vectors()
        rows = stored.rows(scope)
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

    def _store(self, vector: Sequence[float], scope: Scope, k: int) -> list[Hit]:
        from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters
        from llama_index.core.vector_stores.types import VectorStoreQuery

        filters = None
        if scope.patients is not None:
            if len(scope.patients) == 1:
                flt = MetadataFilter(key="patient_id", value=scope.patients[0], operator=FilterOperator.EQ)
            else:
                flt = MetadataFilter(key="patient_id", value=list(scope.patients), operator=FilterOperator.IN)
            filters = MetadataFilters(filters=[flt])
        result = self.index.vector_store.query(
            VectorStoreQuery(query_embedding=list(vector), similarity_top_k=k, filters=filters)
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

