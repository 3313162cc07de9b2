"""The RAG evaluation loop: which retrievers, scoped retrieval per question, answers from the app's pipeline.

Retrieval runs through the same code as the chat app: ``rag.index`` builds (or reuses) one persistent
Chroma index per (corpus, embedder) under ``settings.home``, so a rerun embeds nothing;
``rag.retrieve`` applies the patient scope inside the store query; ``rag.answer.AnswerPipeline``
generates the answer. The two modes differ only in the scope handed to the retriever:

* ``patient``: ``Scope.patient(query.patient_id)`` - the patient-constrained setting of the study;
* ``cross``: ``Scope.all()`` - the same question searched across every patient.

Answers are cached (:mod:`eval.rag_cache`) under a key of the question and the exact passages, the
generator, prompt version and decoding limits.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eval.rag_cache import JsonlCache, cache_key, text_hash
from rag.answer import AnswerPipeline
from rag.embedders import trained_embedders
from rag.index import build_index
from rag.language import detect_language
from rag.prompts import load_prompt
from rag.retrieve import DenseRetriever, Hit, Scope, ScopeViolation, make_retriever

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.corpus import Corpus
    from rag.index import ChunkIndex
    from rag.llm import LLMClient
    from rag.retrieve import Retriever

MODES: tuple[str, ...] = ("patient", "cross")
MODE_TITLES = {"patient": "patient-constrained", "cross": "cross-patient"}
DOMAIN_MODELS = ("domain", "domain-me5-small")  # names finetune.train gives the fine-tuned embedder
BM25 = "bm25"
HYBRID = "hybrid"
BM25_CHUNKS_FROM = "me5-small"  # BM25 indexes the chunks of this embedder's index (same corpus, same cuts)

#: Report names of the CPU stand-ins: never the GPU model's name (docs/design.md §4).
STANDIN_LABELS = {
    "me5-small": "multilingual-e5-small (CPU stand-in for multilingual-e5-large)",
    "minilm": "all-MiniLM-L6-v2 (CPU stand-in for bge-m3)",
}


@dataclass(frozen=True)
class RetrieverChoice:
    """One row of the results table: a dense embedder (registry name or folder), BM25, or the
    app's hybrid (BM25 + an embedder, reciprocal-rank fusion): ``hybrid`` over the e5 base,
    ``hybrid:<embedder>`` over another."""

    key: str
    kind: str  # "dense" | "bm25" | "hybrid"
    embedder: str  # dense and hybrid: the embedder; bm25: whose index's chunks BM25 scores

    @classmethod
    def parse(cls, name: str, bm25_chunks: str = BM25_CHUNKS_FROM) -> "RetrieverChoice":
        name = name.strip()
        if not name:
            raise ValueError("empty retriever name in --models")
        if name == BM25:
            return cls(BM25, "bm25", bm25_chunks)
        if name == HYBRID:
            return cls(HYBRID, "hybrid", BM25_CHUNKS_FROM)
        if name.startswith(HYBRID + ":"):
            return cls(name, "hybrid", name.split(":", 1)[1])
        return cls(name, "dense", name)


def find_domain_model(settings: "Settings") -> str | None:
    """The fine-tuned embedder's name if one is trained here (``finetune.train`` saves it under
    ``<home>/models/<name>``; the registry resolves it by name), without loading its weights.
    ``domain`` wins, then the trainer's default ``domain-me5-small``, then any ``domain*`` model."""

    trained = trained_embedders(settings)
    for name in DOMAIN_MODELS:
        if name in trained:
            return name
    return next((name for name in sorted(trained) if name.startswith("domain")), None)


def default_models(settings: "Settings") -> list[str]:
    """The domain model where one is trained, the e5 base, the second baseline, BM25, and the app's
    hybrid over the base and over the domain model."""
    domain = find_domain_model(settings)
    return ([domain] if domain else []) + ["me5-small", "minilm", BM25, HYBRID] + (
        [f"{HYBRID}:{domain}"] if domain else [])


def parse_models(text: str | None, settings: "Settings") -> list[RetrieverChoice]:
    """Retriever choices from ``--models`` (comma list) or the defaults.

    BM25 scores the chunks of an index that is built anyway: the e5 base's where it is in the list,
    else the first dense model's (one chunking fewer to build), else me5-small's.
    """
    names = [n.strip() for n in (text.split(",") if text else default_models(settings)) if n.strip()]
    dense = [n for n in names if n != BM25 and not n.startswith(HYBRID)]
    chunks = BM25_CHUNKS_FROM if BM25_CHUNKS_FROM in dense or not dense else dense[0]
    choices = [RetrieverChoice.parse(n, bm25_chunks=chunks) for n in names]
    keys = [c.key for c in choices]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--models names a retriever twice: {keys}")
    return choices


@dataclass
class RetrieverSet:
    """Built retrievers of one corpus: ``retrievers[key]``, report ``labels[key]``, index facts."""

    retrievers: dict[str, "Retriever"] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    indexes: dict[str, "ChunkIndex"] = field(default_factory=dict)
    index_reports: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_retrievers(corpus: "Corpus", choices: Sequence[RetrieverChoice], settings: "Settings",
                     progress: bool = True) -> RetrieverSet:
    """Bring every needed index up to date (embeds only what is missing) and make the retrievers."""

    out = RetrieverSet()
    for embedder in dict.fromkeys(c.embedder for c in choices):
        t0 = time.perf_counter()
        index, report = build_index(corpus, embedder, settings, progress=progress)
        out.indexes[embedder] = index
        out.index_reports[embedder] = {
            "collection": index.name, "embedder_label": index.embedder.label, "chunks": report.chunks_total,
            "chunks_embedded_now": report.chunks_embedded, "documents": report.documents,
            "seconds": round(time.perf_counter() - t0, 2),
        }
    for choice in choices:
        index = out.indexes[choice.embedder]
        out.retrievers[choice.key] = make_retriever(choice.kind, index)
        if choice.kind == BM25:
            out.labels[choice.key] = f"BM25 (bm25s, over the {choice.embedder} chunks)"
        elif choice.kind == HYBRID:
            out.labels[choice.key] = f"hybrid (BM25 + {STANDIN_LABELS.get(choice.embedder, index.embedder.label)}, RRF)"
        else:
            out.labels[choice.key] = STANDIN_LABELS.get(choice.key, index.embedder.label)
    return out


def scope_for(mode: str, patient_id: str | None) -> Scope | None:
    """The retrieval scope of a mode; None where the mode does not apply (no patient)."""
    if mode == "cross":
        return Scope.all()
    if mode == "patient":
        return Scope.patient(patient_id) if patient_id else None
    raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


def hit_record(hit: Hit) -> dict[str, Any]:
    """What the per-question results keep of a hit (ids and scores; the text stays in the store)."""
    return {"rank": hit.rank, "chunk_id": hit.chunk_id, "doc_id": hit.doc_id, "patient_id": hit.patient_id,
            "score": round(hit.score, 6)}


def retrieve_many(retriever: "Retriever", requests: Sequence[tuple[str, Scope]], k: int,
                  ) -> list[tuple[list[Hit], float, str | None]]:
    """``(hits, seconds, violation)`` for each ``(question, scope)``, through the retriever's own scoped search.

    A dense or hybrid retriever gets all distinct questions embedded in one batch first (a busy
    2-core machine spends most of a single-question call on model overhead) and then runs the app's
    own scoped search per request; its seconds are the question's share of the batch encoding plus
    its own search. BM25 is timed call by call. A ``ScopeViolation`` (the retriever's own check found another
    patient's chunk) is returned as the third element with no hits, so the suite can fail loudly
    after reporting every case, not just the first.
    """

    out: list[tuple[list[Hit], float, str | None]] = []
    dense = retriever if isinstance(retriever, DenseRetriever) else getattr(retriever, "dense", None)
    per_query = 0.0
    if isinstance(dense, DenseRetriever):  # dense or hybrid: the questions are embedded in one batch
        texts = list(dict.fromkeys(q for q, _ in requests))
        t0 = time.perf_counter()
        vectors = dense.index.embedder.embed_queries(texts) if texts else []
        per_query = (time.perf_counter() - t0) / max(1, len(texts))
        dense.query_vectors = {**dense.query_vectors, **{t: v.tolist() for t, v in zip(texts, vectors)}}
    for question, scope in requests:
        t1 = time.perf_counter()
        try:
            hits = retriever.retrieve(question, scope, k)
        except ScopeViolation as exc:
            out.append(([], 0.0, str(exc)))
            continue
        out.append((hits, per_query + time.perf_counter() - t1, None))
    return out


class _Replay:
    """Hands the pipeline the hits the evaluation already retrieved (and timed), under the real
    retriever's name, so generation sees exactly the passages that were scored."""

    def __init__(self, inner: "Retriever", hits: list[Hit]) -> None:
        self.name = inner.name
        self.index = getattr(inner, "index", None)
        self._hits = hits

    def retrieve(self, query: str, scope: Scope, k: int = 10) -> list[Hit]:
        return list(self._hits[:k])


class AnswerRunner:
    """Generates (or recalls from the cache) the app pipeline's answer for given passages."""

    def __init__(self, llm: "LLMClient", cache: JsonlCache, *, k: int, max_tokens: int | None) -> None:
        self.llm = llm
        self.cache = cache
        self.k = k
        self.max_tokens = max_tokens
        self.generated = 0
        self.reused = 0

    def key(self, question: str, hits: Sequence[Hit]) -> str:
        version = load_prompt("answer", detect_language(question)).version
        passages = [(h.chunk_id, text_hash(h.text)) for h in hits]
        return cache_key("answer", question, passages, self.llm.describe(), self.llm.model, version,
                         self.max_tokens, "temperature=0")

    def is_cached(self, question: str, hits: Sequence[Hit]) -> bool:
        return self.key(question, hits) in self.cache

    def answer(self, retriever: "Retriever", embedder_label: str, question: str, scope: Scope,
               hits: list[Hit]) -> dict[str, Any]:
        """The answer record: text, citations, prompt version, generator, timings, cached flag."""

        key = self.key(question, hits)
        cached = self.cache.get(key)
        if cached is not None:
            self.reused += 1
            return {**cached, "cached": True}
        pipeline = AnswerPipeline(_Replay(retriever, hits), self.llm, k=self.k, embedder=embedder_label,
                                  max_tokens=self.max_tokens)
        ans = pipeline.answer(question, scope)
        record = {
            "text": ans.text,
            "language": ans.language,
            "generator": ans.generator,
            "prompt_version": ans.prompt_version,
            "citations": [{"n": c.n, "source": c.source, "chunk_id": c.hit.chunk_id, "doc_id": c.hit.doc_id}
                          for c in ans.citations],
            "invalid_citations": ans.invalid_citations,
            "passages": [h.chunk_id for h in ans.passages],
            "timings": {k: round(v, 4) for k, v in ans.timings.items() if k != "retrieval_s"},
        }
        self.cache.put(key, record)
        self.generated += 1
        return {**record, "cached": False}
