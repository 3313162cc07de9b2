"""Dense search latency: exact (the default up to EXACT_MAX_CHUNKS) against Chroma's HNSW, on an existing index.

Run after `python -m rag.index --corpus synthea --embedder me5-small` (or the app's first start):
    .venv/bin/python bench/dense_search.py [--corpus synthea] [--embedder me5-small] [--repeats 50]
Prints p50/p95 per search mode and scope (all patients / one patient); query encoding is excluded.
"""
from __future__ import annotations

import argparse
import statistics
import time

import rag  # noqa: F401  (offline environment first)
from rag.config import load_settings
from rag.embedders import get_embedder
from rag.index import ChunkIndex
from rag.retrieve import DenseRetriever, Scope


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="synthea")
    p.add_argument("--embedder", default="me5-small")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--query", default="history of hypertension")
    args = p.parse_args()
    settings = load_settings()
    index = ChunkIndex(args.corpus, get_embedder(args.embedder, settings), settings)
    if index.count() == 0:
        raise SystemExit(f"no index for {args.corpus}/{args.embedder}: run python -m rag.index first")
    vector = index.embedder.embed_queries([args.query])[0].tolist()
    patient = index.all_chunks()[2][0]["patient_id"]
    for mode in ("exact", "store"):
        dense = DenseRetriever(index, search=mode)
        dense.retrieve_by_vector(vector, Scope.all(), 10)  # warm: loads the stored vectors for exact
        for name, scope in (("all patients", Scope.all()), ("one patient", Scope.patient(patient))):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                dense.retrieve_by_vector(vector, scope, 10)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            print(f"{mode:5s} {name:12s} {index.count()} chunks: p50 {statistics.median(times):.2f} ms, "
                  f"p95 {times[int(0.95 * (len(times) - 1))]:.2f} ms")


if __name__ == "__main__":
    main()
