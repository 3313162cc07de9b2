"""Append-only audit log of the chat app: one JSON line per question.

A line records who asked, in which scope, through which retriever, embedder and generator, which
chunks were retrieved (ids with a SHA-256 of each chunk's text, so a later reader can prove what was
shown without the log holding it), which passages were cited, a hash of the answer and the timings.
By default the line holds **no clinical text**: no question, no answer, no chunk text. With
``settings.audit_include_text`` the question and the answer are added (for sites whose policy
wants them and whose log storage is protected like the record itself).

Writing is fail-closed: the app checks the log is writable before it retrieves anything
(:func:`check_writable`) and writes the line before it shows sources; if either fails, the user sees
an error instead of the answer. Lines are appended with ``O_APPEND`` under an exclusive ``fcntl``
lock, in a single ``write``; the folder is created with mode 0700 and the file with 0600.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from rag.jsonl_log import append_rows, read_rows, repair_tail

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.retrieve import Hit, Scope

SCHEMA_VERSION = 1


class AuditError(RuntimeError):
    """The audit line could not be written; the answer must not be shown."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def scope_json(scope: "Scope | None") -> str | list[str] | None:
    if scope is None:
        return None
    return "all" if scope.patients is None else list(scope.patients)


def retrieved_json(hits: Iterable["Hit"]) -> list[dict[str, Any]]:
    return [
        {
            "rank": h.rank,
            "chunk_id": h.chunk_id,
            "doc_id": h.doc_id,
            "patient_id": h.patient_id,
            "sha256": sha256_text(h.text),
        }
        for h in hits
    ]


def build_record(
    *,
    user: str,
    selected_patient: str | None,
    scope: "Scope | None",
    answer: "Answer | None" = None,
    question: str | None = None,
    retriever: str | None = None,
    embedder: str | None = None,
    generator: str | None = None,
    outcome: str = "answered",
    error: str | None = None,
    include_text: bool = False,
    requested_scope: "Scope | None" = None,
) -> dict[str, Any]:
    """One audit line. ``answer`` supplies everything it knows; the keywords fill in where it is None
    (a question that failed before an answer existed is still logged, with ``outcome="error"``)."""
    record: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "time": now_iso(),
        "user": user,
        "outcome": outcome,
        "scope": scope_json(answer.scope if answer is not None else scope),
        "selected_patient": selected_patient,
        "retriever": answer.retriever if answer is not None else retriever,
        "embedder": answer.embedder if answer is not None else embedder,
        "generator": answer.generator if answer is not None else generator,
        "retrieved": retrieved_json(answer.passages) if answer is not None else [],
        "cited": [c.n for c in answer.citations] if answer is not None else [],
        "citation_sources": {str(c.n): c.source for c in answer.citations} if answer is not None else {},
        "answer_hash": answer.answer_hash() if answer is not None else None,
        "answer_path": getattr(answer, "path", None) if answer is not None else None,
        "evidence": [[e.hit.chunk_id, e.start, e.end] for e in getattr(answer, "evidence", [])]
        if answer is not None else [],
        "unsupported_dropped": len(getattr(answer, "dropped", [])) if answer is not None else 0,
        "timings": {k: round(float(v), 4) for k, v in (answer.timings if answer is not None else {}).items()},
    }
    if requested_scope is not None:
        record["requested_scope"] = scope_json(requested_scope)
    if answer is not None and getattr(answer, "prompt_version", None):
        record["prompt_version"] = answer.prompt_version
    if error:
        record["error"] = error  # an exception class name, never its message (it may quote text)
    if include_text:
        record["question"] = question if question is not None else (answer.question if answer is not None else None)
        record["answer"] = answer.text if answer is not None else None
    return record


def _open_for_append(path: Path) -> int:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one line (``rag.jsonl_log``: O_APPEND, exclusive lock, one write, fsync, mode 0600);
    AuditError on failure, so the caller withholds the answer."""
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        repair_tail(path)
        append_rows(path, [record], lock=True, fsync=True, mode=0o600, compact=True)
    except OSError as exc:
        raise AuditError(f"cannot write audit log {path}: {exc.strerror or exc}") from exc


def check_writable(path: str | Path) -> None:
    """Raise AuditError now if a line could not be appended later (run before any retrieval)."""
    path = Path(path)
    try:
        fd = _open_for_append(path)
    except OSError as exc:
        raise AuditError(f"cannot open audit log {path}: {exc.strerror or exc}") from exc
    os.close(fd)


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """Every line of the log, parsed (for tests and reviews)."""
    return read_rows(Path(path))


class AuditLog:
    """The app's handle on its log: the path and whether question/answer text is included."""

    def __init__(self, path: str | Path, include_text: bool = False) -> None:
        self.path = Path(path)
        self.include_text = include_text

    @classmethod
    def from_settings(cls, settings: Any) -> "AuditLog":
        return cls(settings.audit_log, bool(settings.audit_include_text))

    def check(self) -> None:
        check_writable(self.path)

    def record(self, **fields: Any) -> dict[str, Any]:
        record = build_record(include_text=self.include_text, **fields)
        append_record(self.path, record)
        return record
