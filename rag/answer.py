"""Grounded answers: scoped retrieval -> numbered passages -> generator -> citations mapped back.

Why citations are checked here and not trusted: the generator may cite a passage number that was
never shown, or (small CPU models especially) cite nothing. Only numbers that resolve to a retrieved
passage become citations. Where the model cites nothing, each answer sentence is matched to the
passage sharing most of its content words, and such citations are labelled ``overlap`` rather than
``model`` so the clinician sees how the link was made. Retrieval already ran inside the patient
scope, so every citation belongs to the scoped patient(s) by construction; the check is repeated.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from rag.language import detect_language
from rag.prompts import load_prompt
from rag.retrieve import Hit, Retriever, Scope, ScopeViolation

if TYPE_CHECKING:
    from rag.llm import LLMClient

_CITE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_WORD = re.compile(r"[A-Za-zÄÖÜäöüß][A-Za-zÄÖÜäöüß0-9\-]{3,}")
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_STOP = {
    "this", "that", "with", "from", "have", "been", "were", "patient", "which", "what", "when", "there",
    "their", "they", "does", "record", "information", "contain", "passage", "passages", "also",
}
NO_CONTEXT = {
    "en": "No documents in the selected scope matched this question, so there is nothing to answer from.",
    "de": "Im gewählten Bereich passt kein Dokument zu dieser Frage; es gibt nichts, worauf sich eine Antwort stützen kann.",
}


@dataclass(frozen=True)
class Citation:
    n: int
    hit: Hit
    source: str  # "model": the generator wrote [n]; "overlap": matched by shared words

    def to_json(self) -> dict:
        return {"n": self.n, "source": self.source, **self.hit.to_json()}


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    passages: list[Hit]
    scope: Scope
    language: str
    retriever: str
    embedder: str
    generator: str
    prompt_version: str
    invalid_citations: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def grounded(self) -> bool:
        return bool(self.citations)

    def answer_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "language": self.language,
            "scope": list(self.scope.patients) if self.scope.patients is not None else "all",
            "retriever": self.retriever,
            "embedder": self.embedder,
            "generator": self.generator,
            "prompt_version": self.prompt_version,
            "citations": [c.to_json() for c in self.citations],
            "invalid_citations": self.invalid_citations,
            "passages": [h.to_json() for h in self.passages],
            "timings": self.timings,
        }


def format_passages(hits: list[Hit]) -> str:
    blocks = []
    for i, hit in enumerate(hits, start=1):
        label = ", ".join(x for x in ((hit.date or "")[:10], hit.doc_type or "", hit.metadata.get("section") or "") if x)
        text = " ".join(hit.text.split())
        blocks.append(f"[{i}] ({label})\n{text}" if label else f"[{i}]\n{text}")
    return "\n\n".join(blocks)


def cited_numbers(text: str) -> list[int]:
    numbers: list[int] = []
    for m in _CITE.finditer(text):
        for part in re.split(r"[,;]", m.group(1)):
            n = int(part)
            if n not in numbers:
                numbers.append(n)
    return numbers


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _STOP


def attribute_by_overlap(answer: str, hits: list[Hit], min_share: float = 0.5, min_words: int = 2) -> list[int]:
    """Passage numbers whose words cover most of some answer sentence (for answers without [n])."""
    passage_words = [_content_words(h.text) for h in hits]
    found: list[int] = []
    for sentence in _SENTENCES.split(answer):
        words = _content_words(sentence)
        if len(words) < min_words:
            continue
        best, best_share = 0, 0.0
        for i, pw in enumerate(passage_words, start=1):
            share = len(words & pw) / len(words)
            if share > best_share:
                best, best_share = i, share
        if best and best_share >= min_share and len(words & passage_words[best - 1]) >= min_words and best not in found:
            found.append(best)
    return found


class AnswerPipeline:
    """The one answer path, shared by the chat app and the RAG evaluation."""

    def __init__(self, retriever: Retriever, llm: "LLMClient", k: int = 5, embedder: str = "", max_tokens: int | None = None) -> None:
        self.retriever = retriever
        self.llm = llm
        self.k = k
        index = getattr(retriever, "index", None) or getattr(getattr(retriever, "dense", None), "index", None)
        self.embedder = embedder or (index.embedder.name if index is not None else "")
        self.max_tokens = max_tokens

    def stream(self, question: str, scope: Scope) -> Iterator[str | Answer]:
        """Yield answer text deltas as they arrive, then the finished ``Answer``."""
        t0 = time.perf_counter()
        language = detect_language(question)
        prompt = load_prompt("answer", language)
        hits = self.retriever.retrieve(question, scope, self.k)
        t_retrieved = time.perf_counter()
        timings = {"retrieval_s": t_retrieved - t0}
        base = dict(question=question, scope=scope, language=language, retriever=self.retriever.name,
                    embedder=self.embedder, generator=self.llm.describe(), prompt_version=prompt.version)
        if not hits:
            text = NO_CONTEXT[language]
            yield text
            timings["total_s"] = time.perf_counter() - t0
            yield Answer(text=text, citations=[], passages=[], timings=timings, **base)
            return

        messages = prompt.messages(passages=format_passages(hits), question=question)
        parts: list[str] = []
        for delta in self.llm.stream(messages, max_tokens=self.max_tokens, temperature=0.0):
            if not parts:
                timings["first_token_s"] = time.perf_counter() - t0
            parts.append(delta)
            yield delta
        text = "".join(parts).strip()
        timings["generation_s"] = time.perf_counter() - t_retrieved
        timings["total_s"] = time.perf_counter() - t0

        numbers = cited_numbers(text)
        valid = [n for n in numbers if 1 <= n <= len(hits)]
        citations = [Citation(n, hits[n - 1], "model") for n in valid]
        if not citations:
            citations = [Citation(n, hits[n - 1], "overlap") for n in attribute_by_overlap(text, hits)]
        for c in citations:
            if not scope.allows(c.hit.patient_id):
                raise ScopeViolation(f"citation [{c.n}] points outside {scope.describe()}")
        yield Answer(text=text, citations=citations, passages=hits, timings=timings,
                     invalid_citations=[n for n in numbers if n not in valid], **base)

    def answer(self, question: str, scope: Scope) -> Answer:
        result = None
        for event in self.stream(question, scope):
            if isinstance(event, Answer):
                result = event
        assert result is not None
        return result
