"""How specific each query is to its relevant documents, measured on the corpus text alone.

Generated clinical questions are often generic ("What is the patient's diagnosis?") while the qrels
name the one note they were written from. In cross-patient scope dozens of notes answer such a
question, so every model scores near zero on it and the set's MAP has a ceiling far below 1 that no
embedder can lift. Splitting MAP by specificity shows where a model gains and how much of a set is
answerable at all. The rule looks only at words, never at a model's ranking, so it cannot favour one.

A query's specificity is the document frequency (share of corpus documents) of its rarest word that
also occurs in one of its relevant documents; stop words do not count. Buckets: ``specific`` (<= 2%
of documents, or a single one), ``partly specific`` (<= 10%), ``unspecific`` (more, or no shared word
at all).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag.beir import BeirSet

BUCKETS = ("specific", "partly specific", "unspecific")
SPECIFIC_MAX_DF = 0.02
PARTLY_MAX_DF = 0.10
RULE = (f"rarest query word found in a relevant document occurs in <= {SPECIFIC_MAX_DF:.0%} of the corpus "
        f"documents (or in 1): specific; <= {PARTLY_MAX_DF:.0%}: partly specific; else (or no shared word): "
        "unspecific (stop words excluded; words are lower-cased letters/digits, 2+ characters)")

_WORD = re.compile(r"[^\W_]{2,}")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS, STOPWORDS_GERMAN

    return frozenset(w.lower() for w in (*STOPWORDS_EN_PLUS, *STOPWORDS_GERMAN))


def _words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _stopwords()}


def bucket_of(rarest_count: int | None, n_docs: int) -> str:
    """A word found in one document only is specific however small the corpus."""
    if rarest_count is None or rarest_count > max(1.0, PARTLY_MAX_DF * n_docs):
        return "unspecific"
    return "specific" if rarest_count <= max(1.0, SPECIFIC_MAX_DF * n_docs) else "partly specific"


def query_specificity(documents: Mapping[str, str], queries: Mapping[str, str],
                      qrels: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """``{query_id: bucket}`` for every query with at least one relevant document in ``documents``."""
    doc_words = {d: _words(t) for d, t in documents.items()}
    df = Counter(w for ws in doc_words.values() for w in ws)
    n_docs = len(doc_words)
    out: dict[str, str] = {}
    for qid, text in queries.items():
        relevant = [d for d in qrels.get(qid, ()) if d in doc_words]
        if not relevant:
            continue
        shared = [w for w in _words(text) if any(w in doc_words[d] for d in relevant)]
        out[qid] = bucket_of(min(df[w] for w in shared) if shared else None, n_docs)
    return out


def mean_by_bucket(values: Mapping[str, float], buckets: Mapping[str, str]) -> dict[str, float | None]:
    """Mean of per-query ``values`` within each bucket (None for an empty bucket)."""
    out: dict[str, float | None] = {}
    for b in BUCKETS:
        vals = [v for q, v in values.items() if buckets.get(q) == b]
        out[b] = sum(vals) / len(vals) if vals else None
    return out


def specificity_report(beir_set: "BeirSet", map_per_query: Mapping[str, Mapping[str, Mapping[str, float]]]
                       ) -> dict[str, Any]:
    """The rule, query counts per bucket and MAP@100 per bucket for ``{scope: {model: {query: AP}}}``."""
    buckets = query_specificity({d.doc_id: d.text for d in beir_set.corpus.documents},
                                {q.query_id: q.text for q in beir_set.queries},
                                {q: [d for d, g in r.items() if g >= 1] for q, r in beir_set.qrels.items()})
    return {
        "rule": RULE,
        "queries": {b: sum(1 for v in buckets.values() if v == b) for b in BUCKETS},
        "map@100": {s: {label: mean_by_bucket(values, buckets) for label, values in by_label.items()}
                    for s, by_label in map_per_query.items()},
    }
