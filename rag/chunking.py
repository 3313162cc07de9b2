"""Structure-aware chunking sized in the embedder's own tokens, with exact character offsets.

Why this shape: clinical notes are organised in sections ("# Medications", "PMH:", "Anamnese:"), and a
chunk that crosses a section boundary mixes topics and blurs retrieval. We therefore cut at the
coarsest boundary that fits - section, then paragraph, then sentence, then a token window - and
pack neighbouring small pieces together up to the budget. Sizes are counted with the embedder's
tokenizer (a chunk longer than the model's window would be silently truncated), and every chunk keeps
``start``/``end`` into the document text so a citation can highlight the exact span.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from rag.corpus import Document

TokenOffsets = Callable[[str], Sequence[tuple[int, int]]]

# A header line: markdown "# ..." or a short label ending in a colon ("PMH:", "SUBJECTIVE:,",
# "Anamnese:", "Assessment and Plan:").
_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]+\S[^\n]*|[A-ZÄÖÜ][A-Za-zÄÖÜäöüß /&+\-]{1,40}:[ \t,]*(?:\n|$))",
    re.MULTILINE,
)
_PARAGRAPH = re.compile(r"\n[ \t]*\n+")
# Sentence end: . ! ? followed by space and an upper-case letter or digit; avoids "Dr. Smith" only
# loosely, which is fine - a sentence split is the second-finest cut and rarely reached.
_SENTENCE = re.compile(r"(?<=[.!?;])[ \t]+(?=[A-ZÄÖÜ0-9(\[\"'])|\n(?=[ \t]*[-*•\u2022]|\s*\d+[.)] )")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    patient_id: str
    text: str
    start: int
    end: int
    ordinal: int
    section: str | None = None
    doc_hash: str = ""
    metadata: dict = field(default_factory=dict)  # document metadata (date, doc_type, ...)

    def store_metadata(self) -> dict[str, str | int | float | bool]:
        """Scalar metadata as the vector store keeps it (Chroma accepts no None or lists)."""
        meta = {k: v for k, v in self.metadata.items() if isinstance(v, (str, int, float, bool))}
        meta.update(
            chunk_id=self.chunk_id,
            doc_id=self.doc_id,
            patient_id=self.patient_id,
            start=self.start,
            end=self.end,
            ordinal=self.ordinal,
            doc_hash=self.doc_hash,
        )
        if self.section:
            meta["section"] = self.section
        return meta


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 256
    overlap_tokens: int = 32
    min_tokens: int = 24  # a trailing piece smaller than this joins its neighbour

    def key(self) -> str:
        return f"t{self.max_tokens}-o{self.overlap_tokens}-m{self.min_tokens}"


class _TokenCounter:
    """Counts tokens of any span of one text from a single tokenizer pass."""

    def __init__(self, text: str, token_offsets: TokenOffsets):
        offsets = list(token_offsets(text))
        self.starts = [s for s, _ in offsets]
        self.ends = [e for _, e in offsets]

    def count(self, start: int, end: int) -> int:
        return max(0, bisect.bisect_left(self.starts, end) - bisect.bisect_left(self.ends, start + 1))

    def cut_points(self, start: int, end: int, size: int, overlap: int) -> list[tuple[int, int]]:
        """Token windows over [start, end): the last-resort split for a run-on sentence or table."""
        first = bisect.bisect_left(self.ends, start + 1)
        last = bisect.bisect_left(self.starts, end)
        spans = []
        step = max(1, size - overlap)
        for i in range(first, last, step):
            j = min(i + size, last)
            spans.append((max(start, self.starts[i]), min(end, self.ends[j - 1])))
            if j >= last:
                break
        return spans or [(start, end)]


def _split(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    pieces, pos = [], start
    for m in pattern.finditer(text, start, end):
        if m.start() > pos:
            pieces.append((pos, m.start()))
        pos = m.end()
    if pos < end:
        pieces.append((pos, end))
    return [(a, b) for a, b in pieces if text[a:b].strip()]


def _sections(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, header) per section; text before the first header has no header."""
    heads = list(_HEADER.finditer(text))
    if not heads:
        return [(0, len(text), None)]
    out: list[tuple[int, int, str | None]] = []
    if text[: heads[0].start()].strip():
        out.append((0, heads[0].start(), None))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        title = m.group(0).strip().lstrip("#").strip().rstrip(":,").strip()
        if text[m.start() : end].strip():
            out.append((m.start(), end, title[:80] or None))
    return out


def _fit(text: str, span: tuple[int, int], counter: _TokenCounter, cfg: ChunkingConfig) -> list[tuple[int, int]]:
    """Split one span into pieces that each fit the budget, cutting at the coarsest boundary."""
    a, b = span
    if counter.count(a, b) <= cfg.max_tokens:
        return [span]
    for pattern in (_PARAGRAPH, _SENTENCE):
        parts = _split(text, a, b, pattern)
        if len(parts) > 1:
            return [p for part in parts for p in _fit(text, part, counter, cfg)]
    return counter.cut_points(a, b, cfg.max_tokens, cfg.overlap_tokens)


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def chunk_document(doc: Document, token_offsets: TokenOffsets, cfg: ChunkingConfig = ChunkingConfig()) -> list[Chunk]:
    text = doc.text
    counter = _TokenCounter(text, token_offsets)
    # pieces: (start, end, section, starts_section)
    pieces: list[tuple[int, int, str | None, bool]] = []
    for s_start, s_end, title in _sections(text):
        for i, (a, b) in enumerate(_fit(text, (s_start, s_end), counter, cfg)):
            pieces.append((a, b, title, i == 0))

    groups: list[list[tuple[int, int, str | None, bool]]] = []
    current: list[tuple[int, int, str | None, bool]] = []
    for piece in pieces:
        if current:
            merged = counter.count(current[0][0], piece[1])
            half_full = counter.count(current[0][0], current[-1][1]) >= cfg.max_tokens // 2
            if merged > cfg.max_tokens or (piece[3] and half_full):
                groups.append(current)
                current = []
        current.append(piece)
    if current:
        if groups and counter.count(current[0][0], current[-1][1]) < cfg.min_tokens and \
                counter.count(groups[-1][0][0], current[-1][1]) <= cfg.max_tokens:
            groups[-1].extend(current)
        else:
            groups.append(current)

    meta = doc.metadata()
    doc_hash = doc.content_hash()
    chunks: list[Chunk] = []
    for group in groups:
        a, b = _strip(text, group[0][0], group[-1][1])
        if a >= b:
            continue
        ordinal = len(chunks)
        chunks.append(
            Chunk(
                chunk_id=f"{doc.doc_id}#{ordinal:04d}",
                doc_id=doc.doc_id,
                patient_id=doc.patient_id,
                text=text[a:b],
                start=a,
                end=b,
                ordinal=ordinal,
                section=group[0][2],
                doc_hash=doc_hash,
                metadata=meta,
            )
        )
    return chunks


def chunk_documents(docs: Iterable[Document], token_offsets: TokenOffsets, cfg: ChunkingConfig = ChunkingConfig()) -> list[Chunk]:
    return [c for d in docs for c in chunk_document(d, token_offsets, cfg)]
