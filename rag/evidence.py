"""Evidence first: the sentences of the retrieved passages that answer the question best.

Retrieval finds most facts; small CPU generators then lose them (measured in ``eval.answers``). So
before any generation the clinician gets the best sentences themselves: grounded by construction,
each with its patient, document, date and exact character span, in well under a second. The
generator then works from these sentences (less and better text than whole chunks) and every
sentence it writes is checked against the evidence it cites (``rag.answer``).

Ranking combines two views of a sentence, fused by reciprocal rank: which of the question's words
it contains (weighted by how rare they are among the candidate sentences, matched on word stems so
"antibiotics" finds "antibiotic" and "Dosierung" finds "dosiert"), and how close the embedder puts
it to the question. ``strength`` (how well the best sentence covers the question, 0-1) decides
whether there is anything to answer from; its threshold is measured, not guessed (``eval.answers``).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rag.retrieve import Hit

if TYPE_CHECKING:
    from rag.embedders import Embedder

_TOKEN = re.compile(r"[A-Za-zÄÖÜäöüß]+|\d+(?:[.,]\d+)?")
_WORD = re.compile(r"[A-Za-zÄÖÜäöüß]+")
#: Sentence ends: punctuation before white space, line breaks, and list bullets.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=\S)|\n\s*(?:[-*•]\s+)?|;\s+")
_BULLET = re.compile(r"[-*•]\s+$")
STOP = frozenset("""a an and are as at be been but by can did do does for from had has have he her his how i if in
is it its me my no not of on or she so that the their them they this to was were what when where which who whom
why will with would you your patient patients pt pts record note notes any all there about during since
der die das den dem des ein eine einer eines einem und oder ist sind war waren wurde wurden hat haben hatte
bei mit von vom zu zur zum im in am an auf für nicht wie was wann welche welcher welches wer wo warum
patientin patienten sie er es ihr ihre sein seine""".split())
#: Fusion constant of reciprocal-rank fusion and the small prior for sentences of higher-ranked passages.
RRF_K = 10
PASSAGE_PRIOR = 0.02
MIN_WORDS = 3
MAX_CHARS = 400
#: A question's word is specific when it is not a question-frame word (below) and rarer than this in
#: general language (wordfreq's Zipf scale: 4.5 is about 30 per million words): "heparin" 2.6,
#: "fracture" 3.7, "ankle" 4.0, but "condition" 4.9, "blood" 5.1.
SPECIFIC_MAX_ZIPF = 4.5
#: Words that ask for a kind of information, not a thing: a question made only of these ("Which
#: medications is she on?", "Was ist die aktuelle Diagnose?") has an answer in every record.
QUESTION_FRAME = frozenset("""medication medications medicine medicines drug drugs diagnosis diagnoses condition
conditions problem problems procedure procedures treatment treatments therapy therapies plan plans status history
symptom symptoms finding findings result results test tests lab labs vital vitals sign signs allergy allergies
assessment dose doses dosage administered administer given receive received receiving prescribed current currently
recent recently last latest first overall primary level levels name names time times date dates noted documented
performed perform undergo underwent being used using taking take started start stopped stop change changes changed
happened event events course complication complications issue issues concern concerns update today overnight shift
night morning evening day days admission admitted discharge care manage managed management goal goals order orders
done doing kind type amount value values reason reasons cause
medikament medikamente medikation arzneimittel diagnose diagnosen befund befunde therapie behandlung verlauf
anamnese vorgeschichte symptome beschwerden dosis dosierung erhielt erhalten bekam bekommen gegeben verabreicht
aktuell aktuelle aktuellen letzte letzten erste ersten zustand plan procedere maßnahmen untersuchung untersuchungen
ergebnis ergebnisse wert werte aufnahme entlassung heute""".split())


def stem(word: str) -> str:
    """A crude shared stem for English and German ("antibiotics" ~ "antibiotic", "dosierung" ~ "dosiert")."""
    low = word.lower()
    return low[:6] if len(low) > 6 else low


def content_terms(text: str) -> list[str]:
    return [stem(t) for t in _TOKEN.findall(text) if t.lower() not in STOP and (len(t) > 2 or t.isdigit())]


def specific_terms(question: str, language: str = "en") -> set[str]:
    """Stems of the question's words that are rare in general language: drugs, devices, names, shorthand.

    A question without them ("What medications is the patient on?", "What is the diagnosis?") has a
    true answer in every record that has notes, so the answer step never abstains on it; "When was
    hydrochlorothiazide started?" can be unanswerable, where the record never names the drug."""
    from wordfreq import zipf_frequency  # loads its word lists on first use

    words = {w.lower() for w in _WORD.findall(question) if len(w) > 2}
    return {stem(w) for w in words - STOP - QUESTION_FRAME if zipf_frequency(w, language) < SPECIFIC_MAX_ZIPF}


@dataclass(frozen=True)
class Evidence:
    """One evidence sentence; ``n`` is the number the generator cites, ``start``/``end`` point into the document."""

    n: int
    hit: Hit
    text: str
    start: int
    end: int
    score: float
    coverage: float  # idf-weighted share of the question's terms the sentence contains

    @property
    def label(self) -> str:
        return ", ".join(x for x in ((self.hit.date or "")[:10], self.hit.doc_type or "") if x)

    def to_json(self) -> dict:
        return {"n": self.n, "doc_id": self.hit.doc_id, "patient_id": self.hit.patient_id, "chunk_id": self.hit.chunk_id,
                "date": self.hit.date, "doc_type": self.hit.doc_type, "start": self.start, "end": self.end,
                "text": self.text, "score": round(self.score, 4), "coverage": round(self.coverage, 4)}


@dataclass(frozen=True)
class EvidenceSet:
    items: list[Evidence]
    strength: float  # best coverage of the question by one sentence (0-1)
    candidates: int
    similarity: float = 0.0  # best cosine between the question and a sentence (0 without an embedder)

    def format(self) -> str:
        """The numbered list the generator reads."""
        return "\n".join(f"[{e.n}] ({e.label}) {e.text}" if e.label else f"[{e.n}] {e.text}" for e in self.items)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence-like piece of a chunk; very short pieces join the next one,
    very long ones are cut at commas so a sentence stays something one can read at a glance.

    A lead-in that ends with a colon keeps the list items that follow it ("prescribed the following
    medications:" + "- aspirin 81 mg"): apart, the lead-in matches the question and says nothing,
    and the items say everything but match nothing."""
    pieces: list[tuple[int, int, bool]] = []  # (start, end, introduced by a list bullet)
    cursor, bullet = 0, False
    for m in _BOUNDARY.finditer(text):
        pieces.append((cursor, m.start(), bullet))
        cursor, bullet = m.end(), bool(_BULLET.search(m.group()))
    pieces.append((cursor, len(text), bullet))
    out: list[tuple[int, int]] = []
    pending: tuple[int, int] | None = None
    in_list = False
    for start, end, is_item in pieces:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end <= start:
            continue
        if is_item and in_list and pending is None and end - out[-1][0] <= MAX_CHARS:
            out[-1] = (out[-1][0], end)
            continue
        in_list = False
        if pending is not None:
            start = pending[0]
            pending = None
        if len(_TOKEN.findall(text[start:end])) < MIN_WORDS:
            pending = (start, end)
            continue
        while end - start > MAX_CHARS:
            cut = text.rfind(", ", start, start + MAX_CHARS)
            cut = cut + 1 if cut > start + 40 else start + MAX_CHARS
            out.append((start, cut))
            start = cut
            while start < end and text[start].isspace():
                start += 1
        out.append((start, end))
        in_list = text[end - 1] == ":"
    if pending is not None:
        if out and out[-1][1] <= pending[0]:
            out[-1] = (out[-1][0], pending[1])
        else:
            out.append(pending)
    return out


class EvidenceSelector:
    """Picks the ``k`` best sentences of the retrieved passages for a question."""

    def __init__(self, embedder: "Embedder | None" = None, k: int = 4) -> None:
        self.embedder = embedder
        self.k = k

    def select(self, question: str, hits: Sequence[Hit]) -> EvidenceSet:
        candidates: list[tuple[Hit, int, int, str]] = []
        seen: set[str] = set()
        for hit in hits:
            for start, end in split_sentences(hit.text):
                sentence = " ".join(hit.text[start:end].split())
                key = sentence.lower()
                if key in seen:  # templated notes repeat sentences; the first (best-ranked passage) stays
                    continue
                seen.add(key)
                candidates.append((hit, start, end, sentence))
        if not candidates:
            return EvidenceSet([], 0.0, 0)
        terms = set(content_terms(question))
        sentence_terms = [set(content_terms(c[3])) for c in candidates]
        df = Counter(t for ts in sentence_terms for t in ts & terms)
        idf = {t: math.log(1 + (len(candidates) + 1) / (df.get(t, 0) + 0.5)) for t in terms}
        total = sum(idf.values()) or 1.0
        coverage = np.array([sum(idf[t] for t in ts & terms) / total for ts in sentence_terms])
        lexical_rank = _ranks(coverage)
        fused = 1.0 / (RRF_K + lexical_rank)
        similarity = 0.0
        if self.embedder is not None:
            q = self.embedder.embed_queries([question])[0]
            cosine = self.embedder.embed_passages([c[3] for c in candidates]) @ q
            fused = fused + 1.0 / (RRF_K + _ranks(cosine))
            similarity = float(cosine.max())
        passage_rank = {id(h): i for i, h in enumerate(hits)}
        fused = fused + np.array([PASSAGE_PRIOR / (1 + passage_rank[id(c[0])]) for c in candidates])
        order = np.argsort(-fused, kind="stable")[: self.k]
        items = []
        for n, i in enumerate(order, start=1):
            hit, start, end, sentence = candidates[i]
            items.append(Evidence(n, hit, sentence, hit.start + start, hit.start + end, float(fused[i]), float(coverage[i])))
        return EvidenceSet(items, float(coverage.max()), len(candidates), similarity)


def _ranks(values: np.ndarray) -> np.ndarray:
    """1 for the largest value; ties share the better rank."""
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in set(values.tolist()):
        same = values == value
        ranks[same] = ranks[same].min()
    return ranks
