"""The committed QA sets under data/qa/physionet_deid_dev: what their manifest says is what is there.

Why: results in docs/results.md name these files by manifest key and pair count, and the cpu-demo
preset trains on some of them; a file edited without its manifest (or a training file that gained
a held-out patient) would silently change what those numbers mean.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.presets import COMMITTED_QA, CPU_DEMO
from finetune.qa_schema import read_qa
from rag.manifest import sha256_file

QA_DIR = COMMITTED_QA.parent
MANIFEST = json.loads((QA_DIR / "manifest.json").read_text(encoding="utf-8"))
FILES = {key: entry for key, entry in MANIFEST.items() if isinstance(entry, dict) and "file" in entry}
TRAINING = [key for key in FILES if key.startswith("train")]


def test_every_committed_qa_file_has_a_manifest_entry() -> None:
    listed = {COMMITTED_QA.name} | {entry["file"] for entry in FILES.values()}
    assert sorted(p.name for p in QA_DIR.glob("*.jsonl")) == sorted(listed)


@pytest.mark.parametrize("key", ["held_out", *FILES])
def test_file_matches_its_manifest_entry(key: str) -> None:
    entry = MANIFEST if key == "held_out" else FILES[key]
    path = QA_DIR / (COMMITTED_QA.name if key == "held_out" else entry["file"])
    rows, _ = read_qa(path, required=("qa_id", "doc_id", "patient_id", "question"))
    assert sha256_file(path) == entry["sha256"]
    if "qa_pairs" in entry:
        assert len(rows) == entry["qa_pairs"]
    assert len({r["qa_id"] for r in rows}) == len(rows), "qa_ids must be unique within a file"


def test_training_files_hold_no_held_out_patient_and_no_shared_ids() -> None:
    held_out, _ = read_qa(COMMITTED_QA, required=("patient_id",))
    held_out_patients = {r["patient_id"] for r in held_out}
    seen: set[str] = set()
    for key in TRAINING:
        rows, _ = read_qa(QA_DIR / FILES[key]["file"], required=("qa_id", "patient_id"))
        assert not held_out_patients & {r["patient_id"] for r in rows}, key
        ids = {r["qa_id"] for r in rows}
        assert not seen & ids, f"{key} reuses qa_ids of another training file"
        seen |= ids


def test_cpu_demo_trains_on_committed_files_only() -> None:
    names = {Path(f).name for f in CPU_DEMO.qa_files}
    assert names <= {COMMITTED_QA.name} | {entry["file"] for entry in FILES.values()}
    assert all(Path(f).is_file() for f in CPU_DEMO.qa_files)
