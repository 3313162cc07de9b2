"""Retrieval evaluation: MAP@100, nDCG@10, Recall@10/@100 and MRR@10 per model and scope.

Why it goes through the product's own path (``rag.index`` + ``rag.retrieve``) instead of a plain
matrix product: the numbers must describe what a clinician's query actually gets - the same
chunking, prefixes, Chroma store, patient filter inside the store query and RRF fusion. Chunk hits
are mapped to documents (a document scores its best chunk, docs/design.md §7), fetching chunks in
growing rounds until 100 distinct documents come back or the scope has no more; how many chunks
that took is measured and reported.

Every (model, scope) run is stored under ``OUT/runs/`` with a key over the set, the model's
weights fingerprint and the parameters, so a re-run (or a run interrupted after some models)
recomputes nothing that finished; the indexes themselves are the persistent, incremental Chroma
collections under ``settings.home``, so a second run embeds nothing.

CLI::

    python -m eval.ir --set synthea-conditions --models me5-small,minilm,bm25,hybrid --scope both
    python -m eval.ir --corpus C.jsonl --queries Q.jsonl --qrels R.tsv --models domain=PATH,me5-small,bm25
    python -m eval.ir --write-qa-split QA.jsonl --docs DOCS.jsonl --split test --out DIR
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.ir_cache import digest, load_run, set_fingerprint, slug
from eval.ir_models import ModelSpec, parse_models
from eval.ir_report import write_outputs
from eval.report import (
    run_manifest,
    write_json,
)
from eval.specificity import specificity_report
from eval.stats import bootstrap_ci, paired_test
from finetune.split import write_qa_split
from rag.beir import NAMED_SETS, BeirSet, Query, load_beir, load_named_set
from rag.config import Settings, load_settings
from rag.corpus import CorpusError
from rag.fusion import RRF_K, Fusion, fusion_for
from rag.index import build_index
from rag.metrics import (
    IR_METRICS,
    METRIC_FORMULAS,
    chunks_to_documents,
    mean,
    score_run,
)
from rag.retrieve import DENSE_SEARCHES, Scope, make_retriever

if TYPE_CHECKING:
    from rag.index import ChunkIndex

log = logging.getLogger(__name__)

SCOPES = ("cross", "patient")
SEARCH_MODES = DENSE_SEARCHES  # auto (the app's default), exact (cosine over the stored vectors), store (Chroma HNSW)
RUN_FORMAT = 2  # bump when the stored run layout or the retrieval procedure changes


# --------------------------------------------------------------------------------------------
# Retrieval of ranked documents through the product's retrievers


@dataclass
class DocRanking:
    doc_ids: list[str]
    chunks_needed: int | None  # chunks (in rank order) until the k-th distinct document; None if < k docs
    chunks_fetched: int  # size of the last request
    rounds: int


def ranked_documents(retrieve: Callable[[str, Scope, int], list], query: str, scope: Scope, k: int,
                     start: int, cap: int) -> DocRanking:
    """Fetch chunks, doubling the request until ``k`` distinct documents or the scope is exhausted."""
    fetch, rounds = max(k, min(start, cap)), 0
    while True:
        rounds += 1
        hits = retrieve(query, scope, fetch)
        docs = chunks_to_documents(hits)
        if len(docs) >= k or len(hits) < fetch or fetch >= cap:
            break
        fetch = min(cap, fetch * 2)
    needed = None
    if len(docs) >= k:
        seen: set[str] = set()
        for i, hit in enumerate(hits, start=1):
            seen.add(hit.doc_id)
            if len(seen) == k:
                needed = i
                break
    return DocRanking([d for d, _ in docs[:k]], needed, fetch, rounds)


# --------------------------------------------------------------------------------------------
# Evaluation


class _Indexes:
    """One ChunkIndex per embedder, synced once per evaluation (incremental: unchanged docs are kept)."""

    def __init__(self, beir: BeirSet, settings: Settings, progress: bool) -> None:
        self.beir, self.settings, self.progress = beir, settings, progress
        self.indexes: dict[str, Any] = {}
        self.sync: dict[str, dict] = {}
        self.scope_chunks: dict[str, dict[str, int]] = {}

    def get(self, embedder_name: str) -> "ChunkIndex":
        if embedder_name not in self.indexes:
            index, report = build_index(self.beir.corpus, embedder_name, self.settings, progress=self.progress)
            embedder = index.embedder
            print(f"[index] {report.summary()}", file=sys.stderr)
            self.indexes[embedder_name] = index
            self.sync[embedder_name] = {
                "collection": index.name, "embedder": embedder.label, "fingerprint": embedder.fingerprint,
                "chunking": index.chunking.key(), "chunks": report.chunks_total,
                "chunks_embedded_now": report.chunks_embedded, "sync_seconds": round(report.seconds, 2),
            }
        return self.indexes[embedder_name]

    def chunks_per_patient(self, embedder_name: str) -> dict[str, int]:
        if embedder_name not in self.scope_chunks:
            stored = self.get(embedder_name).lexical()
            self.scope_chunks[embedder_name] = {p: len(rows) for p, rows in stored.rows_by_patient.items()}
        return self.scope_chunks[embedder_name]


def _scopes(scope: str) -> list[str]:
    if scope == "both":
        return list(SCOPES)
    if scope not in SCOPES:
        raise ValueError(f"scope must be cross, patient or both, got {scope!r}")
    return [scope]


def _run_model(spec: ModelSpec, scope_name: str, queries: list[Query], indexes: _Indexes, k: int,
               progress: bool, search: str = "auto", fusion: Fusion | None = None) -> dict:
    """Rank documents for every query of one (model, scope); returns the stored-run body."""
    from tqdm.auto import tqdm

    index = indexes.get(spec.embedder)
    if spec.kind in ("dense", "hybrid"):
        texts = list(dict.fromkeys(q.text for q in queries))
        t0 = time.perf_counter()
        vecs = index.embedder.embed_queries(texts, show_progress=False)
        encode_s = time.perf_counter() - t0
    else:
        encode_s = 0.0
    per_patient = indexes.chunks_per_patient(spec.embedder)
    total_chunks = sum(per_patient.values())
    vectors = {t: v.tolist() for t, v in zip(texts, vecs)} if spec.kind in ("dense", "hybrid") else None
    retriever = make_retriever(spec.kind, index, search=search, query_vectors=vectors, fusion=fusion)
    dense = getattr(retriever, "dense", retriever)  # the dense part counts the store's short answers

    ranked: dict[str, list[str]] = {}
    needed: dict[str, int | None] = {}
    fetched: dict[str, int] = {}
    skipped: list[str] = []
    start = math.ceil(1.2 * k)
    t0 = time.perf_counter()
    for q in tqdm(queries, desc=f"{spec.label} / {scope_name}", unit="q", disable=not progress, leave=False):
        if scope_name == "patient":
            if q.patient_id is None:
                skipped.append(q.query_id)
                continue
            scope, cap = Scope.patient(q.patient_id), per_patient.get(q.patient_id, 0)
        else:
            scope, cap = Scope.all(), total_chunks
        if cap == 0:
            ranked[q.query_id], needed[q.query_id], fetched[q.query_id] = [], None, 0
            continue
        result = ranked_documents(retriever.retrieve, q.text, scope, k, start, cap)
        ranked[q.query_id] = result.doc_ids
        needed[q.query_id] = result.chunks_needed
        fetched[q.query_id] = result.chunks_fetched
        # the next query starts near what this one needed (20% margin): one store round trip, usually
        start = math.ceil(1.2 * result.chunks_needed) if result.chunks_needed else result.chunks_fetched
    seconds = time.perf_counter() - t0
    return {"ranked": ranked, "chunks_needed": needed, "chunks_fetched": fetched, "skipped_no_patient": skipped,
            "seconds": round(seconds, 2), "query_encode_seconds": round(encode_s, 2),
            "dense_retries": getattr(dense, "retries", 0), "dense_short_returns": getattr(dense, "short_returns", 0)}


def _fetch_summary(run: dict, k: int) -> dict:
    needed = [v for v in run["chunks_needed"].values() if v is not None]
    short = sum(1 for q, docs in run["ranked"].items() if len(docs) < k)
    n = len(run["ranked"])
    return {
        "queries": n,
        f"queries_with_{k}_docs": len(needed),
        f"queries_with_fewer_than_{k}_docs": short,
        "chunks_needed_for_k_docs": ({"median": statistics.median(needed), "mean": round(statistics.mean(needed), 1),
                                      "max": max(needed)} if needed else None),
        "chunks_fetched_max": max(run["chunks_fetched"].values(), default=0),
        "mean_docs_returned": round(sum(len(d) for d in run["ranked"].values()) / n, 1) if n else 0,
        "seconds": run["seconds"],
        "ms_per_query": round(1000 * run["seconds"] / n, 1) if n else None,
        "query_encode_seconds": run["query_encode_seconds"],
        "dense_retries": run.get("dense_retries", 0),
        "dense_short_returns": run.get("dense_short_returns", 0),
    }


def evaluate(
    beir_set: BeirSet,
    models: list[str] | str,
    *,
    scope: str = "both",
    k: int = 100,
    settings: Settings | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    base: str = "me5-small",
    n_resamples: int = 2000,
    n_permutations: int = 10000,
    search: str = "auto",
    fusion: Fusion | None = None,
) -> dict:
    """Evaluate ``models`` (see :func:`parse_models`) on ``beir_set`` in the given scope(s).

    ``fusion`` overrides the hybrid weights tuned for each embedder (``eval.fusion`` tries candidates).

    Writes ``results.json`` (aggregates with 95% bootstrap CIs, paired sign-flip p-values against
    ``base``, per-query values), ``results.md`` (table + formulas), ``map100.png``/``ndcg10.png``,
    ``manifest.json`` and the stored runs into ``out_dir`` (default ``<home>/eval/ir/<set>``), and
    returns the same dict as ``results.json``.
    """
    settings = settings or load_settings()
    if search not in SEARCH_MODES:
        raise ValueError(f"search must be one of {SEARCH_MODES}, got {search!r}")
    specs = parse_models(models, base=base)
    scopes = _scopes(scope)
    default_name = slug(beir_set.name) + ("" if search == "auto" else f"-{search}")
    out = Path(out_dir) if out_dir is not None else Path(settings.home) / "eval" / "ir" / default_name
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    set_fp = set_fingerprint(beir_set)
    indexes = _Indexes(beir_set, settings, progress)

    per_query: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    fetch: dict[str, dict[str, dict]] = {}
    reused: list[str] = []
    for spec in specs:
        index = indexes.get(spec.embedder)
        identity = {"format": RUN_FORMAT, "set": set_fp, "k": k, "kind": spec.kind, "embedder": spec.embedder,
                    "fingerprint": index.embedder.fingerprint, "chunking": index.chunking.key(), "rrf_k": RRF_K,
                    "search": search if spec.kind != "bm25" else "bm25"}
        if spec.kind == "hybrid":
            identity["fusion"] = (fusion or fusion_for(index.embedder)).to_json()
        for scope_name in scopes:
            key = digest({**identity, "scope": scope_name})
            path = out / "runs" / f"{slug(spec.label)}__{scope_name}{'' if search == 'auto' else '__' + search}.json"
            run = load_run(path, key)
            if run is None:
                run = _run_model(spec, scope_name, beir_set.queries, indexes, k, progress, search, fusion)
                write_json({"key": key, "identity": {**identity, "scope": scope_name}, "label": spec.label, **run}, path)
            else:
                reused.append(f"{spec.label}/{scope_name}")
            judged = {q: r for q, r in beir_set.qrels.items() if q in run["ranked"]}
            per_query.setdefault(scope_name, {})[spec.label] = score_run(run["ranked"], judged)
            fetch.setdefault(scope_name, {})[spec.label] = _fetch_summary(run, k)
            summary = fetch[scope_name][spec.label]
            print(f"[run] {spec.label} / {scope_name}: {summary['queries']} queries, {summary['seconds']} s"
                  f"{' (stored run reused)' if f'{spec.label}/{scope_name}' in reused else ''}", file=sys.stderr)

    labels = [s.label for s in specs]
    base_label = base if base in labels else None
    aggregate: dict[str, dict[str, dict]] = {}
    for scope_name in scopes:
        for label in labels:
            entry: dict[str, Any] = {}
            for metric in IR_METRICS:
                values = per_query[scope_name][label][metric]
                qids = sorted(values)
                vals = [values[q] for q in qids]
                lo, hi = bootstrap_ci(vals, n_resamples=n_resamples, seed=seed)
                m: dict[str, Any] = {"mean": mean(vals), "ci95": [lo, hi], "n": len(vals)}
                if base_label is not None and label != base_label:
                    base_vals = per_query[scope_name][base_label][metric]
                    common = [q for q in qids if q in base_vals]
                    a, b = [values[q] for q in common], [base_vals[q] for q in common]
                    base_mean = mean(b)
                    m["base_mean"] = base_mean
                    m["ratio_vs_base"] = (mean(a) / base_mean) if base_mean and not math.isnan(base_mean) else None
                    m["p_vs_base"] = paired_test(a, b, n_resamples=n_permutations, seed=seed)
                entry[metric] = m
            aggregate.setdefault(scope_name, {})[label] = entry

    model_info = {}
    for spec in specs:
        info = indexes.sync[spec.embedder]
        model_info[spec.label] = {"kind": spec.kind, "embedder": spec.embedder,
                                  "description": spec.describe(info["embedder"], fusion or fusion_for(indexes.get(spec.embedder).embedder)),
                                  "index": info}
    results = {
        "set": beir_set.name,
        "set_fingerprint": set_fp,
        "counts": beir_set.counts(),
        "k": k,
        "search": search,
        "scopes": scopes,
        "base": base_label,
        "models": model_info,
        "metrics": {m: METRIC_FORMULAS[m] for m in IR_METRICS},
        "aggregate": aggregate,
        "fetch": fetch,
        "per_query": per_query,
        "by_specificity": specificity_report(
            beir_set, {s: {label: per_query[s][label]["map@100"] for label in labels} for s in scopes}),
        "stats": {"ci": f"percentile bootstrap over queries, {n_resamples} resamples, 95%",
                  "paired_test": f"two-sided paired sign-flip randomization test against {base_label} "
                                 f"(exact for <= 16 non-zero differences, else {n_permutations} permutations)",
                  "seed": seed},
        "reused_runs": reused,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    markdown = write_outputs(results, out)
    results["markdown"] = markdown
    results["out_dir"] = str(out)
    write_json(run_manifest(
        stage="eval.ir",
        inputs={role: path for role, path in (beir_set.files or {"corpus": beir_set.corpus.source}).items()
                if Path(str(path)).exists()},
        set={"name": beir_set.name, "fingerprint": set_fp, "counts": beir_set.counts()},
        parameters={"models": [s.__dict__ for s in specs], "scopes": scopes, "k": k, "search": search,
                    "base": base_label, "seed": seed,
                    "n_resamples": n_resamples, "n_permutations": n_permutations, "rrf_k": RRF_K},
        models=model_info,
        timings={"total_seconds": results["seconds"],
                 "runs": {f"{l}/{s}": fetch[s][l]["seconds"] for s in scopes for l in labels}},
        reused_runs=reused,
        outputs=["results.json", "results.md", "map100.png", "ndcg10.png", "runs/"],
    ), out / "manifest.json")
    return results


# --------------------------------------------------------------------------------------------
# CLI


def _parse_fractions(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("fractions are three numbers: train,dev,test")
    return parts[0], parts[1], parts[2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.ir", description=__doc__.split("\n")[0])
    src = parser.add_argument_group("evaluation set (a named set, or the three BEIR-like files)")
    src.add_argument("--set", dest="set_name", help=f"named set: {', '.join(NAMED_SETS)}")
    src.add_argument("--corpus", help="corpus.jsonl (documents; doc_id, patient_id?, text)")
    src.add_argument("--queries", help="queries.jsonl (query_id, text, patient_id?, answer?)")
    src.add_argument("--qrels", help="qrels.tsv (header query_id<TAB>doc_id<TAB>grade)")
    src.add_argument("--name", help="name of a set given by paths (default: the corpus folder's name)")
    parser.add_argument("--models", default="me5-small,minilm,bm25,hybrid",
                        help="comma list: NAME | LABEL=NAME_OR_PATH | bm25 | hybrid | hybrid:LABEL")
    parser.add_argument("--base", default="me5-small", help="label the others are compared with (default me5-small)")
    parser.add_argument("--scope", default="both", choices=["cross", "patient", "both"])
    parser.add_argument("--search", default="auto", choices=list(SEARCH_MODES),
                        help="dense search, as in rag.retrieve.DenseRetriever: auto = the app's default (exact up to "
                             "EXACT_MAX_CHUNKS chunks, else the store's HNSW); exact = cosine over the stored vectors; "
                             "store = Chroma's HNSW query (approximate)")
    parser.add_argument("--k", type=int, default=100, help="documents ranked per query (default 100)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N queries (corpus stays whole)")
    parser.add_argument("--out", help="output folder (default <home>/eval/ir/<set>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    qa = parser.add_argument_group("write a QA split in BEIR form instead of evaluating")
    qa.add_argument("--write-qa-split", metavar="QA.jsonl", help="QA pairs (qa_id, doc_id, patient_id, question, answer)")
    qa.add_argument("--docs", help="documents of the QA pairs (documents.jsonl or a corpus name)")
    qa.add_argument("--split", default="test", choices=["train", "dev", "test"])
    qa.add_argument("--by", default="documents", choices=["documents", "patients"],
                    help="what the split fractions count (as in finetune.split; default documents)")
    qa.add_argument("--assignment", help="splits.json from python -m finetune.split (else recomputed from seed)")
    qa.add_argument("--fractions", type=_parse_fractions, default=(0.8, 0.1, 0.1), help="train,dev,test (default 0.8,0.1,0.1)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING)
    import bm25s  # noqa: F401  (sets its logger to DEBUG on import; keep the terminal table readable)

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    settings = load_settings()

    try:
        if args.write_qa_split:
            if not args.docs or not args.out:
                parser.error("--write-qa-split needs --docs and --out")
            beir, paths = write_qa_split(args.write_qa_split, args.docs, args.split, args.out, seed=args.seed,
                                         fractions=args.fractions, by=args.by, assignment=args.assignment, settings=settings)
            print(json.dumps({"split": args.split, **beir.counts(), "files": {k: str(v) for k, v in paths.items()}},
                             indent=2))
            return 0
        if args.set_name:
            beir = load_named_set(args.set_name, settings)
        elif args.corpus and args.queries and args.qrels:
            beir = load_beir(args.corpus, args.queries, args.qrels, name=args.name)
        else:
            parser.error("give --set NAME or all of --corpus, --queries and --qrels")
        beir = beir.limited(args.limit)
        results = evaluate(beir, args.models, scope=args.scope, k=args.k, settings=settings, out_dir=args.out,
                           seed=args.seed, progress=not args.quiet, base=args.base, search=args.search)
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(results["markdown"])
    out = Path(results["out_dir"])
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'map100.png'}, {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
