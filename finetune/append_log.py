"""Append-only JSON Lines outputs of resumable stages (QA synthesis, translation).

Why append-only: a long LLM stage must never lose finished work. Each document's rows go out in one
``write`` on an ``O_APPEND`` descriptor, so a kill leaves all of them or none, or at worst one half
line, which :func:`repair_tail` cuts off before the next run reads the file to see what is done.
"""
from __future__ import annotations

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


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The objects of an output file (none if it is missing); bad lines are logged and skipped,
    because an output file is this stage's own record, not user input to reject."""
    if not path.is_file():
        return []
    problems: list[Problem] = []
    rows = [obj for _, obj in read_jsonl_objects(path, problems)]
    for problem in problems:
        log.warning("%s (line skipped)", problem)
    return rows


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """All rows with one write on an O_APPEND descriptor: a kill leaves all of them or none
    (or, at worst, one half line that :func:`repair_tail` cuts off)."""
    if not rows:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)
