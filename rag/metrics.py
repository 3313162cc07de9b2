"""Ranking metrics on document ids (docs/design.md §7): pure functions, no model imports.

Every harness (``eval.ir``, ``eval.ragas_suite``, the training-time dev evaluation) scores through
these functions, so a number called "MAP@100" means the same thing everywhere. Conventions:

- ``relevant`` is either a set of ids (all grade 1) or a mapping ``id -> grade``; only grades >= 1
  count as relevant (a grade 0 row in a qrels file is an explicit "not relevant").
- A ranked list is de-duplicated before scoring (first occurrence kept): a document retrieved
  twice through two of its chunks is one retrieved document, not two.
- Queries without any relevant document have no defined AP/recall; :func:`score_run` leaves them
  out and the single-query functions return 0.0 for them.

Formulas (R = number of relevant documents of the query, rel(i) = 1 if the item at rank i is
relevant, P@i = precision at rank i):

- AP@k      = (1 / min(R, k)) * sum_{i<=k} P@i * rel(i);  MAP@k = mean over queries
- nDCG@k    = DCG@k / IDCG@k, DCG@k = sum_{i<=k} grade(i) / log2(i + 1) (linear gain, as trec_eval
              and BEIR), IDCG@k = DCG of the grades sorted best first
- Recall@k  = |relevant in top k| / R
- MRR@k     = 1 / rank of the first relevant item within the top k (0 if none)
- context precision (RAGAS) = sum_{i<=K} P@i * rel(i) / (number of relevant items in the top K)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Relevant = Mapping[str, int] | set[str] | frozenset[str]

#: The metrics :func:`score_run` reports, in table order; names are stable keys of JSON results.
IR_METRICS: tuple[str, ...] = ("map@100", "ndcg@10", "recall@10", "recall@100", "mrr@10")

#: One line per metric, for the markdown output next to the numbers.
METRIC_FORMULAS: dict[str, str] = {
    "map@100": "MAP@100 = mean_q AP@100; AP@100 = (1/min(R,100)) * sum_{i<=100} P@i * rel(i)",
    "ndcg@10": "nDCG@10 = DCG@10 / IDCG@10; DCG@10 = sum_{i<=10} grade(i) / log2(i+1) (linear gain)",
    "recall@10": "Recall@10 = |relevant in top 10| / R",
    "recall@100": "Recall@100 = |relevant in top 100| / R",
    "mrr@10": "MRR@10 = mean_q 1/rank of the first relevant document in the top 10 (0 if none)",
}


def _grades(relevant: Relevant) -> dict[str, int]:
    """Relevant ids with their grade (>= 1 only); a set means grade 1 for each."""
    if isinstance(relevant, Mapping):
        return {str(k): int(v) for k, v in relevant.items() if int(v) >= 1}
    return {str(k): 1 for k in relevant}


def _dedup(ranked: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(r) for r in ranked))


def _check_k(k: int | None) -> None:
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def average_precision(ranked: Sequence[str], relevant: Relevant, k: int = 100) -> float:
    """AP@k with the study's normaliser min(R, k): a perfect top-k scores 1 even when R > k."""
    _check_k(k)
    grades = _grades(relevant)
    if not grades:
        return 0.0
    hits, total = 0, 0.0
    for i, doc in enumerate(_dedup(ranked)[:k], start=1):
        if doc in grades:
            hits += 1
            total += hits / i
    return total / min(len(grades), k)


def ndcg_at_k(ranked: Sequence[str], relevant_graded: Relevant, k: int = 10) -> float:
    """nDCG@k with linear gain (grade / log2(rank + 1)); 0 when the query has no relevant item."""
    _check_k(k)
    grades = _grades(relevant_graded)
    if not grades:
        return 0.0
    dcg = sum(grades.get(doc, 0) / math.log2(i + 1) for i, doc in enumerate(_dedup(ranked)[:k], start=1))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 1) for i, g in enumerate(ideal, start=1))
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], relevant: Relevant, k: int) -> float:
    """Share of the R relevant items found in the top k (BEIR's definition: divided by R, not min(R, k))."""
    _check_k(k)
    grades = _grades(relevant)
    if not grades:
        return 0.0
    return sum(1 for doc in _dedup(ranked)[:k] if doc in grades) / len(grades)


def mrr_at_k(ranked: Sequence[str], relevant: Relevant, k: int = 10) -> float:
    """Reciprocal rank of the first relevant item within the top k; 0 when none is there."""
    _check_k(k)
    grades = _grades(relevant)
    for i, doc in enumerate(_dedup(ranked)[:k], start=1):
        if doc in grades:
            return 1.0 / i
    return 0.0


def context_precision(ranked: Sequence[str], relevant: Relevant, k: int | None = None) -> float:
    """RAGAS context precision with gold ids: rank-aware precision over the top K (all when ``k`` is None).

    Unlike AP it divides by the relevant items *retrieved*, not by R: it asks whether the relevant
    contexts are ranked first, not whether all of them were found. 0 when none is in the top K.
    Items are not de-duplicated here: RAGAS scores the contexts as handed to the generator.
    """
    _check_k(k)
    grades = _grades(relevant)
    top = [str(r) for r in ranked]
    if k is not None:
        top = top[:k]
    hits, total = 0, 0.0
    for i, item in enumerate(top, start=1):
        if item in grades:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def leakage_rate(hit_patient_ids: Sequence[str], patient_id: str) -> float:
    """Share of retrieved chunks that belong to another patient (docs/design.md §6; must be 0). 0 for no hits."""
    if not hit_patient_ids:
        return 0.0
    return sum(1 for p in hit_patient_ids if p != patient_id) / len(hit_patient_ids)


def _hit_fields(hit: Any) -> tuple[str, float]:
    if isinstance(hit, Mapping):
        return str(hit["doc_id"]), float(hit["score"])
    if isinstance(hit, (tuple, list)):
        return str(hit[0]), float(hit[1])
    return str(hit.doc_id), float(hit.score)


def chunks_to_documents(hits: Iterable[Any]) -> list[tuple[str, float]]:
    """Map ranked chunk hits to ranked documents: one entry per document, its best (max) chunk score.

    ``hits`` are ``rag.retrieve.Hit`` objects, ``{"doc_id", "score"}`` mappings or ``(doc_id, score)``
    pairs, best first. Documents keep the order of their first (best-ranked) chunk, so the result
    is consistent with the retriever's ranking even where scores are not comparable (RRF).
    """
    best: dict[str, float] = {}
    for hit in hits:
        doc_id, score = _hit_fields(hit)
        if doc_id not in best or score > best[doc_id]:
            best[doc_id] = score
    return list(best.items())


def score_query(ranked: Sequence[str], relevant: Relevant) -> dict[str, float]:
    """All of :data:`IR_METRICS` for one query."""
    return {
        "map@100": average_precision(ranked, relevant, 100),
        "ndcg@10": ndcg_at_k(ranked, relevant, 10),
        "recall@10": recall_at_k(ranked, relevant, 10),
        "recall@100": recall_at_k(ranked, relevant, 100),
        "mrr@10": mrr_at_k(ranked, relevant, 10),
    }


def score_run(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, float]]:
    """Per-query scores of a run: ``{metric: {query_id: value}}`` for every metric in :data:`IR_METRICS`.

    The queries scored are those of ``qrels`` with at least one relevant document (R = 0 has no
    defined AP); a query missing from ``run`` retrieved nothing and scores 0. Run entries without
    qrels are ignored.
    """
    out: dict[str, dict[str, float]] = {m: {} for m in IR_METRICS}
    for qid, rel in qrels.items():
        if not _grades(rel):
            continue
        for metric, value in score_query(run.get(qid, ()), rel).items():
            out[metric][qid] = value
    return out


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; NaN for no values (a metric over zero queries is undefined, not 0)."""
    vals = list(values)
    return sum(vals) / len(vals) if vals else float("nan")
