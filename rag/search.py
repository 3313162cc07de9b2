"""Search an index from the command line, scoped to one patient, several, or all.

``python -m rag.search "metformin" --corpus synthea --patient ID --json``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Iterable

from rag.config import load_settings
from rag.index import open_index
from rag.retrieve import RETRIEVERS, Scope, make_retriever


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rag.search", description=__doc__.split("\n")[0])
    parser.add_argument("query")
    parser.add_argument("--corpus", default=None, help="named corpus or path used with rag.index")
    parser.add_argument("--embedder", default=None)
    parser.add_argument("--patient", action="append", default=None, help="restrict to this patient id (repeatable)")
    parser.add_argument("--retriever", choices=RETRIEVERS, default="dense")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print hits as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)

    settings = load_settings()
    corpus = args.corpus or settings.corpus
    index = open_index(corpus, args.embedder, settings)
    if index.count() == 0:
        print(
            f"error: no index for corpus {corpus!r} with embedder {index.embedder.name!r} in {index.store_dir}.\n"
            f"Build it first: python -m rag.index --corpus {corpus} --embedder {index.embedder.name}",
            file=sys.stderr,
        )
        return 2
    scope = Scope.of(args.patient) if args.patient else Scope.all()
    retriever = make_retriever(args.retriever, index)
    t0 = time.perf_counter()
    hits = retriever.retrieve(args.query, scope, args.k)
    elapsed_ms = (time.perf_counter() - t0) * 1000

    if args.json:
        print(json.dumps({
            "query": args.query,
            "corpus": corpus,
            "embedder": index.embedder.name,
            "retriever": retriever.name,
            "scope": list(scope.patients) if scope.patients is not None else "all",
            "elapsed_ms": round(elapsed_ms, 1),
            "hits": [h.to_json() for h in hits],
        }, indent=2, ensure_ascii=False))
        return 0

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.query!r} | {scope.describe()} | {retriever.name} | {index.embedder.label} | {elapsed_ms:.0f} ms")
    for col in ("#", "score", "patient", "document", "date", "type", "span", "text"):
        table.add_column(col, overflow="fold")
    for h in hits:
        snippet = " ".join(h.text.split())[:160]
        table.add_row(str(h.rank), f"{h.score:.3f}", h.patient_id[:13], h.doc_id[:13], (h.date or "")[:10],
                      (h.doc_type or "")[:30], f"{h.start}-{h.end}", snippet)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
