"""The index in a Chroma server instead of on disk: same collection, same patient filter inside the query.

A real ``chroma run`` server (the binary chromadb ships) is started on loopback for the test; nothing
is mocked between the index and the server.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.index import ChunkIndex
from rag.retrieve import Scope, make_retriever
from tests.conftest import small_synthea
from tests.doubles import free_port

CHROMA = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")


@pytest.fixture
def chroma_server(tmp_path):
    if CHROMA is None:
        pytest.skip("the chroma CLI (shipped with chromadb) is not on PATH")
    port = free_port()
    proc = subprocess.Popen([CHROMA, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"chroma server did not start (exit {proc.poll()})")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_index_in_a_chroma_server_serves_a_scoped_query(settings, synthea, tiny_embedder, chroma_server):
    corpus = small_synthea(synthea, patients=3, per_patient=6)
    remote = settings.replace(chroma_url=chroma_server)
    index = ChunkIndex(corpus.name, tiny_embedder, remote)
    report = index.sync(corpus.documents, progress=False)
    assert report.chunks_embedded == index.count() > 0
    assert not (Path(remote.store_dir) / "chroma").exists()  # nothing went to the on-disk store

    # a second process's view: a new client sees the same collection and embeds nothing
    again = ChunkIndex(corpus.name, tiny_embedder, remote).sync(corpus.documents, progress=False)
    assert again.chunks_embedded == 0 and not again.changed

    patient = corpus.documents[0].patient_id
    for search in ("store", "exact"):
        hits = make_retriever("dense", index, search=search).retrieve("medications and conditions",
                                                                        Scope.of([patient]), k=10)
        assert hits and {h.patient_id for h in hits} == {patient}, search
    hits = make_retriever("hybrid", index).retrieve("medications", Scope.of([patient]), k=10)
    assert hits and {h.patient_id for h in hits} == {patient}


def test_a_malformed_chroma_url_is_a_clear_error(settings, tiny_embedder):
    index = ChunkIndex("x", tiny_embedder, settings.replace(chroma_url="localhost:8000"))
    with pytest.raises(ValueError, match="chroma_url must look like"):
        index.client
