"""Shared fixtures: isolated settings per test, a tiny locally built embedder, the demo corpus.

Every test runs with ``CRAG_HOME`` in a temporary folder, so stores, users and audit logs never touch
the developer's ``var/``. The converted me5-small model stays in the normal model cache
(~/.cache/clinical-rag/models): building it costs ~20 s once per machine, not per test run.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import rag  # noqa: F401  (offline environment before anything else loads)
from rag.config import REPO_ROOT, Settings, load_settings

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# tests on the shared data sets (../shared/data) skip where a clone has none beside it
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data sets not found at {SHARED_DATA}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAG_HOME", str(tmp_path / "crag-home"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "crag-home")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rag.corpus import load_corpus
    from tests.tiny_models import build_tiny_st

    texts = [d.text for d in load_corpus("synthea").documents[:300]]
    return build_tiny_st(tmp_path_factory.mktemp("tiny-st") / "model", corpus=texts)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):
    from rag.embedders import get_embedder

    return get_embedder(str(tiny_model_dir))


@pytest.fixture(scope="session")
def synthea():
    from rag.corpus import load_corpus

    return load_corpus("synthea")


def small_synthea(corpus, patients: int = 4, per_patient: int = 12):
    """A few patients with a dozen notes each: enough for scope tests, fast to embed."""
    from rag.corpus import Corpus

    chosen = corpus.patients()[:patients]
    docs = []
    for pid in chosen:
        docs += [d for d in corpus.documents if d.patient_id == pid][:per_patient]
    return Corpus(name="synthea-small", documents=docs, problems=[], patient_structure="native", source="synthea")
