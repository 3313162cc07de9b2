"""The persistent index: build, reopen from disk, no-op re-run, update, delete, resume."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from rag.config import REPO_ROOT
from rag.index import ChunkIndex, build_index, open_index
from tests.conftest import small_synthea


def test_build_reopen_noop_update_delete(settings, synthea, tiny_embedder):
    corpus = small_synthea(synthea)
    index = ChunkIndex(corpus.name, tiny_embedder, settings)
    first = index.sync(corpus.documents, progress=False)
    assert first.added_docs == len(corpus.documents)
    assert first.chunks_embedded == first.chunks_total == index.count() > len(corpus.documents) // 2
    manifest = index.manifest()
    assert manifest["counts"] == {"documents": len(corpus.documents), "patients": 4, "chunks": first.chunks_total}
    assert manifest["embedder"]["name"] == tiny_embedder.name and len(manifest["corpus_hash"]) == 64

    # a fresh object (new Chroma client) sees the same store on disk, and a re-run embeds nothing
    reopened = ChunkIndex(corpus.name, tiny_embedder, settings)
    assert reopened.count() == first.chunks_total
    again = reopened.sync(corpus.documents, progress=False)
    assert again.chunks_embedded == 0 and not again.changed
    assert again.unchanged_docs == len(corpus.documents)

    # one document changed, one removed
    docs = list(corpus.documents)
    docs[0] = dataclasses.replace(docs[0], text=docs[0].text + "\nAddendum: started metformin 500 mg.")
    removed = docs.pop(1)
    upd = reopened.sync(docs, progress=False)
    assert (upd.updated_docs, upd.removed_docs, upd.added_docs) == (1, 1, 0)
    assert 0 < upd.chunks_embedded <= 5
    stored_docs = {m["doc_id"] for m in reopened.collection.get(include=["metadatas"])["metadatas"]}
    assert removed.doc_id not in stored_docs and docs[0].doc_id in stored_docs
    addendum = reopened.collection.get(where={"doc_id": docs[0].doc_id}, include=["documents"])["documents"]
    assert any("Addendum" in t for t in addendum)


def test_interrupted_document_is_redone(settings, synthea, tiny_embedder):
    corpus = small_synthea(synthea, patients=2, per_patient=5)
    index = ChunkIndex(corpus.name, tiny_embedder, settings)
    index.sync(corpus.documents, progress=False)
    # simulate a crash half-way through a document: one of its chunks never made it to the store
    big = max(corpus.documents, key=lambda d: len(d.text))
    chunk_ids = index.collection.get(where={"doc_id": big.doc_id})["ids"]
    assert len(chunk_ids) >= 2
    index.collection.delete(ids=chunk_ids[-1:])
    report = index.sync(corpus.documents, progress=False)
    assert report.updated_docs == 1 and report.chunks_embedded == len(chunk_ids)
    assert len(index.collection.get(where={"doc_id": big.doc_id})["ids"]) == len(chunk_ids)


def test_collections_are_separate_per_embedder(settings, synthea, tiny_embedder):
    corpus = small_synthea(synthea, patients=1, per_patient=3)
    a = ChunkIndex(corpus.name, tiny_embedder, settings)
    b = ChunkIndex(corpus.name, tiny_embedder, settings.replace(chunk_tokens=64))
    assert a.name != b.name  # the chunking is part of the collection's identity too


def test_index_and_search_cli(tmp_path, tiny_model_dir):
    """The issue's acceptance path: rag.index, then a patient-scoped rag.search --json."""
    env = {**__import__("os").environ, "CRAG_HOME": str(tmp_path / "home")}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    built = run("-m", "rag.index", "--corpus", "synthea", "--embedder", str(tiny_model_dir), "--limit", "80", "--quiet")
    assert built.returncode == 0, built.stderr
    assert "added 80" in built.stdout
    again = run("-m", "rag.index", "--corpus", "synthea", "--embedder", str(tiny_model_dir), "--limit", "80", "--quiet")
    assert "embedded 0 chunks" in again.stdout and "unchanged 80" in again.stdout

    patient = "129c6ac7-8d06-89de-ad63-0204a93e76c3"
    for retriever in ("dense", "bm25", "hybrid"):
        found = run("-m", "rag.search", "metformin medications", "--corpus", "synthea", "--embedder", str(tiny_model_dir),
                    "--patient", patient, "--retriever", retriever, "--json")
        assert found.returncode == 0, found.stderr
        result = json.loads(found.stdout)
        assert result["hits"], retriever
        for hit in result["hits"]:
            assert hit["patient_id"] == patient
            assert hit["doc_id"] and hit["date"] and hit["doc_type"]
            assert 0 <= hit["start"] < hit["end"]


def test_an_index_built_from_a_path_reopens_from_the_same_path(tmp_path, settings, synthea, tiny_model_dir):
    """``rag.index --corpus notes.jsonl`` then ``rag.search --corpus notes.jsonl`` must find the same index."""
    notes = tmp_path / "my notes.jsonl"
    notes.write_text("".join(json.dumps(d.to_json()) + "\n" for d in small_synthea(synthea, patients=1).documents))
    built, _ = build_index(str(notes), str(tiny_model_dir), settings, progress=False)
    reopened = open_index(str(notes), str(tiny_model_dir), settings)
    assert reopened.name == built.name and reopened.count() == built.count() > 0
