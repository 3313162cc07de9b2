"""Metric, statistics and report functions against hand-computed examples (rag.metrics/stats/report)."""
from __future__ import annotations

import json
import math

import pytest

from eval.report import bar_chart, run_manifest, sha256_file, write_json, write_markdown_table
from eval.stats import bootstrap_ci, paired_test
from rag.metrics import (
    average_precision,
    chunks_to_documents,
    context_precision,
    leakage_rate,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    score_run,
)

# ---- AP / MAP ------------------------------------------------------------------------------

def test_average_precision_several_relevant_documents():
    # relevant at ranks 1, 3, 5 of R = 4: (1/1 + 2/3 + 3/5) / 4
    ranked = ["a", "x", "b", "y", "c"]
    assert average_precision(ranked, {"a", "b", "c", "d"}) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)


def test_average_precision_normalises_by_min_r_k():
    # R = 4 > k = 2: the denominator is 2, so a relevant first hit alone gives 1/2
    assert average_precision(["a", "x", "b"], {"a", "b", "c", "d"}, k=2) == pytest.approx(0.5)
    # a perfect top-k with R > k scores 1
    assert average_precision(["a", "b"], {"a", "b", "c"}, k=2) == pytest.approx(1.0)


def test_average_precision_none_retrieved_and_no_relevant():
    assert average_precision(["x", "y", "z"], {"a"}) == 0.0
    assert average_precision([], {"a"}) == 0.0
    assert average_precision(["a"], set()) == 0.0


def test_average_precision_counts_a_document_once_and_ignores_grade_zero():
    assert average_precision(["x", "x", "b"], {"b"}) == pytest.approx(1 / 2)
    assert average_precision(["a", "b"], {"a": 0, "b": 1}) == pytest.approx(1 / 2)


def test_average_precision_outside_cutoff_is_zero():
    ranked = [f"x{i}" for i in range(100)] + ["a"]
    assert average_precision(ranked, {"a"}, k=100) == 0.0
    assert average_precision(ranked, {"a"}, k=101) == pytest.approx(1 / 101)


# ---- nDCG, recall, MRR, context precision --------------------------------------------------

def test_ndcg_graded_hand_computed():
    # DCG = 1/log2(2) + 2/log2(3); IDCG = 2/log2(2) + 1/log2(3)
    dcg = 1 + 2 / math.log2(3)
    idcg = 2 + 1 / math.log2(3)
    assert ndcg_at_k(["b", "a", "x"], {"a": 2, "b": 1}, k=3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b"], {"a": 2, "b": 1}, k=10) == pytest.approx(1.0)
    assert ndcg_at_k(["x"], {"a": 1}, k=10) == 0.0


def test_ndcg_ideal_is_cut_at_k():
    # three relevant, k = 1: the ideal top-1 has one relevant doc, so a relevant first hit is perfect
    assert ndcg_at_k(["c"], {"a", "b", "c"}, k=1) == pytest.approx(1.0)


def test_recall_and_mrr():
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c"}, k=2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c"}, k=3) == pytest.approx(2 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a"}, k=10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a"}, k=2) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(["a"], {"a"}, k=0)


def test_context_precision_ragas_definition():
    # relevant at ranks 2 and 4: (1/2 + 2/4) / 2
    assert context_precision(["x", "a", "y", "b"], {"a", "b", "c"}) == pytest.approx(0.5)
    assert context_precision(["x", "a", "y", "b"], {"a", "b", "c"}, k=2) == pytest.approx(0.5)
    assert context_precision(["a", "b", "x"], {"a", "b"}) == pytest.approx(1.0)
    assert context_precision(["x", "y"], {"a"}) == 0.0


def test_leakage_rate():
    assert leakage_rate(["p1", "p2", "p1", "p3"], "p1") == pytest.approx(0.5)
    assert leakage_rate(["p1", "p1"], "p1") == 0.0
    assert leakage_rate([], "p1") == 0.0


def test_chunks_to_documents_max_score_order_kept():
    hits = [("d2", 0.9), ("d1", 0.8), ("d2", 0.7), {"doc_id": "d3", "score": 0.6}, ("d1", 0.85)]
    assert chunks_to_documents(hits) == [("d2", 0.9), ("d1", 0.85), ("d3", 0.6)]


def test_chunks_to_documents_accepts_retriever_hits():
    from rag.retrieve import Hit

    hits = [Hit("c1", "d1", "p", "t", 0, 1, 0.5, 1, "dense"), Hit("c2", "d1", "p", "t", 1, 2, 0.4, 2, "dense")]
    assert chunks_to_documents(hits) == [("d1", 0.5)]


def test_score_run_excludes_unjudged_and_scores_missing_queries_zero():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"d": 0}}
    run = {"q1": ["a", "x", "b"], "q9": ["a"]}
    scores = score_run(run, qrels)
    assert set(scores) == {"map@100", "ndcg@10", "recall@10", "recall@100", "mrr@10"}
    assert set(scores["map@100"]) == {"q1", "q2"}  # q3 has no relevant doc; q9 has no qrels
    assert scores["map@100"]["q1"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["map@100"]["q2"] == 0.0
    assert scores["recall@10"]["q1"] == 1.0
    assert scores["mrr@10"]["q2"] == 0.0


# ---- statistics ----------------------------------------------------------------------------

def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = [0.0, 0.1, 0.5, 0.9, 1.0, 0.3, 0.7, 0.2]
    lo, hi = bootstrap_ci(values, seed=1)
    mean = sum(values) / len(values)
    assert lo < mean < hi
    assert 0.0 <= lo and hi <= 1.0
    assert bootstrap_ci(values, seed=1) == (lo, hi)
    assert bootstrap_ci([0.4] * 5) == (pytest.approx(0.4), pytest.approx(0.4))
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_paired_test_exact_small_sample():
    # five equal positive differences: only the all-plus and all-minus patterns reach |sum| = 5
    assert paired_test([1.0] * 5, [0.0] * 5) == pytest.approx(2 / 32)
    assert paired_test([0.3, 0.2], [0.3, 0.2]) == 1.0
    with pytest.raises(ValueError):
        paired_test([1.0], [1.0, 2.0])


def test_paired_test_randomized_large_sample():
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.random(200)
    better = base + 0.1 + rng.normal(0, 0.05, 200)
    assert paired_test(better, base, n_resamples=2000) < 0.01
    noise = base + rng.normal(0, 0.05, 200)
    assert paired_test(noise, base, n_resamples=2000) > 0.05


# ---- report files --------------------------------------------------------------------------

def test_markdown_json_chart_and_manifest(tmp_path):
    md = write_markdown_table([{"model": "bm25", "map": 0.12345, "n": 3}, {"model": "x|y", "map": float("nan")}],
                              ["model", "map", "n"], tmp_path / "t.md", title="T")
    assert md == (tmp_path / "t.md").read_text()
    assert "| bm25 | 0.123 | 3 |" in md and "| x\\|y | - | - |" in md and md.startswith("## T")

    write_json({"a": float("nan"), "b": [1.5]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.5]}

    png = bar_chart({"cross": {"m1": (0.3, 0.2, 0.4), "m2": (0.5, 0.45, 0.55)}, "patient": {"m1": (0.7, 0.6, 0.8)}},
                    tmp_path / "c.png", metric_name="MAP@100", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    manifest = run_manifest(inputs={"table": tmp_path / "t.md"}, parameters={"k": 100})
    assert manifest["inputs"]["table"]["sha256"] == sha256_file(tmp_path / "t.md")
    assert manifest["parameters"] == {"k": 100}
    assert "numpy" in manifest["versions"]
