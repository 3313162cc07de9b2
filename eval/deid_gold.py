"""Annotated documents for ``eval.deid``: a document and its gold PHI spans, read from JSONL.

Input: any JSONL with ``{doc_id, patient_id?, text, phi: [{start, end, label}], language?}``. Gold
labels are mapped onto our PHI types in ``finetune.phi_types`` (the one place for label sets); a
bad row names file and line, and all problems are reported together.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune.phi_types import PhiType, gold_type
from rag.corpus import CorpusError, Document, Problem, read_jsonl_objects


@dataclass
class GoldSpan:
    start: int
    end: int
    label: str
    kind: PhiType | None


@dataclass
class GoldDoc:
    document: Document
    gold: list[GoldSpan]


def load_gold(path: Path, scheme: str | None = None) -> list[GoldDoc]:
    """Annotated documents; problems name file and line, and all are reported together."""
    docs: list[GoldDoc] = []
    problems: list[Problem] = []
    for number, row in read_jsonl_objects(path, problems):
        text, phi = row.get("text"), row.get("phi")
        if not isinstance(text, str) or row.get("doc_id") is None:
            problems.append(Problem(str(path), number, "missing_field", "needs 'doc_id' and a string 'text'"))
            continue
        if not isinstance(phi, list):
            problems.append(Problem(str(path), number, "missing_field", "needs a 'phi' list of gold spans"))
            continue
        gold = []
        for item in phi:
            try:
                start, end, label = int(item["start"]), int(item["end"]), str(item["label"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(str(path), number, "malformed", f"bad gold span {item!r:.80}"))
                continue
            if not 0 <= start < end <= len(text):
                problems.append(Problem(str(path), number, "malformed",
                                        f"gold span {start}-{end} outside the text (length {len(text)})"))
                continue
            gold.append(GoldSpan(start, end, label, gold_type(label, text[start:end], scheme)))
        # a corpus without patients (grascco) is scoped per document, as rag.corpus loads it
        doc = Document(doc_id=str(row["doc_id"]), patient_id=str(row.get("patient_id") or row["doc_id"]), text=text,
                       date=row.get("date"), language=row.get("language"))
        docs.append(GoldDoc(doc, gold))
    if problems:
        raise CorpusError(problems, str(path))
    return docs
