"""Append-only JSONL cache for expensive evaluation results (generated answers, judge verdicts).

Why a log and not one JSON file: every finished item is appended and flushed at once, so a run
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
import os
import threading
from pathlib import Path
from typing import Any

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
        with self.path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # torn last line: end it so the next entry starts clean
                    with self.path.open("a", encoding="utf-8") as out:
                        out.write("\n")
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self._data[row["key"]] = row["value"]
                except (ValueError, KeyError, TypeError):
                    # a line cut off by an interrupted run: the item is simply computed again
                    self.skipped_lines.append(number)
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
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False, allow_nan=True)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8", newline="\n") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._data[key] = value
