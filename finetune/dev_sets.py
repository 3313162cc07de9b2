"""Dev and guard sets for training: queries, their relevant documents and the passages to rank.

Training chooses its checkpoint and its interpolation weight on these, scored the way ``eval.ir``
scores (MAP@100 over documents, chunks as the index cuts them), so the choice made during training
is the one the evaluation would make.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from finetune.pairs import chunk_corpus
from rag.config import Settings
from rag.embedders import get_embedder
from rag.index import index_chunking
from rag.metrics import average_precision

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Dev evaluation


def _relevant(beir: Any) -> dict[str, set[str]]:
    """Relevant documents (grade >= 1) per query of a BEIR-like set."""
    return {q: {d for d, g in r.items() if g >= 1} for q, r in beir.qrels.items()}


@dataclass
class DevSet:
    """Queries, a corpus and relevance for the training-time evaluation (ids -> texts)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    name: str = "dev"

    @classmethod
    def from_beir(cls, beir: Any, name: str = "dev") -> "DevSet":
        rel = _relevant(beir)
        return cls({q.query_id: q.text for q in beir.queries if rel.get(q.query_id)},
                   {d.doc_id: d.text for d in beir.corpus.documents}, rel, name)

    def limited(self, n: int | None, seed: int = 0) -> "DevSet":
        if n is None or n >= len(self.queries):
            return self
        ids = sorted(self.queries)
        random.Random(seed).shuffle(ids)
        keep = set(ids[:n])
        return DevSet({q: t for q, t in self.queries.items() if q in keep}, self.corpus,
                      {q: r for q, r in self.relevant.items() if q in keep}, self.name)


@dataclass
class ChunkedSet:
    """A retrieval set scored the way ``eval.ir`` scores it: chunks embedded at the base's inference
    length, each document ranked by its best chunk, MAP@100 over documents, in the cross-patient
    scope and, where the set has real patients, the patient scope too. The interpolation choice
    scores the dev questions and the general-retrieval guards with it.

    Why not the trainer's dev evaluator: it embeds whole documents cut at the training length, a
    proxy that once rated a model +29% on synthea while the chunk-level evaluation measured -13%,
    and whose definition changes with the training length. Why the patient scope: a weight that
    kept synthea's cross-patient MAP lost 5.9% inside patients' records.
    """

    name: str
    queries: dict[str, str]
    passages: list[tuple[str, str]]  # (doc_id, chunk text), documents' chunks in order
    relevant: dict[str, set[str]]
    # patient scope: each query's patient and each document's; empty when the set has no patients
    query_patient: dict[str, str] = field(default_factory=dict)
    doc_patient: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_beir(cls, beir: Any, chunks: dict[str, list[Any]], name: str,
                  query_ids: Collection[str] | None = None) -> "ChunkedSet":
        """``chunks``: doc_id -> its chunks, as the index would cut them (``rag.index.index_chunking``);
        ``query_ids``: only these queries (all when None)."""
        rel = _relevant(beir)
        queries = {q.query_id: q.text for q in beir.queries
                   if rel.get(q.query_id) and (query_ids is None or q.query_id in query_ids)}
        native = beir.corpus.patient_structure == "native"  # one patient per document: no patient scope
        query_patient = {q.query_id: q.patient_id for q in beir.queries
                         if native and q.query_id in queries and q.patient_id is not None}
        doc_patient = {d.doc_id: d.patient_id for d in beir.corpus.documents} if query_patient else {}
        return cls(name, queries,
                   [(c.doc_id, c.text) for d in beir.corpus.documents for c in chunks.get(d.doc_id, [])], rel,
                   query_patient, doc_patient)

    @classmethod
    def like_index(cls, beir: Any, base: str, settings: Settings, name: str,
                   query_ids: Collection[str] | None = None) -> "ChunkedSet":
        """``beir`` cut into chunks as the index of embedder ``base`` would cut it."""

        emb = get_embedder(base, settings)
        return cls.from_beir(beir, chunk_corpus(beir.corpus, emb.token_offsets, index_chunking(emb, settings)),
                             name, query_ids)

    def scores(self, model: "SentenceTransformer", query_prefix: str, passage_prefix: str,
               max_seq_length: int) -> dict[str, float]:
        """MAP@100 as ``{name: cross}`` plus ``{name:patient: patient scope}`` where there are patients."""
        import numpy as np

        qids = list(self.queries)
        kept, model.max_seq_length = model.max_seq_length, max_seq_length
        try:
            q = model.encode([query_prefix + self.queries[i] for i in qids], normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
            p = model.encode([passage_prefix + t for _, t in self.passages], normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
        finally:
            model.max_seq_length = kept
        owners = [d for d, _ in self.passages]
        docs = list(dict.fromkeys(owners))
        col = {d: j for j, d in enumerate(docs)}
        best = np.full((len(qids), len(docs)), -np.inf, dtype=np.float32)
        sims = q @ p.T
        for j, d in enumerate(owners):
            np.maximum(best[:, col[d]], sims[:, j], out=best[:, col[d]])

        def mean_ap(scores: "np.ndarray", ids: list[str]) -> float:
            aps = []
            for row, qid in zip(scores, ids):
                order = [j for j in np.argsort(-row)[:100] if np.isfinite(row[j])]
                aps.append(average_precision([docs[j] for j in order], self.relevant[qid]))
            return round(float(np.mean(aps)), 5) if aps else 0.0

        out = {self.name: mean_ap(best, qids)}
        scoped = [i for i, qid in enumerate(qids) if qid in self.query_patient]
        if scoped:
            owner = np.array([self.doc_patient.get(d) for d in docs], dtype=object)
            inside = np.stack([owner == self.query_patient[qids[i]] for i in scoped])
            out[f"{self.name}:patient"] = mean_ap(np.where(inside, best[scoped], -np.inf), [qids[i] for i in scoped])
        return out


def make_evaluator(dev: DevSet, query_prefix: str, passage_prefix: str, batch_size: int = 32):
    """sentence-transformers' InformationRetrievalEvaluator (MAP@100, nDCG@10, ...) on documents.

    Documents are embedded whole up to the training length: a cheap proxy for the chunk-level
    index that ``eval.ir`` measures, good enough to choose a checkpoint.
    """
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )

    return InformationRetrievalEvaluator(
        queries=dev.queries, corpus=dev.corpus, relevant_docs=dev.relevant, name=dev.name,
        map_at_k=[100], ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100],
        query_prompt=query_prefix or None, corpus_prompt=passage_prefix or None, batch_size=batch_size,
        write_csv=False, score_functions=None, main_score_function="cosine",
    )
