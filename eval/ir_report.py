"""The results table, JSON and chart of ``eval.ir`` (``results.json``, ``results.md``, ``map100.png``)."""
from __future__ import annotations

import math
from pathlib import Path

from eval.report import bar_chart, markdown_table, write_json, write_markdown_table
from eval.specificity import BUCKETS as SPECIFICITY_BUCKETS

METRIC_TITLES = {"map@100": "MAP@100", "ndcg@10": "nDCG@10", "recall@10": "Recall@10",
                 "recall@100": "Recall@100", "mrr@10": "MRR@10"}


def _fmt_ci(m: dict) -> str:
    lo, hi = m["ci95"]
    if math.isnan(m["mean"]):
        return "-"
    return f"{m['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def results_rows(results: dict) -> list[dict]:
    rows = []
    for scope_name in results["scopes"]:
        for label, entry in results["aggregate"][scope_name].items():
            mp = entry["map@100"]
            rows.append({
                "scope": scope_name,
                "model": label,
                "MAP@100 [95% CI]": _fmt_ci(mp),
                "x base": f"{mp['ratio_vs_base']:.2f}" if mp.get("ratio_vs_base") is not None else "-",
                "p (MAP vs base)": _fmt_p(mp.get("p_vs_base")),
                "nDCG@10": entry["ndcg@10"]["mean"],
                "Recall@10": entry["recall@10"]["mean"],
                "Recall@100": entry["recall@100"]["mean"],
                "MRR@10": entry["mrr@10"]["mean"],
                "queries": mp["n"],
            })
    return rows


RESULT_COLUMNS = ["scope", "model", "MAP@100 [95% CI]", "x base", "p (MAP vs base)", "nDCG@10", "Recall@10",
                  "Recall@100", "MRR@10", "queries"]


def write_outputs(results: dict, out: Path) -> str:
    notes = ["", "Models:"]
    notes += [f"- `{label}`: {info['description']}" for label, info in results["models"].items()]
    c = results["counts"]
    notes += ["", f"Set `{results['set']}`: {c['documents']} documents, {c['patients']} patients "
              f"({c['patient_structure']}), {c['queries']} queries, {c['relevant_pairs']} relevant pairs. "
              "Scopes: cross = whole corpus (Scope.all()); patient = only the query's patient "
              "(Scope.patient, filtered inside the store query)."]
    notes += ["", "Metrics (documents; chunk hits mapped to their document by max score; R = relevant docs "
              "of the query):"]
    notes += [f"- {f}" for f in results["metrics"].values()]
    notes += [f"- 95% CI: {results['stats']['ci']}; p: {results['stats']['paired_test']}; "
              "x base = model mean / base mean."]
    by_spec = results.get("by_specificity")
    if by_spec:
        notes += ["", "MAP@100 by query specificity (eval.specificity: " + by_spec["rule"] + "):", ""]
        head = [f"{b} ({by_spec['queries'][b]} q)" for b in SPECIFICITY_BUCKETS]
        rows = [{"scope": s, "model": label, **{h: v[b] for h, b in zip(head, SPECIFICITY_BUCKETS)}}
                for s, by_label in by_spec["map@100"].items() for label, v in by_label.items()]
        notes += [markdown_table(rows, ["scope", "model", *head])]
    notes += ["", "Chunks fetched until 100 distinct documents (median / max over queries with >= 100 docs in scope):"]
    for scope_name in results["scopes"]:
        for label, f in results["fetch"][scope_name].items():
            need = f["chunks_needed_for_k_docs"]
            need_s = f"{need['median']} / {need['max']}" if need else "n/a (no query reached 100 documents)"
            short = f[f"queries_with_fewer_than_{results['k']}_docs"]
            notes.append(f"- {scope_name} / {label}: {need_s}; {short} "
                         f"of {f['queries']} queries got fewer than {results['k']} documents "
                         f"(mean {f['mean_docs_returned']}); {f['ms_per_query']} ms/query"
                         + (f"; dense store answers short after retries: {f['dense_short_returns']} "
                            f"(retried {f['dense_retries']})" if f["dense_retries"] else ""))
    how = {"auto": "the app's default (rag.retrieve.DenseRetriever search=auto: exact cosine over the index's "
                   "stored vectors up to EXACT_MAX_CHUNKS chunks, Chroma HNSW beyond)",
           "exact": "exact cosine over the index's stored vectors",
           "store": "Chroma's HNSW store query (approximate)"}[results["search"]]
    notes[:0] = ["", f"Dense search: {how}."]
    title = f"Retrieval on {results['set']} (k={results['k']}, base {results['base']}, search {results['search']})"
    markdown = write_markdown_table(results_rows(results), RESULT_COLUMNS, out / "results.md", title=title, notes=notes)
    write_json({k: v for k, v in results.items() if k != "markdown"}, out / "results.json")
    for metric, file in (("map@100", "map100.png"), ("ndcg@10", "ndcg10.png")):
        data = {s: {label: (e[metric]["mean"], *e[metric]["ci95"]) for label, e in results["aggregate"][s].items()}
                for s in results["scopes"]}
        bar_chart(data, out / file, metric_name=METRIC_TITLES[metric],
                  title=f"{METRIC_TITLES[metric]} on {results['set']} (95% bootstrap CI)")
    return markdown
