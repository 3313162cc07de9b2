"""Indexing throughput and query latency of the index, run by hand (not part of the tests).

    .venv/bin/python bench/index_search.py [--embedder me5-small] [--docs 400] [--queries 100]

Measures, in one process on the same chunks:
- indexing throughput (chunks/s) of ``ChunkIndex.sync`` (chunking + embedding + Chroma writes) against
  a plain sentence-transformers ``encode`` of the same chunk texts (target ratio >= 0.9);
- query latency p50/p95, patient-scoped and unscoped, over synthea + an mtsamples slice, for the store
  query alone (dense, query vector precomputed; target p95 < 50 ms), for BM25 and hybrid, and the
  query encoding time on its own;
- peak memory (max RSS).
Writes bench/out/index_search.json and .png and prints a table.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.chunking import chunk_document  # noqa: E402
from rag.config import load_settings  # noqa: E402
from rag.corpus import Corpus, load_corpus  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embedder", default="me5-small")
    ap.add_argument("--docs", type=int, default=400, help="documents embedded for the throughput comparison")
    ap.add_argument("--mtsamples", type=int, default=300, help="mtsamples documents added for the latency corpus")
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()

    from rag.embedders import get_embedder
    from rag.index import ChunkIndex
    from rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever, Scope

    home = Path(tempfile.mkdtemp(prefix="crag-bench-"))
    settings = load_settings(home=home)
    embedder = get_embedder(args.embedder, settings)
    synthea = load_corpus("synthea", settings)
    mts = load_corpus("mtsamples", settings, limit=args.mtsamples)
    rng = random.Random(0)
    docs = synthea.documents + mts.documents
    corpus = Corpus("synthea+mtsamples", docs, [], "native", "bench")
    index = ChunkIndex(corpus.name, embedder, settings)

    # 1. throughput: index a sample of documents, then encode exactly the same chunk texts plainly
    sample = rng.sample(docs, min(args.docs, len(docs)))
    chunks = [c for d in sample for c in chunk_document(d, embedder.token_offsets, index.chunking)]
    texts = [embedder.spec.passage_prefix + c.text for c in chunks]
    t0 = time.perf_counter()
    report = index.sync(sample, progress=True)
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedder.model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=True)
    t_plain = time.perf_counter() - t0
    idx_rate, plain_rate = report.chunks_embedded / t_index, len(texts) / t_plain

    # 2. latency: the whole synthea + mtsamples slice indexed
    index.sync(docs, progress=True)
    qrels = [json.loads(x) for x in (settings.demo_data_dir / "synthea/qrels_condition_diagnosis.jsonl").open()]
    picked = rng.sample(qrels, min(args.queries, len(qrels)))
    t0 = time.perf_counter()
    vectors = embedder.embed_queries([q["query"] for q in picked])
    encode_each = [(time.perf_counter() - t0) / len(picked)]
    single = []
    for q in picked[:30]:
        t = time.perf_counter()
        embedder.embed_queries([q["query"]])
        single.append(time.perf_counter() - t)
    dense, bm25 = DenseRetriever(index), BM25Retriever(index)
    hybrid = HybridRetriever(dense, bm25)
    lat: dict[str, list[float]] = {k: [] for k in ("dense scoped", "dense all", "bm25 scoped", "bm25 all", "hybrid scoped", "hybrid all")}
    for q, vec in zip(picked, vectors):
        for scope, tag in ((Scope.patient(q["patient_id"]), "scoped"), (Scope.all(), "all")):
            t = time.perf_counter(); dense.retrieve_by_vector(vec.tolist(), scope, 10); lat[f"dense {tag}"].append(time.perf_counter() - t)
            t = time.perf_counter(); bm25.retrieve(q["query"], scope, 10); lat[f"bm25 {tag}"].append(time.perf_counter() - t)
            t = time.perf_counter(); hybrid.retrieve(q["query"], scope, 10); lat[f"hybrid {tag}"].append(time.perf_counter() - t)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "embedder": embedder.label,
        "corpus": {"documents": len(docs), "chunks": index.count(), "synthea": len(synthea), "mtsamples": len(mts)},
        "throughput": {
            "chunks": len(texts), "index_chunks_per_s": idx_rate, "plain_encode_chunks_per_s": plain_rate,
            "ratio": idx_rate / plain_rate, "index_s": t_index, "plain_s": t_plain,
        },
        "query_encode_ms": {"batched_mean": encode_each[0] * 1000, "single_p50": pct(single, 50), "single_p95": pct(single, 95)},
        "latency_ms": {k: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)} for k, v in lat.items()},
        "peak_rss_mb": peak_mb,
        "note": "dense latencies exclude query encoding (vector precomputed); bm25/hybrid include their own work; hybrid includes one query encoding",
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "index_search.json").write_text(json.dumps(result, indent=2))

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"index/search benchmark - {embedder.label} - {result['corpus']}")
    t.add_column("measure"); t.add_column("value", justify="right")
    t.add_row("index sync chunks/s", f"{idx_rate:.1f}")
    t.add_row("plain encode chunks/s", f"{plain_rate:.1f}")
    t.add_row("ratio (target >= 0.9)", f"{idx_rate / plain_rate:.2f}")
    t.add_row("query encode single p50/p95 ms", f"{pct(single, 50):.1f} / {pct(single, 95):.1f}")
    for k, v in result["latency_ms"].items():
        t.add_row(f"{k} p50/p95 ms", f"{v['p50']:.1f} / {v['p95']:.1f}")
    t.add_row("peak RSS MB", f"{peak_mb:.0f}")
    Console().print(t)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(lat)
    ax.bar([n + " p50" for n in names], [pct(lat[n], 50) for n in names], color="#4c78a8")
    ax.bar([n + " p95" for n in names], [pct(lat[n], 95) for n in names], color="#f58518")
    ax.axhline(50, color="red", linestyle="--", linewidth=1, label="50 ms target")
    ax.set_ylabel("ms per query"); ax.set_title(f"Query latency, {result['corpus']['chunks']} chunks, {embedder.name}")
    ax.tick_params(axis="x", rotation=70, labelsize=7); ax.legend()
    fig.tight_layout(); fig.savefig(OUT / "index_search.png", dpi=120)
    print(f"wrote {OUT / 'index_search.json'} and {OUT / 'index_search.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
