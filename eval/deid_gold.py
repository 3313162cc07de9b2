"""Annotated documents for ``eval.deid``: a document and its gold PHI spans, read from JSONL.

Input: any JSONL with ``{doc_id, patient_id?, text, phi: [{start, end, label}], language?}``, or
presidio-research's synthetic PII file (a JSON list of ``{full_text, spans: [{entity_type,
start_position, end_position}], template_id}``; its template stands in for the patient, so a part
split keeps every sentence of a template on one side). Gold labels are mapped onto our PHI types in
``finetune.phi_types`` (the one place for label sets); a bad row names file and line, and all
problems are reported together.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from finetune.phi_types import PhiType, gold_spans
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


def _presidio_rows(path: Path, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    """presidio-research's JSON list as our rows (the item number stands for the line)."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problems.append(Problem(str(path), exc.lineno, "malformed", f"not JSON: {exc.msg}"))
        return
    for number, item in enumerate(items, 1):
        try:
            spans = [{"start": sp["start_position"], "end": sp["end_position"], "label": sp["entity_type"]}
                     for sp in item["spans"]]
            template = item.get("template_id")
            yield number, {"doc_id": f"{template}-{number}", "patient_id": f"template-{template}",
                           "text": item["full_text"], "phi": spans, "language": "en"}
        except (KeyError, TypeError) as exc:
            problems.append(Problem(str(path), number, "missing_field", f"item {number}: needs full_text and "
                                    f"spans with entity_type/start_position/end_position ({exc!r:.60})"))


def is_presidio_file(path: Path) -> bool:
    """A JSON list (presidio-research's format), not JSONL."""
    return Path(path).suffix == ".json"


def load_gold(path: Path, scheme: str | None = None) -> list[GoldDoc]:
    """Annotated documents; problems name file and line, and all are reported together."""
    docs: list[GoldDoc] = []
    problems: list[Problem] = []
    presidio = is_presidio_file(path)
    scheme = scheme or ("presidio" if presidio else None)
    rows = _presidio_rows(path, problems) if presidio else read_jsonl_objects(path, problems)
    for number, row in rows:
        text, phi = row.get("text"), row.get("phi")
        if not isinstance(text, str) or row.get("doc_id") is None:
            problems.append(Problem(str(path), number, "missing_field", "needs 'doc_id' and a string 'text'"))
            continue
        if not isinstance(phi, list):
            problems.append(Problem(str(path), number, "missing_field", "needs a 'phi' list of gold spans"))
            continue
        gold = [GoldSpan(*span) for span in gold_spans(
            phi, text, lambda kind, detail, n=number: problems.append(Problem(str(path), n, kind, detail)), scheme)]
        # a corpus without patients (grascco) is scoped per document, as rag.corpus loads it
        doc = Document(doc_id=str(row["doc_id"]), patient_id=str(row.get("patient_id") or row["doc_id"]), text=text,
                       date=row.get("date"), language=row.get("language"))
        docs.append(GoldDoc(doc, gold))
    if problems:
        raise CorpusError(problems, str(path))
    return docs
