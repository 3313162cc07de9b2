"""Quality filters for generated QA pairs, cheap first, each drop with a reason.

Why these and in this order: constrained decoding guarantees JSON syntax, not faithfulness. Small
generators copy sentences as "questions", invent evidence, answer in the wrong language, repeat
themselves and ask generic questions ("What is the treatment?") that match any note. Each filter
below catches one of those failure modes; the cheap string checks run before the retriever, so the
round-trip only sees survivors.

Order (``DEFAULT_ORDER``): schema -> question length -> copied from the note -> evidence in the note
-> answer supported by the note (and its support by the quote recorded) -> language -> patient-name cap -> near-duplicate within the
document -> exact duplicate across the corpus -> round-trip.

Measured facts the defaults follow: 3 words minimum (5 dropped good short
questions); a stop-word vote for language (``langdetect`` misfired on short German questions);
round-trip accepts a hit on another note of the *same patient* (a follow-up note legitimately
outranks the source), and records whether that happened.

:func:`apply_filters` runs the chain on one document's candidates and is usable on its own; the
corpus-level state (seen questions, the reference retriever) lives in :class:`FilterState`.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from finetune.qa_schema import ITEM_SCHEMA, Candidate

# --------------------------------------------------------------------------------------------
# Text helpers

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)
_LETTERS = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; hyphenated words kept whole)."""
    return [w.lower() for w in _WORD.findall(text)]


def normalize(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form used for copy and duplicate checks."""
    return " ".join(words(unicodedata.normalize("NFKC", text)))


def _shingles(text: str) -> set[str]:
    toks = words(text)
    return set(toks) | {f"{a} {b}" for a, b in zip(toks, toks[1:])}


def jaccard(a: str, b: str) -> float:
    """Word uni+bigram Jaccard similarity."""
    sa, sb = _shingles(a), _shingles(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


@lru_cache(maxsize=1)
def _stopwords() -> tuple[frozenset[str], frozenset[str]]:
    """English and German stop words, minus the words both lists share (they vote for neither)."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS, STOPWORDS_GERMAN

    en = {w.lower() for w in STOPWORDS_EN_PLUS}
    de = {w.lower() for w in STOPWORDS_GERMAN}
    both = en & de
    return frozenset(en - both), frozenset(de - both)


def guess_language(text: str, min_votes: int = 2) -> tuple[str | None, int, int]:
    """("en" | "de" | None, English votes, German votes) by stop words (words of 2+ letters).

    None (no opinion) on a tie or when the winner has fewer than ``min_votes``: keyword queries
    carry few stop words, and one stray "t" or "an" must not decide."""
    en, de = _stopwords()
    toks = [t for t in words(text) if len(t) > 1]
    n_en = sum(t in en for t in toks)
    n_de = sum(t in de for t in toks)
    if n_en == n_de or max(n_en, n_de) < min_votes:
        return None, n_en, n_de
    return ("en" if n_en > n_de else "de"), n_en, n_de


# --------------------------------------------------------------------------------------------
# Filter protocol


@dataclass
class Drop:
    """Why a candidate was dropped: the filter's name and a short, PHI-free detail."""

    reason: str
    detail: str = ""


@dataclass
class DocContext:
    """What the per-document filters need to know about the source document."""

    doc_id: str
    patient_id: str
    text: str
    language: str
    names: frozenset[str] = frozenset()  # the patient's name tokens, where the corpus knows them
    lowered: str = ""

    def __post_init__(self) -> None:
        if not self.lowered:
            self.lowered = self.text.lower()


class Filter(Protocol):
    name: str

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        """None to keep (verdicts may be added to ``cand.verdicts``); a Drop to reject."""


# --------------------------------------------------------------------------------------------
# The filters


@dataclass
class SchemaCheck:
    """Each item must match the item schema (the server enforces the whole set; partial or
    non-enforcing servers still send items with missing keys or empty strings)."""

    name: str = "schema"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        import jsonschema

        raw = cand.raw if cand.raw is not None else {
            "question_type": cand.question_type, "evidence": cand.evidence, "question": cand.question,
            "answer": cand.answer}
        try:
            jsonschema.validate(raw, ITEM_SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "item"
            return Drop(self.name, f"{where}: {exc.validator}")
        if not cand.question.strip() or not cand.answer.strip() or not cand.evidence.strip():
            return Drop(self.name, "empty field")
        return None


@dataclass
class QuestionLength:
    """3-40 words (InPars' lower bound; 5 dropped good short questions such as "What was the HbA1c?")."""

    min_words: int = 3
    max_words: int = 40
    name: str = "length"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        n = len(words(cand.question))
        if n < self.min_words:
            return Drop(self.name, f"{n} words < {self.min_words}")
        if n > self.max_words:
            return Drop(self.name, f"{n} words > {self.max_words}")
        return None


@dataclass
class CopiedFromDocument:
    """A "question" that is a span of the note teaches the embedder string matching, not retrieval."""

    name: str = "copied"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        q = normalize(cand.question)
        if q and f" {q} " in f" {_normalized_doc(doc)} ":
            return Drop(self.name, "question is a span of the document")
        return None


def _normalized_doc(doc: DocContext) -> str:
    cached = getattr(doc, "_normalized", None)
    if cached is None:
        cached = normalize(doc.text)
        object.__setattr__(doc, "_normalized", cached)
    return cached


@dataclass
class EvidenceInDocument:
    """The quote must be in the note (``rapidfuzz`` partial_ratio >= 90): catches invented evidence.

    Offsets of the best match are recorded (``evidence_span``) so training and citations can point at
    the exact text. Very short quotes ("Dokument") match anything, hence ``min_chars``.
    """

    threshold: float = 90.0
    min_chars: int = 12
    name: str = "evidence"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        from rapidfuzz import fuzz

        ev = " ".join(cand.evidence.split()).lower()
        if len(ev) < self.min_chars:
            return Drop(self.name, f"evidence shorter than {self.min_chars} characters")
        hay = doc.lowered
        pos = hay.find(ev)
        if pos >= 0:
            cand.verdicts["evidence_score"] = 100.0
            cand.verdicts["evidence_span"] = [pos, pos + len(ev)]
            return None
        flat = " ".join(hay.split()) if "\n" in hay or "  " in hay else hay
        if ev in flat:
            cand.verdicts["evidence_score"] = 100.0
            return None
        align = fuzz.partial_ratio_alignment(ev, hay, score_cutoff=self.threshold)
        if align is None:
            score = fuzz.partial_ratio(ev, flat)
            if score < self.threshold:
                return Drop(self.name, f"evidence match {score:.0f} < {self.threshold:g}")
            cand.verdicts["evidence_score"] = round(float(score), 1)
            return None
        cand.verdicts["evidence_score"] = round(float(align.score), 1)
        cand.verdicts["evidence_span"] = [int(align.dest_start), int(align.dest_end)]
        return None


_YES_NO = frozenset({"yes", "no", "ja", "nein", "not", "nicht", "none", "keine", "kein"})


@dataclass
class AnswerSupported:
    """The answer's content words and numbers must be in the note (share >= 0.5); how many are in the
    evidence quote itself is recorded too (``answer_in_evidence``).

    The recipe's grounding rule is "the answer may only use facts in the quote" (B.3.4). Small
    generators break it constantly (they quote a real sentence, because the schema makes them, and
    answer with something unrelated), and on the acceptance run the strict check kept 1 of 11 pairs.
    The answer does not enter embedder training (question -> document does, and the round-trip
    guards that), so the default drops only answers foreign to the whole note and leaves the
    strict check to readers that need reference answers (``verdicts.answer_in_evidence >= 0.5``)
    or to ``against="evidence"``.
    """

    min_share: float = 0.5
    against: str = "document"
    name: str = "answer"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        en, de = _stopwords()
        content = [w for w in words(cand.answer)
                   if (len(w) > 2 or w.isdigit()) and w not in en and w not in de and w not in _YES_NO]
        if not content:  # "yes", "no": nothing to check
            cand.verdicts["answer_support"] = cand.verdicts["answer_in_evidence"] = 1.0
            return None
        quote = frozenset(words(cand.evidence))
        in_quote = sum(w in quote for w in content) / len(content)
        cand.verdicts["answer_in_evidence"] = round(in_quote, 2)
        if self.against == "evidence":
            share = in_quote
        else:
            note = _doc_words(doc)
            share = sum(w in note or w in quote for w in content) / len(content)
        cand.verdicts["answer_support"] = round(share, 2)
        if share < self.min_share:
            return Drop(self.name, f"{share:.0%} of the answer's content words are in the {self.against}")
        return None


def _doc_words(doc: DocContext) -> frozenset[str]:
    cached = getattr(doc, "_words", None)
    if cached is None:
        cached = frozenset(words(doc.text))
        object.__setattr__(doc, "_words", cached)
    return cached


@dataclass
class LanguageVote:
    """Question (and answer) in the document's language, by stop-word vote; a tie keeps the item
    (keyword queries carry no stop words)."""

    name: str = "language"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        want = (doc.language or "en")[:2]
        for part, text in (("question", cand.question), ("answer", cand.answer)):
            got, n_en, n_de = guess_language(text)
            if got is not None and got != want:
                return Drop(self.name, f"{part} looks {got} ({n_en} en / {n_de} de stop words), document is {want}")
        return None


@dataclass
class PatientNameCap:
    """At most ``max_share`` of a document's kept questions may name the patient (and at least one
    is always allowed): otherwise the embedder learns to match surrogate names, not clinical content.
    Works where the corpus knows the patient's name (gold PHI spans); otherwise it passes."""

    max_share: float = 0.25
    per_doc: int = 8
    name: str = "patient_name"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        if not doc.names:
            return None
        if not (set(_LETTERS.findall(cand.question.lower())) & doc.names):  # "Miller's" names Miller
            return None
        cand.verdicts["names_patient"] = True
        allowed = max(1, math.floor(self.max_share * self.per_doc))
        named = sum(1 for k in kept if k.verdicts.get("names_patient"))
        if named >= allowed:
            return Drop(self.name, f"already {named} question(s) naming the patient")
        return None


@dataclass
class NearDuplicate:
    """Within one document: word uni+bigram Jaccard >= 0.6 with a kept question is the same question."""

    threshold: float = 0.6
    name: str = "near_duplicate"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        for other in kept:
            sim = jaccard(cand.question, other.question)
            if sim >= self.threshold:
                return Drop(self.name, f"Jaccard {sim:.2f} with {other.qa_id}")
        return None


@dataclass
class ExactDuplicate:
    """Across the corpus: the same normalized question twice. Templated notes produce identical
    questions for different documents; an ambiguous query teaches nothing, so later copies go."""

    seen: dict[str, str] = field(default_factory=dict)  # normalized question -> qa_id
    name: str = "duplicate"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        key = normalize(cand.question)
        first = self.seen.get(key)
        if first is not None and first != cand.qa_id:
            return Drop(self.name, f"same question as {first}")
        return None

    def remember(self, cand: Candidate) -> None:
        self.seen.setdefault(normalize(cand.question), cand.qa_id)


# --------------------------------------------------------------------------------------------
# Round-trip against a reference retriever


class ReferenceRetriever(Protocol):
    label: str

    def rank(self, query: str, n: int) -> list[str]:
        """Document ids, best first (at most n)."""


class BM25Reference:
    """BM25 (``bm25s``) over whole documents, English + German stop words, no stemming (mixed-language
    corpora; stemming for one language hurts the other). Cheap on CPU: ~1k queries/s (B.4)."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str]):
        import bm25s

        self.doc_ids = list(doc_ids)
        self.label = f"bm25s {getattr(bm25s, '__version__', '')} over {len(self.doc_ids)} documents".replace("  ", " ")
        from bm25s.stopwords import STOPWORDS_EN_PLUS, STOPWORDS_GERMAN

        self._stop = sorted({w.lower() for w in STOPWORDS_EN_PLUS} | {w.lower() for w in STOPWORDS_GERMAN})
        self.model = bm25s.BM25()
        tokens = bm25s.tokenize(list(texts), stopwords=self._stop, show_progress=False)
        self.model.index(tokens, show_progress=False)

    def rank(self, query: str, n: int) -> list[str]:
        import bm25s
        import numpy as np

        toks = bm25s.tokenize([query], stopwords=self._stop, return_ids=False, show_progress=False)[0]
        ids = self.model.get_tokens_ids(list(toks))
        if not ids:
            return []
        scores = self.model.get_scores_from_ids(ids)
        top = np.argsort(-scores, kind="stable")[: min(n, len(self.doc_ids))]
        return [self.doc_ids[i] for i in top if scores[i] > 0]


class DenseReference:
    """An embedder from the registry (e.g. the base multilingual-e5-small) over whole documents
    (truncated to its window); costlier, closer to what the fine-tuned model will see."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], embedder: Any):
        self.doc_ids = list(doc_ids)
        self.embedder = embedder
        self.label = f"{embedder.label} (dense) over {len(self.doc_ids)} documents"
        self.vectors = embedder.embed_passages(list(texts))

    def rank(self, query: str, n: int) -> list[str]:
        import numpy as np

        q = self.embedder.embed_queries([query])[0]
        scores = self.vectors @ q
        top = np.argsort(-scores, kind="stable")[: min(n, len(self.doc_ids))]
        return [self.doc_ids[i] for i in top]


def auto_k(n_docs: int) -> int:
    """Round-trip depth: 5 % of the corpus, between 2 and 10 (k ~ 10-20 at 400 k documents, B.3)."""
    return int(min(10, max(2, math.ceil(0.05 * n_docs))))


@dataclass
class RoundTrip:
    """The source document, or another document of the same patient, must be in the reference
    retriever's top-k for the question. Records both ranks (1-based; None = not in the searched
    depth) so a reader can re-threshold, and whether a sibling outranked the source (such siblings
    must not become hard negatives for this question)."""

    reference: ReferenceRetriever
    patient_of: dict[str, str]
    k: int = 10
    accept_sibling: bool = True
    depth: int = 100
    name: str = "roundtrip"

    def __call__(self, cand: Candidate, doc: DocContext, kept: Sequence[Candidate]) -> Drop | None:
        ranked = self.reference.rank(cand.question, max(self.k, self.depth))
        doc_rank = next((i + 1 for i, d in enumerate(ranked) if d == doc.doc_id), None)
        pat_rank = next((i + 1 for i, d in enumerate(ranked) if self.patient_of.get(d) == doc.patient_id), None)
        cand.verdicts["roundtrip_doc_rank"] = doc_rank
        cand.verdicts["roundtrip_patient_rank"] = pat_rank
        cand.verdicts["roundtrip_k"] = self.k
        sibling = [d for d in ranked[: (doc_rank or len(ranked) + 1) - 1]
                   if d != doc.doc_id and self.patient_of.get(d) == doc.patient_id]
        if sibling:
            cand.verdicts["roundtrip_siblings_above"] = sibling[:5]
        if doc_rank is not None and doc_rank <= self.k:
            return None
        if self.accept_sibling and pat_rank is not None and pat_rank <= self.k:
            return None
        best = f"doc rank {doc_rank or '>' + str(len(ranked))}, patient rank {pat_rank or '>' + str(len(ranked))}"
        return Drop(self.name, f"{best}, k={self.k}")


# --------------------------------------------------------------------------------------------
# The chain


DEFAULT_ORDER: tuple[str, ...] = ("schema", "length", "copied", "evidence", "answer", "language",
                                  "patient_name", "near_duplicate", "duplicate", "roundtrip")


@dataclass
class FilterState:
    """Corpus-level state: the chain, the cross-corpus duplicate memory and the reference retriever."""

    filters: list[Filter]

    @property
    def duplicates(self) -> ExactDuplicate | None:
        return next((f for f in self.filters if isinstance(f, ExactDuplicate)), None)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.filters]


def default_filters(*, reference: ReferenceRetriever | None = None, patient_of: dict[str, str] | None = None,
                    k: int | None = None, per_doc: int = 8, min_words: int = 3, max_words: int = 40,
                    evidence_threshold: float = 90.0, answer_min_share: float = 0.5,
                    answer_against: str = "document",
                    name_share: float = 0.25, near_dup: float = 0.6,
                    skip: Iterable[str] = ()) -> FilterState:
    """The recommended chain; ``reference`` None leaves out the round-trip."""
    skip = set(skip)
    unknown = skip - set(DEFAULT_ORDER)
    if unknown:
        raise ValueError(f"unknown filter name(s) {sorted(unknown)}; known: {', '.join(DEFAULT_ORDER)}")
    chain: list[Filter] = [
        SchemaCheck(), QuestionLength(min_words, max_words), CopiedFromDocument(),
        EvidenceInDocument(evidence_threshold), AnswerSupported(answer_min_share, answer_against), LanguageVote(),
        PatientNameCap(name_share, per_doc), NearDuplicate(near_dup), ExactDuplicate(),
    ]
    if reference is not None:
        n = len(patient_of or {})
        chain.append(RoundTrip(reference, dict(patient_of or {}), k=k or auto_k(n)))
    return FilterState([f for f in chain if f.name not in skip])


@dataclass
class FilterResult:
    kept: list[Candidate]
    dropped: list[tuple[Candidate, Drop]]

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, drop in self.dropped:
            out[drop.reason] = out.get(drop.reason, 0) + 1
        return out


def apply_filters(candidates: Iterable[Candidate], doc: DocContext, state: FilterState,
                  *, on_keep: Callable[[Candidate], None] | None = None) -> FilterResult:
    """Run the chain over one document's candidates, in order; the first failing filter drops.

    Kept candidates are remembered for the cross-corpus duplicate check, so call this once per
    document (a resumed run seeds ``state.duplicates.seen`` from the existing output first).
    """
    kept: list[Candidate] = []
    dropped: list[tuple[Candidate, Drop]] = []
    dup = state.duplicates
    for cand in candidates:
        verdict = None
        for flt in state.filters:
            verdict = flt(cand, doc, kept)
            if verdict is not None:
                break
        if verdict is None:
            kept.append(cand)
            if dup is not None:
                dup.remember(cand)
            if on_keep is not None:
                on_keep(cand)
        else:
            dropped.append((cand, verdict))
    return FilterResult(kept, dropped)


NAME_LABELS = frozenset({"PTName", "NAME_PATIENT", "PATIENT", "PERSON_PATIENT"})


def patient_names(extra: dict[str, Any] | None) -> frozenset[str]:
    """Lower-cased name tokens of the patient from gold PHI spans (physionet ``PTName``, GraSCCo
    ``NAME_PATIENT``); empty where the corpus does not say."""
    out: set[str] = set()
    for span in (extra or {}).get("phi") or []:
        if isinstance(span, dict) and span.get("label") in NAME_LABELS:
            out |= {w for w in _LETTERS.findall(str(span.get("text", "")).lower()) if len(w) >= 3}
    return frozenset(out)


__all__ = [
    "AnswerSupported", "BM25Reference", "CopiedFromDocument", "DEFAULT_ORDER", "DenseReference", "DocContext",
    "Drop", "EvidenceInDocument", "ExactDuplicate", "Filter", "FilterResult", "FilterState", "LanguageVote",
    "NearDuplicate", "PatientNameCap", "QuestionLength", "RoundTrip", "SchemaCheck", "apply_filters", "auto_k",
    "default_filters", "guess_language", "jaccard", "normalize", "patient_names", "words",
]
