"""Finished (model, scope, set) runs of ``eval.ir`` on disk, keyed by everything that decides them, so a
rerun or an interrupted evaluation reuses them instead of ranking again."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from rag.beir import BeirSet

# --------------------------------------------------------------------------------------------
# Caching finished runs


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def set_fingerprint(beir: BeirSet) -> str:
    """Identity of corpus content + queries + judgments: a stored run is reused only for the same set."""
    docs = sorted(f"{d.doc_id}:{d.content_hash()}" for d in beir.corpus.documents)
    queries = [[q.query_id, q.text, q.patient_id] for q in beir.queries]
    return digest({"corpus": docs, "queries": queries, "qrels": beir.qrels})[:16]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "model"


def load_run(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return data if data.get("key") == key else None
