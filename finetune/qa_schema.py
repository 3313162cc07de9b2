"""What the generator must return for one call, and what one kept QA pair looks like on disk.

Two shapes, kept apart on purpose:

* :func:`generation_schema` is the JSON schema sent as ``response_format`` (llama.cpp and vLLM
  enforce it while decoding). It is small and bounded (``maxItems``, ``maxLength``) because a tiny
  model under a grammar can otherwise loop until ``max_tokens`` and the whole call is lost.
  ``evidence`` comes before ``question`` so the model first copies a quote and then asks about it,
  which keeps small models closer to the text.
* :class:`QARecord` is one line of ``qa.jsonl`` (docs/design.md §3): the contract fields plus the filter
  verdicts that kept the pair, so a reader can re-threshold without regenerating.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.corpus import CorpusError, Problem, read_jsonl_objects

QUESTION_TYPES: tuple[str, ...] = (
    "diagnosis", "medication", "lab_value", "procedure", "finding", "timeline", "history", "plan", "other",
)
LANGUAGES: tuple[str, ...] = ("en", "de")
LANGUAGE_NAMES: dict[str, dict[str, str]] = {
    "en": {"en": "English", "de": "German"},
    "de": {"en": "Englisch", "de": "Deutsch"},
}
MAX_QUESTION_CHARS = 300
MAX_ANSWER_CHARS = 400
MAX_EVIDENCE_CHARS = 400
SCHEMA_NAME = "qa_set"


def generation_schema(n_items: int, evidence_options: Sequence[str] | None = None, *,
                      with_evidence: bool = True) -> dict[str, Any]:
    """The ``response_format`` schema for one call asking for ``n_items`` questions (1..n).

    ``evidence_options`` (the note's sentences, see :func:`evidence_options`) turns ``evidence`` into
    an enum, so a server that enforces the schema can only emit a verbatim quote: small generators
    otherwise paraphrase ("The note states that ...") and most of their items fail the evidence check.
    ``with_evidence`` False leaves ``evidence`` out: anchored calls (``finetune.anchors``) give the
    passage, and copying it back would cost a decoding step per token.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    item = {
        "type": "object",
        "additionalProperties": False,
        "required": ["question_type", "evidence", "question", "answer"],
        "properties": {
            "question_type": {"type": "string", "enum": list(QUESTION_TYPES)},
            "evidence": {"type": "string", "minLength": 3, "maxLength": MAX_EVIDENCE_CHARS,
                         "description": "verbatim quote from the note"},
            "question": {"type": "string", "minLength": 3, "maxLength": MAX_QUESTION_CHARS},
            "answer": {"type": "string", "minLength": 1, "maxLength": MAX_ANSWER_CHARS},
        },
    }
    if not with_evidence:
        item["required"].remove("evidence")
        del item["properties"]["evidence"]
    elif evidence_options:
        item["properties"]["evidence"] = {"type": "string", "enum": list(evidence_options),
                                          "description": "verbatim quote from the note"}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["items"],
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": int(n_items), "items": item}},
    }


ITEM_SCHEMA: dict[str, Any] = generation_schema(1)["properties"]["items"]["items"]

_SENTENCE_END = re.compile(r"(?<=[.!?;])[ \t]+(?=[A-ZÄÖÜ•\-\d(])|\n+")
MAX_EVIDENCE_OPTIONS = 240
MIN_EVIDENCE_CHARS = 12
EVIDENCE_OPTION_CHARS = 300


def evidence_options(text: str) -> list[str]:
    """Verbatim quotable pieces of ``text``: its lines and sentences (>= 12 characters, cut to at
    most 300 at a word boundary), in order, without repeats; at most 240 (grammar size)."""
    out: list[str] = []
    seen: set[str] = set()
    for piece in _SENTENCE_END.split(text):
        piece = " ".join(piece.split()) if "\t" in piece else piece.strip()
        if len(piece) < MIN_EVIDENCE_CHARS or sum(c.isalpha() for c in piece) < 6:
            continue
        if len(piece) > EVIDENCE_OPTION_CHARS:
            cut = piece.rfind(" ", 0, EVIDENCE_OPTION_CHARS)
            piece = piece[: cut if cut > 40 else EVIDENCE_OPTION_CHARS].rstrip()
        if piece not in seen:
            seen.add(piece)
            out.append(piece)
        if len(out) >= MAX_EVIDENCE_OPTIONS:
            break
    return out


@dataclass
class Candidate:
    """One generated item before filtering, with where it came from."""

    doc_id: str
    patient_id: str
    question: str
    answer: str
    evidence: str
    question_type: str
    language: str
    call_index: int
    item_index: int
    focus: str = ""
    style: str = ""
    seed: int = 0
    window: tuple[int, int] | None = None  # (start, end) of the document text the call saw
    raw: Any = None  # the item as the model produced it (for the schema filter)
    verdicts: dict[str, Any] = field(default_factory=dict)  # filled by the filters that passed it

    @property
    def qa_id(self) -> str:
        kind = "a" if self.focus == "anchor" else "q"  # anchored calls number their own questions
        return f"{self.doc_id}#{kind}{self.call_index:02d}{self.item_index:02d}"


@dataclass
class QARecord:
    """One line of ``qa.jsonl`` (docs/design.md §3)."""

    qa_id: str
    doc_id: str
    patient_id: str
    question: str
    answer: str
    evidence: str
    question_type: str
    language: str
    generator: str
    prompt_version: str
    chunk_id: str | None = None
    window: list[int] | None = None
    focus: str = ""
    style: str = ""
    seed: int = 0
    verdicts: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_candidate(cls, cand: Candidate, *, generator: str, prompt_version: str) -> "QARecord":
        return cls(qa_id=cand.qa_id, doc_id=cand.doc_id, patient_id=cand.patient_id, question=cand.question,
                   answer=cand.answer, evidence=cand.evidence, question_type=cand.question_type,
                   language=cand.language, generator=generator, prompt_version=prompt_version,
                   chunk_id=(f"{cand.doc_id}@{cand.window[0]}-{cand.window[1]}" if cand.window else None),
                   window=list(cand.window) if cand.window else None, focus=cand.focus, style=cand.style,
                   seed=cand.seed, verdicts=dict(cand.verdicts))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if out["chunk_id"] is None:
            del out["chunk_id"]
        if out["window"] is None:
            del out["window"]
        return out


def doc_seed(seed: int, doc_id: str, call_index: int) -> int:
    """A fixed per-document, per-call seed: the same run settings give the same requests."""
    digest = hashlib.sha256(f"{seed}\x1f{doc_id}\x1f{call_index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


__all__ = ["Candidate", "ITEM_SCHEMA", "LANGUAGES", "LANGUAGE_NAMES", "QARecord", "QUESTION_TYPES",
           "doc_seed", "evidence_options", "generation_schema"]


def read_qa(path: str | Path, required: Sequence[str] = ("doc_id",)) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a ``qa.jsonl`` with their line numbers. Records missing a ``required`` field and
    malformed lines raise together (:class:`rag.corpus.CorpusError`, each naming file and line)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file not found: {path}")
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    problems: list[Problem] = []
    for number, row in read_jsonl_objects(path, problems):
        missing = [name for name in required if not row.get(name)]
        if missing:
            problems.append(Problem(str(path), number, "missing_field", f"a QA record needs {', '.join(required)}"))
            continue
        rows.append(row)
        lines.append(number)
    if problems:
        raise CorpusError(problems, str(path))
    return rows, lines
