"""Chroma at scale: insert time, query latency (all patients / one patient), memory and disk for N synthetic chunks.

When should an index move from the embedded on-disk store to a Chroma server (docs/scale.md)? This
measures the store itself with our metadata shape (patient_id, doc_id per chunk) and random unit
vectors of the embedder's size, so no model or corpus is needed:

    .venv/bin/python bench/chroma_scale.py --chunks 100000 [--dim 384] [--per-patient 100] [--url http://host:8000]

Without --url it uses an embedded PersistentClient in a temporary folder (deleted afterwards).
Prints one table; the query vector is fixed, so only the store's search is timed.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import rag  # noqa: F401  (offline environment first)

BATCH = 5000


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384, help="384 = multilingual-e5-small, 1024 = e5-large")
    p.add_argument("--per-patient", type=int, default=100, help="chunks per patient")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--url", default=None, help="a Chroma server (chroma run); default: embedded, on disk")
    args = p.parse_args()

    import chromadb

    folder = None
    if args.url:
        from urllib.parse import urlparse

        u = urlparse(args.url)
        client = chromadb.HttpClient(host=u.hostname, port=u.port or 8000)
    else:
        folder = Path(tempfile.mkdtemp(prefix="chroma-scale-"))
        client = chromadb.PersistentClient(path=str(folder))
    name = f"bench_{args.chunks}_{args.dim}"
    try:
        client.delete_collection(name)
    except Exception:  # noqa: BLE001  (absent on a fresh store)
        pass
    collection = client.create_collection(name, metadata={"hnsw:space": "cosine"})
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for start in tqdm(range(0, args.chunks, BATCH), desc=f"inserting {args.chunks} chunks", unit="batch"):
        n = min(BATCH, args.chunks - start)
        vectors = rng.standard_normal((n, args.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"c{i}" for i in range(start, start + n)]
        metadatas = [{"patient_id": f"p{i // args.per_patient}", "doc_id": f"d{i // 5}"} for i in range(start, start + n)]
        collection.add(ids=ids, embeddings=vectors, metadatas=metadatas)
    insert_s = time.perf_counter() - t0

    query = rng.standard_normal(args.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    rows = []
    for label, where in (("all patients", None), ("one patient", {"patient_id": "p7"})):
        collection.query(query_embeddings=[query.tolist()], n_results=10, where=where)  # warm
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            collection.query(query_embeddings=[query.tolist()], n_results=10, where=where)
            times.append(time.perf_counter() - t)
        rows.append((label, *_percentiles(times)))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    disk_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6 if folder else float("nan")

    where = args.url or "embedded PersistentClient"
    print(f"\nChroma {chromadb.__version__}, {where}: {args.chunks} chunks x {args.dim} dims, "
          f"{args.chunks // args.per_patient} patients")
    print(f"insert: {insert_s:.1f} s ({args.chunks / insert_s:.0f} chunks/s); peak RSS of this process "
          f"{rss_mb:.0f} MB; on disk {disk_mb:.0f} MB")
    print("| scope | query p50 ms | query p95 ms |\n|---|---:|---:|")
    for label, p50, p95 in rows:
        print(f"| {label} | {p50:.1f} | {p95:.1f} |")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
