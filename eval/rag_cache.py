"""Append-only JSONL cache for expensive evaluation results (generated answers, judge verdicts).

Why a log and not one JSON file: every finished item is appended at once (``rag.jsonl_log``, the
project's one append log and torn-line policy), so a run
killed half-way keeps everything it finished, and a rerun starts where it stopped. Keys are hashes
of *everything* that determines the result (question, the exact passages, model, prompt version,
decoding limits), so a cached value is only reused where a fresh call would compute the same thing,
and one cache can serve many runs (patient and cross-patient mode share an answer when they
retrieved the same passages).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from rag.jsonl_log import append_rows, read_rows, repair_tail

log = logging.getLogger(__name__)


def cache_key(*parts: Any) -> str:
    """A stable SHA-256 over JSON-serialisable parts (dict key order does not matter)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class JsonlCache:
    """``key -> value`` persisted as one ``{"key", "value"}`` line per entry (last write wins)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.skipped_lines: list[int] = []
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_bytes().count(b"\n")
        if repair_tail(self.path):  # the run died mid-write: that item is simply computed again
            self.skipped_lines.append(lines + 1)
        for row in read_rows(self.path, self.skipped_lines):
            if isinstance(row, dict) and "key" in row:
                self._data[row["key"]] = row.get("value")
        if self.skipped_lines:
            log.warning("%s: ignored %d unreadable line(s) (first: line %d); those items are recomputed",
                        self.path, len(self.skipped_lines), self.skipped_lines[0])

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            append_rows(self.path, [{"key": key, "value": value}])
            self._data[key] = value
