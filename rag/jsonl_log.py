"""The project's one append-only JSON Lines log: resumable stages (QA synthesis, translation,
pseudonymization), the evaluation caches and the audit log all write and read through here.

Why append-only: long work must never lose what is finished, and an audit trail must never be
rewritten. Rows go out in one ``write`` on an ``O_APPEND`` descriptor, so a kill leaves all of them
or none. The one torn-line policy: a half-written last line (a kill during the write) is cut off by
:func:`repair_tail` before anything is read or appended; any other unreadable line is logged,
skipped and reported by line number, never silently dropped and never a crash.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.corpus import Problem, read_jsonl_objects

log = logging.getLogger(__name__)


def repair_tail(path: Path) -> int:
    """Cut a half-written last line (a kill during a write); returns the bytes removed."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return 0
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                fh.truncate(keep)
                return size - keep
            pos = start
        fh.truncate(0)
        return size


def read_rows(path: Path, skipped: list[int] | None = None) -> list[dict[str, Any]]:
    """The objects of a log (none if it is missing); unreadable lines are logged, skipped and their
    numbers added to ``skipped``, because a log is the program's own record, not user input."""
    if not Path(path).is_file():
        return []
    problems: list[Problem] = []
    rows = [obj for _, obj in read_jsonl_objects(Path(path), problems)]
    for problem in problems:
        log.warning("%s (line skipped)", problem)
        if skipped is not None:
            skipped.append(problem.line)
    return rows


def append_rows(path: Path, rows: Sequence[dict[str, Any]], *, lock: bool = False, fsync: bool = False,
                mode: int = 0o644, compact: bool = False) -> None:
    """All rows with one write on an O_APPEND descriptor: a kill leaves all of them or none
    (or, at worst, one half line that :func:`repair_tail` cuts off). ``lock`` takes an exclusive
    ``flock`` for writers in several processes; ``fsync`` waits until the rows are on disk (the
    audit log: an answer is only shown once its line is). OSError reaches the caller."""
    if not rows:
        return
    separators = (",", ":") if compact else None
    data = "".join(json.dumps(r, ensure_ascii=False, separators=separators) + "\n" for r in rows).encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if fsync:
            os.fsync(fd)
    finally:
        if lock:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
