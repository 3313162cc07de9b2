"""Shared fixtures: isolated settings per test, a tiny locally built embedder, the demo corpus, and
``double``: a loopback OpenAI-compatible server (tests/openai_double.py) that each test can switch into
a misbehaviour with ``double.set(mode, **attrs)``. Plain doubles and builders shared by several
modules (scripted generator, list retriever, hits, JSONL rows, a free port) are in tests/doubles.py.

Every test runs with ``CRAG_HOME`` in a temporary folder, so stores, users and audit logs never touch
the developer's ``var/``. The converted me5-small model stays in the normal model cache
(~/.cache/clinical-rag/models): building it costs ~20 s once per machine, not per test run.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import rag  # noqa: F401  (offline environment before anything else loads)
from rag.beir import BeirSet, Query
from rag.config import REPO_ROOT, Settings, load_settings
from tests.doubles import free_port  # noqa: F401  (kept importable from here, as before)
from tests.openai_double import OpenAIDouble

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# tests on the shared data sets (../shared/data) skip where a clone has none beside it
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data sets not found at {SHARED_DATA}")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAG_HOME", str(tmp_path / "crag-home"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "crag-home")


@pytest.fixture
def double():
    """A started OpenAIDouble in mode ``ok`` with its default text; stopped after the test."""
    with OpenAIDouble() as d:
        yield d


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


@pytest.fixture
def tiny_set(synthea) -> BeirSet:
    """48 notes of 4 patients; one query per note = its first long line, relevant = that note
    (and, graded 2, nothing else), so BM25 has a clear answer to find."""
    corpus = small_synthea(synthea, patients=4, per_patient=12)
    queries, qrels = [], {}
    for i, doc in enumerate(corpus.documents[::3]):
        line = max(doc.text.splitlines(), key=len)[:200]
        qid = f"t{i:03d}"
        queries.append(Query(qid, line, doc.patient_id, None, {}))
        qrels[qid] = {doc.doc_id: 1}
    return BeirSet("tiny-synthea", corpus, queries, qrels)
