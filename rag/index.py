"""Persistent, incremental vector index: LlamaIndex ``VectorStoreIndex`` over a Chroma collection.

One collection per (corpus, embedder, chunking), so switching the embedder never mixes vector spaces.
Re-running on the same corpus embeds nothing again: every chunk carries its document's content hash
and the number of chunks of that document, so a document is re-embedded only when its content
changed or an earlier run was interrupted half-way through it; documents no longer in the corpus
are deleted. Chunks are written batch by batch, so an interrupted run keeps its finished work.

CLI: ``python -m rag.index --corpus synthea --embedder me5-small``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import numpy as np

from rag.chunking import Chunk, ChunkingConfig, chunk_document
from rag.config import Settings, load_settings
from rag.corpus import Corpus, Document, corpus_name, load_corpus
from rag.embedders import get_embedder

if TYPE_CHECKING:
    from rag.embedders import Embedder

log = logging.getLogger(__name__)
EMBED_BATCH = 128  # chunks embedded and written per step: the unit of work an interruption can lose


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def collection_name(corpus: str, embedder: "Embedder", chunking: ChunkingConfig) -> str:
    """Chroma allows [A-Za-z0-9._-], 3-512 chars; a readable prefix plus a hash of the full identity."""
    identity = f"{corpus}|{embedder.name}|{embedder.fingerprint}|{chunking.key()}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return f"{_slug(corpus)[:40]}__{_slug(embedder.name)[:40]}__{digest}"


def index_chunking(embedder: "Embedder", settings: Settings) -> ChunkingConfig:
    """The chunking an index uses for ``embedder``: the configured size, cut to what still fits in
    the model after the passage prefix (a longer chunk would be truncated without notice)."""
    budget = embedder.max_seq_length - embedder.count_tokens(embedder.spec.passage_prefix) - 2
    return ChunkingConfig(max_tokens=min(settings.chunk_tokens, budget), overlap_tokens=settings.chunk_overlap_tokens)


def llama_index_embedding(embedder: "Embedder") -> Any:
    """Our embedder as a LlamaIndex ``BaseEmbedding``, so prefixes stay in the one place that owns them."""
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr

    class _Adapter(BaseEmbedding):
        _embedder: Any = PrivateAttr()

        def __init__(self, inner: "Embedder") -> None:
            super().__init__(model_name=inner.name, embed_batch_size=32)
            self._embedder = inner

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._embedder.embed_queries([query])[0].tolist()

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._embedder.embed_passages([text])[0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._embedder.embed_passages(texts).tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        async def _aget_text_embedding(self, text: str) -> list[float]:
            return self._get_text_embedding(text)

    return _Adapter(embedder)


@dataclass
class SyncReport:
    collection: str
    documents: int = 0
    patients: int = 0
    unchanged_docs: int = 0
    added_docs: int = 0
    updated_docs: int = 0
    removed_docs: int = 0
    chunks_embedded: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added_docs or self.updated_docs or self.removed_docs)

    def summary(self) -> str:
        rate = self.chunks_embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0
        return (
            f"{self.collection}: {self.documents} documents of {self.patients} patients, "
            f"{self.chunks_total} chunks | added {self.added_docs}, updated {self.updated_docs}, "
            f"removed {self.removed_docs}, unchanged {self.unchanged_docs} | embedded "
            f"{self.chunks_embedded} chunks ({rate:.1f} chunks/s) | {self.seconds:.1f} s"
        )


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("chromadb", "llama-index-core", "sentence-transformers", "transformers", "torch"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


class ChunkIndex:
    """The searchable store of one corpus under one embedder."""

    def __init__(
        self,
        corpus_name: str,
        embedder: "Embedder",
        settings: Settings | None = None,
        chunking: ChunkingConfig | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.corpus_name = corpus_name
        self.embedder = embedder
        self.chunking = chunking or index_chunking(embedder, self.settings)
        self.name = collection_name(corpus_name, embedder, self.chunking)
        self.store_dir = Path(self.settings.store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)

    # --- storage -------------------------------------------------------------------------------
    @cached_property
    def client(self) -> Any:
        """The on-disk store, or a Chroma server when ``settings.chroma_url`` names one: the collection, the
        patient filter inside its query and everything above it are the same either way."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        if self.settings.chroma_url:
            url = urlsplit(self.settings.chroma_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"chroma_url must look like http://host:8000, got {self.settings.chroma_url!r}")
            return chromadb.HttpClient(host=url.hostname, port=url.port or (443 if url.scheme == "https" else 8000),
                                       ssl=url.scheme == "https", settings=chroma_settings)
        return chromadb.PersistentClient(path=str(self.store_dir / "chroma"), settings=chroma_settings)

    @cached_property
    def collection(self) -> Any:
        return self.client.get_or_create_collection(
            self.name,
            embedding_function=None,  # Chroma's default would download a model
            metadata={"hnsw:space": "cosine", "corpus": self.corpus_name, "embedder": self.embedder.name},
        )

    @cached_property
    def vector_store(self) -> Any:
        from llama_index.vector_stores.chroma import ChromaVectorStore

        return ChromaVectorStore(chroma_collection=self.collection)

    @cached_property
    def llama_index(self) -> Any:
        from llama_index.core import VectorStoreIndex

        return VectorStoreIndex.from_vector_store(self.vector_store, embed_model=llama_index_embedding(self.embedder))

    @property
    def manifest_path(self) -> Path:
        return self.store_dir / "manifests" / f"{self.name}.json"

    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def count(self) -> int:
        return self.collection.count()

    def all_chunks(self) -> tuple[list[str], list[str], list[dict]]:
        """(ids, texts, metadatas) of every stored chunk, paged (Chroma caps one ``get``)."""
        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict] = []
        total, page = self.collection.count(), 5000
        for offset in range(0, total, page):
            got = self.collection.get(include=["documents", "metadatas"], limit=page, offset=offset)
            ids += got["ids"]
            texts += got["documents"]
            metas += got["metadatas"]
        return ids, texts, metas

    # ---- what search reads (rag.retrieve): the stored chunks, their vectors, a lexical index, a
    # scoped store query. Cached per index and reloaded when the collection changes (chunk count or
    # manifest written by another sync), so every retriever of an index shares one copy.

    def stamp(self) -> tuple[int, int]:
        path = self.manifest_path
        return self.collection.count(), (path.stat().st_mtime_ns if path.is_file() else 0)

    def stored(self) -> "StoredChunks":
        """Every chunk with its vector, in a fixed order (the very vectors the store holds)."""
        cached = self.__dict__.get("_stored")
        if cached is None or cached.stamp != self.stamp():
            cached = self.__dict__["_stored"] = StoredChunks.load(self)
        return cached

    def lexical(self, stopwords: str = "en") -> "LexicalIndex":
        """A BM25 index (``bm25s``) over the same chunks, built once per collection state."""
        key = f"_lexical_{stopwords}"
        cached = self.__dict__.get(key)
        if cached is None or cached.stamp != self.stamp():
            cached = self.__dict__[key] = LexicalIndex(self, stopwords)
        return cached

    def count_in_scope(self, patients: Sequence[str] | None) -> int:
        """Chunks of these patients in the store (all chunks for ``None``)."""
        if patients is None:
            return self.count()
        where = {"patient_id": patients[0]} if len(patients) == 1 else {"patient_id": {"$in": list(patients)}}
        return len(self.collection.get(where=where, include=[])["ids"]) if patients else 0

    def store_query(self, vector: Sequence[float], patients: Sequence[str] | None, k: int) -> list[tuple[str, str, dict, float]]:
        """The store's own (HNSW) nearest chunks, the patient filter inside the query as its ``where``:
        (chunk id, text, metadata, cosine) best first."""
        from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters
        from llama_index.core.vector_stores.types import VectorStoreQuery

        filters = None
        if patients is not None:
            if len(patients) == 1:
                flt = MetadataFilter(key="patient_id", value=patients[0], operator=FilterOperator.EQ)
            else:
                flt = MetadataFilter(key="patient_id", value=list(patients), operator=FilterOperator.IN)
            filters = MetadataFilters(filters=[flt])
        result = self.vector_store.query(VectorStoreQuery(query_embedding=list(vector), similarity_top_k=k,
                                                          filters=filters))
        out = []
        for node, sim in zip(result.nodes, result.similarities):
            cosine = 1.0 + math.log(sim) if sim > 0 else -1.0  # the store reports exp(-cosine distance)
            out.append((node.node_id, node.get_content(), node.metadata, cosine))
        return out

    def _stored_state(self) -> dict[str, tuple[str, int, int]]:
        """doc_id -> (doc_hash, chunks stored, chunks expected)."""
        state: dict[str, list] = {}
        total, page = self.collection.count(), 5000
        for offset in range(0, total, page):
            got = self.collection.get(include=["metadatas"], limit=page, offset=offset)
            for meta in got["metadatas"]:
                entry = state.setdefault(meta["doc_id"], [meta.get("doc_hash", ""), 0, int(meta.get("n_chunks", -1))])
                entry[1] += 1
        return {k: (v[0], v[1], v[2]) for k, v in state.items()}

    def _delete_docs(self, doc_ids: Sequence[str]) -> None:
        for i in range(0, len(doc_ids), 500):
            self.collection.delete(where={"doc_id": {"$in": list(doc_ids[i : i + 500])}})

    # --- building ------------------------------------------------------------------------------
    def _nodes(self, chunks: Sequence[Chunk], n_chunks: dict[str, int], vectors: Any) -> list[Any]:
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        nodes = []
        for chunk, vec in zip(chunks, vectors):
            meta = chunk.store_metadata()
            meta["n_chunks"] = n_chunks[chunk.doc_id]
            nodes.append(
                TextNode(
                    id_=chunk.chunk_id,
                    text=chunk.text,
                    metadata=meta,
                    embedding=vec.tolist(),
                    start_char_idx=chunk.start,
                    end_char_idx=chunk.end,
                    excluded_embed_metadata_keys=list(meta),
                    excluded_llm_metadata_keys=list(meta),
                    # LlamaIndex writes ref_doc_id into the stored "doc_id" key: make it our document id
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.doc_id)},
                )
            )
        return nodes

    def sync(self, documents: Sequence[Document], progress: bool = True) -> SyncReport:
        """Make the collection hold exactly ``documents``; embed only what is new or changed."""
        t0 = time.perf_counter()
        report, chunks, n_chunks = self._plan(documents)
        if chunks:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(chunks), unit="chunk", desc=f"embedding {self.corpus_name}", disable=not progress)
            for i in range(0, len(chunks), EMBED_BATCH):
                batch = chunks[i : i + EMBED_BATCH]
                te = time.perf_counter()
                vectors = self.embedder.embed_passages([c.text for c in batch], show_progress=False)
                report.embed_seconds += time.perf_counter() - te
                self.llama_index.insert_nodes(self._nodes(batch, n_chunks, vectors))
                report.chunks_embedded += len(batch)
                bar.update(len(batch))
            bar.close()
        return self._finish(documents, report, t0)

    def sync_with(self, documents: Sequence[Document], embed_chunks: Callable[[list[Chunk]], np.ndarray]) -> SyncReport:
        """:meth:`sync` with the vectors computed elsewhere: ``embed_chunks`` gets every chunk to (re-)embed
        at once and returns their vectors in that order.

        The batch entry point for a parallel engine (``finetune.engine`` spreads the chunks over Ray
        workers): the store is still planned, written batch by batch and described in the manifest here,
        so an index built either way has the same collection, chunk ids, metadata and manifest."""
        t0 = time.perf_counter()
        report, chunks, n_chunks = self._plan(documents)
        if chunks:
            te = time.perf_counter()
            vectors = np.asarray(embed_chunks(chunks), dtype=np.float32)
            report.embed_seconds = time.perf_counter() - te
            if vectors.shape[0] != len(chunks):
                raise ValueError(f"embed_chunks returned {vectors.shape[0]} vectors for {len(chunks)} chunks")
            for i in range(0, len(chunks), EMBED_BATCH):
                self.llama_index.insert_nodes(self._nodes(chunks[i: i + EMBED_BATCH], n_chunks,
                                                          vectors[i: i + EMBED_BATCH]))
                report.chunks_embedded += len(chunks[i: i + EMBED_BATCH])
        return self._finish(documents, report, t0)

    def _plan(self, documents: Sequence[Document]) -> tuple[SyncReport, list[Chunk], dict[str, int]]:
        """Compare ``documents`` with the store, delete what is gone or changed, and chunk what must be
        (re-)embedded; returns the report so far, those chunks and the chunk count per document."""
        report = SyncReport(collection=self.name, documents=len(documents))
        report.patients = len({d.patient_id for d in documents})
        stored = self._stored_state()
        wanted = {d.doc_id for d in documents}
        removed = [doc_id for doc_id in stored if doc_id not in wanted]
        todo: list[Document] = []
        for doc in documents:
            state = stored.get(doc.doc_id)
            if state is None:
                report.added_docs += 1
                todo.append(doc)
            elif state[0] != doc.content_hash() or state[1] != state[2]:
                report.updated_docs += 1
                todo.append(doc)
            else:
                report.unchanged_docs += 1
        report.removed_docs = len(removed)
        self._delete_docs(removed + [d.doc_id for d in todo if d.doc_id in stored])
        chunks = [c for doc in todo for c in chunk_document(doc, self.embedder.token_offsets, self.chunking)]
        n_chunks: dict[str, int] = {}
        for c in chunks:
            n_chunks[c.doc_id] = n_chunks.get(c.doc_id, 0) + 1
        return report, chunks, n_chunks

    def _finish(self, documents: Sequence[Document], report: SyncReport, t0: float) -> SyncReport:
        report.chunks_total = self.count()
        report.seconds = time.perf_counter() - t0
        self._write_manifest(documents, report)
        return report

    def _write_manifest(self, documents: Sequence[Document], report: SyncReport) -> None:
        corpus_hash = hashlib.sha256(
            "".join(sorted(f"{d.doc_id}:{d.content_hash()}\n" for d in documents)).encode()
        ).hexdigest()
        manifest = {
            "collection": self.name,
            "corpus": self.corpus_name,
            "corpus_hash": corpus_hash,
            "embedder": {
                "name": self.embedder.name,
                "label": self.embedder.label,
                "fingerprint": self.embedder.fingerprint,
                "dim": self.embedder.dim,
            },
            "chunking": asdict(self.chunking),
            "counts": {"documents": report.documents, "patients": report.patients, "chunks": report.chunks_total},
            "last_sync": {k: v for k, v in asdict(report).items() if k != "collection"},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        tmp.replace(self.manifest_path)


class StoredChunks:
    """Every chunk vector of one index, normalised, in a fixed order, with rows per patient.

    Loaded from the Chroma collection itself (the very vectors the store holds), sorted by chunk id
    so the order does not depend on the store's paging."""

    def __init__(self, stamp: tuple[int, int], ids: list[str], texts: list[str], metas: list[dict],
                 matrix: np.ndarray) -> None:
        self.stamp, self.ids, self.texts, self.metas = stamp, ids, texts, metas
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.matrix = matrix / np.where(norms == 0, 1, norms)
        self.rows_by_patient: dict[str, list[int]] = {}
        for row, meta in enumerate(metas):
            self.rows_by_patient.setdefault(meta["patient_id"], []).append(row)

    @classmethod
    def load(cls, index: ChunkIndex) -> "StoredChunks":
        stamp = index.stamp()
        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict] = []
        blocks: list[np.ndarray] = []
        total, page = index.collection.count(), 5000
        for offset in range(0, total, page):
            got = index.collection.get(include=["documents", "metadatas", "embeddings"], limit=page, offset=offset)
            ids += got["ids"]
            texts += got["documents"]
            metas += got["metadatas"]
            blocks.append(np.asarray(got["embeddings"], dtype=np.float32))
        order = sorted(range(len(ids)), key=ids.__getitem__)
        matrix = np.concatenate(blocks)[order] if blocks else np.zeros((0, index.embedder.dim), dtype=np.float32)
        return cls(stamp, [ids[i] for i in order], [texts[i] for i in order], [metas[i] for i in order], matrix)

    def rows(self, patients: Sequence[str] | None) -> np.ndarray:
        """Row numbers of the chunks in scope (all of them for ``None``)."""
        if patients is None:
            return np.arange(len(self.ids))
        return np.array(sorted(r for p in patients for r in self.rows_by_patient.get(p, [])), dtype=int)


class Bm25:
    """BM25 (``bm25s``, English stemming, a stop-word list) over a list of texts: the one tokenizer
    the index's lexical search and anything that must score like it (``finetune.distill``) share."""

    def __init__(self, texts: Sequence[str], stopwords: str = "en") -> None:
        import bm25s
        import Stemmer

        self.stopwords = stopwords
        self.stemmer = Stemmer.Stemmer("english")
        self.model = bm25s.BM25()
        if texts:
            tokens = bm25s.tokenize(list(texts), stopwords=stopwords, stemmer=self.stemmer, show_progress=False)
            self.model.index(tokens, show_progress=False)

    def scores(self, query: str, mask: np.ndarray | None = None) -> np.ndarray | None:
        """BM25 score of every text (0 outside the mask); None when no query term is in the texts."""
        import bm25s

        tokens = bm25s.tokenize([query], stopwords=self.stopwords, stemmer=self.stemmer, return_ids=False,
                                show_progress=False)[0]
        token_ids = self.model.get_tokens_ids(list(tokens))
        if not token_ids:
            return None
        return self.model.get_scores_from_ids(token_ids, weight_mask=mask)


class LexicalIndex:
    """BM25 over one index's chunks; a scope is a weight mask applied before top-k, so the filter
    is inside the scoring, never after it."""

    def __init__(self, index: ChunkIndex, stopwords: str = "en") -> None:
        self.stamp = index.stamp()
        self.ids, self.texts, self.metas = index.all_chunks()
        self.rows_by_patient: dict[str, list[int]] = {}
        for row, meta in enumerate(self.metas):
            self.rows_by_patient.setdefault(meta["patient_id"], []).append(row)
        self.bm25 = Bm25(self.texts, stopwords)

    def mask(self, patients: Sequence[str] | None) -> np.ndarray | None:
        if patients is None:
            return None
        mask = np.zeros(len(self.ids), dtype=np.float32)
        for pid in patients:
            mask[self.rows_by_patient.get(pid, [])] = 1.0
        return mask

    def scores(self, query: str, mask: np.ndarray | None) -> np.ndarray | None:
        """BM25 score of every chunk (0 outside the mask); None when no query term is in the corpus."""
        return self.bm25.scores(query, mask)


def open_index(
    corpus: str, embedder: str | None = None, settings: Settings | None = None, device: str | None = None
) -> ChunkIndex:
    """The index of ``corpus`` (a registered name or the path it was built from) for ``embedder``."""
    settings = settings or load_settings()
    emb = get_embedder(embedder or settings.embedder, settings=settings, device=device or settings.device)
    return ChunkIndex(corpus_name(corpus), emb, settings)


def build_index(
    corpus: str | Corpus,
    embedder: str | None = None,
    settings: Settings | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[ChunkIndex, SyncReport]:
    """Load ``corpus`` (a name, a path or a loaded Corpus) and bring its index up to date."""
    settings = settings or load_settings()
    loaded = corpus if isinstance(corpus, Corpus) else load_corpus(corpus, settings, limit=limit)
    index = open_index(loaded.name, embedder, settings)
    return index, index.sync(loaded.documents, progress=progress)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rag.index", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=None, help="named corpus or path (.jsonl/.csv/folder); default from config")
    parser.add_argument("--embedder", default=None, help="registry name or a local sentence-transformers folder")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings()
    t0 = time.perf_counter()
    index, report = build_index(args.corpus or settings.corpus, args.embedder, settings, args.limit, not args.quiet)
    print(report.summary())
    print(f"store: {index.store_dir / 'chroma'}  manifest: {index.manifest_path}")
    print(f"embedder: {index.embedder.label}  total time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
