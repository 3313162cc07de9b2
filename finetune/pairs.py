"""Training pairs for the domain embedder: (query, positive passage) with the patient it belongs to.

Two sources, both cut into passages with the same chunker and token budget the index uses, so the
model is trained on the units it will later retrieve:

* **QA pairs** (``qa.jsonl``, docs/design.md §3): the question is the query; the positive is the chunk of
  the source document that holds the evidence quote (exact match first, then the best fuzzy match),
  or the whole first chunk when the evidence cannot be placed.
* **Inverse cloze** (self-supervised, Lee et al. 2019): a sentence of a chunk is the query and the
  chunk is the positive; with probability ``remove_prob`` the sentence is cut out of the positive so
  the model must learn context, not string overlap. It needs no generator, so it is a fair baseline
  for what synthetic QA adds.
* **Descriptions** (self-supervised from metadata): a corpus's own one-line summary of a document
  (MTSamples ``descriptions``: "Consult for laparoscopic gastric bypass.") is the query and the
  chunk sharing most words with it is the positive. These queries are short, written by people and
  shaped like search requests, unlike note sentences; mixing them in keeps the model from
  forgetting how to match a short request to a note (measured in docs/results.md, fine-tuning).

Every pair carries ``doc_id`` and ``patient_id``: the split decides which patients a source may
draw from (never a test patient), the miner drops same-patient negatives, and the batch sampler
keeps one pair per patient per batch.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.chunking import Chunk, ChunkingConfig, chunk_document
from rag.corpus import Corpus, CorpusError, Problem, read_jsonl_objects

TokenOffsets = Callable[[str], Sequence[tuple[int, int]]]

# A sentence ends at . ! ? or a line break; ICU notes often use ".." or line breaks instead.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+|\.\.+\s*")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Pair:
    """One training example: ``query`` should retrieve ``positive`` (a chunk of ``doc_id``)."""

    query: str
    positive: str
    doc_id: str
    patient_id: str
    chunk_id: str
    source: str  # "qa", "ict" or "description"
    negatives: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def chunk_corpus(corpus: Corpus, token_offsets: TokenOffsets, cfg: ChunkingConfig = ChunkingConfig(),
                 patients: Iterable[str] | None = None) -> dict[str, list[Chunk]]:
    """``doc_id -> chunks`` for the documents of ``patients`` (all when None)."""
    keep = set(patients) if patients is not None else None
    return {d.doc_id: chunk_document(d, token_offsets, cfg)
            for d in corpus.documents if keep is None or d.patient_id in keep}


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (stripped, non-empty)."""
    spans, pos = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def inverse_cloze_pairs(chunks: dict[str, list[Chunk]], *, per_chunk: int = 2, remove_prob: float = 0.9,
                        min_words: int = 4, max_words: int = 40, seed: int = 0) -> list[Pair]:
    """Inverse-cloze pairs: up to ``per_chunk`` sentences of each chunk as queries, the chunk as positive.

    A chunk with a single usable sentence still gives a pair, but the sentence is then never
    removed (an empty positive teaches nothing). Deterministic for a seed.
    """
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for doc_id in sorted(chunks):
        for chunk in chunks[doc_id]:
            spans = [s for s in sentences(chunk.text) if min_words <= _words(chunk.text[s[0]:s[1]]) <= max_words]
            if not spans:
                continue
            for a, b in rng.sample(spans, min(per_chunk, len(spans))):
                query = chunk.text[a:b]
                removed = len(spans) > 1 and rng.random() < remove_prob
                positive = (chunk.text[:a] + chunk.text[b:]).strip() if removed else chunk.text
                if not positive:
                    continue
                pairs.append(Pair(query=query, positive=positive, doc_id=chunk.doc_id,
                                  patient_id=chunk.patient_id, chunk_id=chunk.chunk_id, source="ict",
                                  extra={"sentence_removed": removed}))
    return pairs


def description_pairs(corpus: Corpus, chunks: dict[str, list[Chunk]], *, field_name: str = "descriptions",
                      min_words: int = 3, max_words: int = 40, limit: int | None = None,
                      seed: int = 0) -> list[Pair]:
    """Pairs from each document's own summary in ``extra[field_name]`` (a string or a list; the first
    usable one): the summary is the query, the chunk with the most words in common is the positive.

    A summary that is copied verbatim from the note is kept (a real request can quote the note too);
    ``limit`` draws a seeded sample so a large metadata corpus cannot crowd out the other sources.
    """
    rng = random.Random(seed)
    docs = corpus.by_id()
    pairs: list[Pair] = []
    for doc_id in sorted(chunks):
        doc, doc_chunks = docs.get(doc_id), chunks[doc_id]
        if doc is None or not doc_chunks:
            continue
        values = doc.extra.get(field_name)
        values = [values] if isinstance(values, str) else list(values or [])
        query = next((v.strip() for v in values if isinstance(v, str)
                      and min_words <= _words(v) <= max_words), None)
        if query is None:
            continue
        words = {w.lower() for w in _WORD.findall(query)}
        best = max(doc_chunks, key=lambda c: (len(words & {w.lower() for w in _WORD.findall(c.text)}), -c.start))
        pairs.append(Pair(query=query, positive=best.text, doc_id=doc_id, patient_id=doc.patient_id,
                          chunk_id=best.chunk_id, source="description", extra={"field": field_name}))
    if limit is not None and len(pairs) > limit:
        pairs = sorted(rng.sample(pairs, limit), key=lambda p: p.doc_id)
    return pairs


def locate_evidence(evidence: str, doc_chunks: Sequence[Chunk], doc_text: str) -> tuple[Chunk, str]:
    """The chunk holding ``evidence`` and how it was found ("exact", "fuzzy" or "first").

    Exact: the quote occurs verbatim (case- and whitespace-insensitively) and the chunk covering its
    middle wins. Fuzzy: rapidfuzz partial_ratio of quote vs chunk, best chunk if >= 80. Else the
    first chunk: the document is still the right answer, the passage is a guess.
    """
    from rapidfuzz import fuzz

    norm = lambda s: re.sub(r"\s+", " ", s).strip().lower()  # noqa: E731
    ev = norm(evidence or "")
    if ev and len(doc_chunks) > 1:
        # map normalised positions back to the raw text by searching the raw text with a regex
        pattern = r"\s+".join(re.escape(w) for w in ev.split(" "))
        m = re.search(pattern, doc_text, flags=re.IGNORECASE)
        if m:
            mid = (m.start() + m.end()) // 2
            for c in doc_chunks:
                if c.start <= mid < c.end:
                    return c, "exact"
        scores = [fuzz.partial_ratio(ev, norm(c.text)) for c in doc_chunks]
        best = max(range(len(doc_chunks)), key=scores.__getitem__)
        if scores[best] >= 80:
            return doc_chunks[best], "fuzzy"
        return doc_chunks[0], "first"
    return doc_chunks[0], "exact" if ev and ev in norm(doc_text) else "first"


def qa_pairs(qa_rows: Iterable[dict[str, Any]], corpus: Corpus, chunks: dict[str, list[Chunk]],
             patients: Iterable[str] | None = None) -> list[Pair]:
    """Pairs from QA records whose document is in ``chunks`` and whose patient is in ``patients``.

    Records of other patients are skipped silently on purpose: that is how the split keeps dev and
    test questions out of training. A record whose document is unknown to the corpus raises.
    """
    keep = set(patients) if patients is not None else None
    docs = corpus.by_id()
    pairs: list[Pair] = []
    unknown = []
    for row in qa_rows:
        doc = docs.get(str(row["doc_id"]))
        if doc is None:
            unknown.append(str(row["doc_id"]))
            continue
        if (keep is not None and doc.patient_id not in keep) or doc.doc_id not in chunks or not chunks[doc.doc_id]:
            continue
        chunk, how = locate_evidence(str(row.get("evidence") or ""), chunks[doc.doc_id], doc.text)
        pairs.append(Pair(query=str(row["question"]).strip(), positive=chunk.text, doc_id=doc.doc_id,
                          patient_id=doc.patient_id, chunk_id=chunk.chunk_id, source="qa",
                          extra={"qa_id": row.get("qa_id"), "located": how}))
    if unknown:
        raise CorpusError([Problem(corpus.source, None, "missing_field",
                                   f"{len(unknown)} QA records name documents not in corpus {corpus.name!r}, "
                                   f"e.g. {unknown[:3]}")], corpus.source)
    return pairs


def write_pairs(pairs: Iterable[Pair], path: str | Path) -> int:
    """Write pairs as JSON lines atomically (a crash never leaves a half file that looks complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_pairs(path: str | Path) -> list[Pair]:
    path = Path(path)
    out: list[Pair] = []
    problems: list[Problem] = []
    for line_no, row in read_jsonl_objects(path, problems):
        try:
            out.append(Pair(**row))
        except TypeError as exc:
            problems.append(Problem(str(path), line_no, "malformed", f"not a pair record: {exc}"))
    if problems:
        raise CorpusError(problems, str(path))
    return out


def cloze_test_documents(documents: Sequence[Any], token_offsets: TokenOffsets, *, min_words: int = 6,
                         max_words: int = 40, seed: int = 0) -> tuple[list[Any], list[dict[str, Any]]]:
    """A held-out retrieval task that needs no generator: one sentence per document becomes the query
    and is *cut out* of that document, so neither BM25 nor a dense model can match it verbatim.

    Returns the edited documents (same ids and patients; documents without a usable sentence are
    kept unchanged as distractors) and query rows ``{query_id, text, patient_id, doc_id}``. Use it
    only on held-out patients: it measures the inverse-cloze skill the self-supervised pairs teach,
    which is a proxy for, not a replacement of, QA retrieval.
    """
    import dataclasses

    rng = random.Random(seed)
    docs_out, queries = [], []
    for doc in documents:
        spans = [s for s in sentences(doc.text) if min_words <= _words(doc.text[s[0]:s[1]]) <= max_words]
        if len(spans) < 2:
            docs_out.append(doc)
            continue
        a, b = spans[rng.randrange(len(spans))]
        queries.append({"query_id": f"cloze-{doc.doc_id}", "text": doc.text[a:b], "patient_id": doc.patient_id,
                        "doc_id": doc.doc_id})
        docs_out.append(dataclasses.replace(doc, text=(doc.text[:a] + doc.text[b:]).strip()))
    return docs_out, queries
