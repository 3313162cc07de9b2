"""Test doubles and small builders shared by several test modules (one definition each).

Plain helpers, imported as ``from tests.doubles import ...``; tests/conftest.py wraps the ones that
read better as fixtures (``double``: the loopback OpenAI-compatible server of tests/openai_double.py).

* :func:`free_port` - a loopback port nothing listens on (bound, then released).
* :data:`FAST_ROUNDS` - bcrypt cost for tests that do not test the cost itself.
* :func:`make_hit` - a retrieval :class:`rag.retrieve.Hit` over ``text`` (end and score derived).
* :class:`ScriptedLLM` - a generator stand-in that streams fixed text and counts calls.
* :class:`ListRetriever` - a retriever over a fixed list of hits that honours (and records) the scope.
* :func:`write_rows` / :func:`read_rows` - JSONL files of rows (dicts, or raw lines for bad input).
* :func:`synced_index` - a :class:`rag.index.ChunkIndex` with ``documents`` embedded.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.openai_double import closed_port

FAST_ROUNDS = 4  # bcrypt rounds for tests that do not test the cost itself


def free_port() -> int:
    """A loopback port that is free right now (bound, then released): nothing listens on it."""
    return closed_port()


def make_hit(doc_id: str, patient_id: str, text: str, *, rank: int = 1, start: int = 0, chunk_id: str | None = None,
             retriever: str = "test", metadata: dict[str, Any] | None = None):
    """A Hit for ``text`` at ``start`` in its document: ``end = start + len(text)``, ``score = 1 / rank``."""
    from rag.retrieve import Hit

    return Hit(chunk_id=chunk_id or f"{doc_id}#{rank}", doc_id=doc_id, patient_id=patient_id, text=text, start=start,
               end=start + len(text), score=1.0 / rank, rank=rank, retriever=retriever,
               metadata={} if metadata is None else metadata)


class ScriptedLLM:
    """Stands in for the generator where a test is about our own handling, not the model.

    ``stream`` yields ``deltas`` (default: each word of ``text`` plus a space, so the text arrives in
    pieces like a real stream) and counts ``calls``; with ``fail`` it raises that instead.
    """

    def __init__(self, text: str = "", *, deltas: Sequence[str] | None = None, fail: Exception | None = None,
                 label: str = "scripted") -> None:
        self.text = text
        self.deltas = deltas
        self.fail = fail
        self.label = label
        self.calls = 0

    def describe(self) -> str:
        return self.label

    def stream(self, messages, **kw):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.deltas is not None:
            yield from self.deltas
            return
        for word in self.text.split(" "):
            yield word + " "


class ListRetriever:
    """A retriever over fixed hits: those the scope allows, in order, at most ``k``.

    Every scope asked for is kept in ``scopes``; with ``rerank`` the returned hits are numbered 1..n
    again after the scope filter (like a real retriever's ranks).
    """

    def __init__(self, hits: Iterable[Any], *, name: str = "list", rerank: bool = False) -> None:
        self.hits = list(hits)
        self.name = name
        self.rerank = rerank
        self.scopes: list[Any] = []

    def retrieve(self, query: str, scope, k: int = 10) -> list:
        self.scopes.append(scope)
        hits = [h for h in self.hits if scope.allows(h.patient_id)][:k]
        if self.rerank:
            from rag.retrieve import Hit

            hits = [Hit(**{**h.__dict__, "rank": i}) for i, h in enumerate(hits, start=1)]
        return hits


def write_rows(path: Path, rows: Iterable[dict | str], *, ensure_ascii: bool = True) -> Path:
    """One JSON object per line (a ``str`` row is written as it is: malformed input for tests)."""
    text = "".join((json.dumps(r, ensure_ascii=ensure_ascii) if isinstance(r, dict) else r) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per line."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def synced_index(corpus_name: str, embedder, settings, documents):
    """A ChunkIndex for ``corpus_name`` in ``settings``' home with ``documents`` chunked and embedded."""
    from rag.index import ChunkIndex

    index = ChunkIndex(corpus_name, embedder, settings)
    index.sync(documents, progress=False)
    return index
