"""``python -m eval.ragas_suite``: RAG evaluation, patient-constrained vs cross-patient, offline.

For every retriever (the fine-tuned domain model where one is trained, the multilingual-e5 base, the
second general baseline, BM25) and both modes (retrieval confined to the question's patient, or
across all patients) it retrieves the top k passages for each question and scores them against the
gold document ids without any LLM: our rank-aware context precision (docs/design.md §7), RAGAS's own
ID-based context precision and recall, and the leakage rate (share of retrieved chunks from another
patient; the run fails if it is not 0 in patient mode). On a subset of the questions it generates
the answer with the app's pipeline and configured generator, and on a smaller subset a judge scores
it with RAGAS's LLM metrics (context precision with reference, faithfulness, answer relevancy).

Defaults are sized for a 2-core CPU: retrieval metrics on every question, answers on 3 and the
judge on 1 question per retriever and mode, and a 14-minute wall-clock budget after which no new
answer or verdict is started (what was cut is listed under "Skipped"). Index building is not cut:
it happens once per home (about 2 minutes for me5-small on an idle 2-core machine, 23 minutes for
both indexes on a heavily shared one). Answers and verdicts are cached, so an interrupted or
budget-cut run continues where it stopped, and a rerun only recomputes what changed.

Outputs (``--out``, default ``<home>/eval/ragas_suite``): ``per_question.jsonl``, ``results.json``,
``results.md``, ``context_precision.png`` and ``manifest.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.rag_cache import JsonlCache
from eval.rag_run import (
    MODE_TITLES,
    MODES,
    AnswerRunner,
    RetrieverChoice,
    build_retrievers,
    find_domain_model,
    hit_record,
    parse_models,
    retrieve_many,
    scope_for,
)
from eval.ragas_judge import (
    DEFAULT_JUDGE_METRICS,
    JUDGE_FORMULAS,
    JUDGE_METRICS,
    JudgeSample,
    RagasJudge,
    ragas_id_scores,
)
from eval.report import bar_chart, run_manifest, write_json, write_markdown_table
from eval.stats import bootstrap_ci, paired_test
from rag import metrics as M
from rag.beir import load_beir, load_named_set, qa_to_beir
from rag.config import load_settings, read_secret
from rag.corpus import CorpusError, load_corpus, read_jsonl_objects, synthea_dir
from rag.embedders import get_embedder
from rag.llm import LLMClient
from rag.local_llm import get_llm_client

if TYPE_CHECKING:
    from rag.beir import BeirSet, Query
    from rag.config import Settings
    from rag.llm import LLMClient

log = logging.getLogger(__name__)

DEFAULT_SETS = ("synthea-conditions",)
DEFAULT_ANSWER_LIMIT = 3  # questions answered per (retriever, mode): ~5-10 s each on a busy 2-core CPU
DEFAULT_JUDGE_LIMIT = 1  # questions judged per (retriever, mode): ~1 min each with the embedded model
DEFAULT_MAX_TOKENS = 128
DEFAULT_BUDGET_MIN = 14.0  # the whole default run, index building included, stays under 15 minutes
REFERENCE_MODEL = "me5-small"  # paired tests compare every retriever with the e5 base

#: Short legend names for the chart (the table and JSON carry the full labels).
CHART_NAMES = {"me5-small": "multilingual-e5-small", "minilm": "all-MiniLM-L6-v2", "bm25": "BM25"}

RETRIEVAL_FORMULAS = {
    "context_precision": "CP@{k} (RAGAS rank-aware, gold ids) = sum_(i<={k}) P@i * v_i / (number of relevant items "
                         "in the top {k}); item i = the i-th retrieved chunk, v_i = 1 if its document is in the qrels",
    "ragas_id_precision": "RAGAS IDBasedContextPrecision = |retrieved doc ids ∩ gold ids| / |retrieved doc ids| "
                          "(set-based, not rank-aware)",
    "ragas_id_recall": "RAGAS IDBasedContextRecall = |retrieved doc ids ∩ gold ids| / |gold ids|",
    "leakage": "leakage = share of the k retrieved chunks whose patient_id differs from the question's patient "
               "(must be 0 in patient-constrained mode)",
    "retrieval_ms": "retrieval latency per question (query embedding + store query), median over questions",
}


@dataclass
class SuiteConfig:
    sets: list[str] = field(default_factory=lambda: list(DEFAULT_SETS))
    beir_paths: tuple[str, str, str] | None = None  # corpus, queries, qrels
    beir_name: str | None = None
    qa_path: str | None = None
    qa_corpus: str = "synthea"
    find_qa_split: bool = True  # add the finetune.pipeline test split(s) where present
    models: str | None = None
    modes: tuple[str, ...] = MODES
    k: int = 5
    limit: int | None = None
    seed: int = 0
    answer_limit: int = DEFAULT_ANSWER_LIMIT
    judge: bool = True
    judge_limit: int = DEFAULT_JUDGE_LIMIT
    judge_endpoint: str | None = None
    judge_model: str | None = None
    judge_metrics: tuple[str, ...] = DEFAULT_JUDGE_METRICS
    judge_embedder: str = "me5-small"
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    budget_s: float | None = DEFAULT_BUDGET_MIN * 60
    out: str | None = None
    progress: bool = True


# --------------------------------------------------------------------------------------------
# Inputs


def synthea_reference_answers(beir: "BeirSet", settings: "Settings") -> int:
    """Reference answers for synthea condition questions, from the structured conditions file.

    The queries ask "Has this patient been diagnosed with X, and when?"; ``conditions.jsonl`` holds
    every diagnosis with its onset, so the reference is "Yes: X, first recorded on <earliest onset>".
    Mechanical, like the qrels themselves; it lets the judge run RAGAS's *with-reference* metrics.
    Returns how many queries got one (queries that already have an answer are left alone).
    """

    path = synthea_dir(settings) / "conditions.jsonl"
    if not path.is_file():
        return 0
    problems: list = []
    rows = read_jsonl_objects(path, problems)
    if problems:
        raise CorpusError(problems, str(path))
    onsets: dict[tuple[str, str], str] = {}
    for _, row in rows:
        key = (row.get("patient_id"), row.get("display"))
        onset = str(row.get("onset") or "")
        if onset and (key not in onsets or onset < onsets[key]):
            onsets[key] = onset
    added = 0
    for q in beir.queries:
        condition = q.extra.get("condition")
        if q.answer is None and condition and (q.patient_id, condition) in onsets:
            q.answer = f"Yes. The record shows {condition}, first recorded on {onsets[(q.patient_id, condition)][:10]}."
            q.extra["answer_source"] = "conditions.jsonl (earliest onset)"
            added += 1
    return added


def find_qa_test_splits(settings: "Settings") -> list[Path]:
    """The synthetic QA test splits ``python -m finetune.pipeline`` wrote, as BEIR folders:
    ``<home>/pipeline/<preset>/split/test_beir/`` (held-out patients' records, questions, qrels)."""
    root = Path(settings.home) / "pipeline"
    return sorted(d.parent for d in root.glob("*/split/test_beir/queries.jsonl")
                  if (d.parent / "corpus.jsonl").is_file() and (d.parent / "qrels.tsv").is_file())


def load_sets(cfg: SuiteConfig, settings: "Settings") -> tuple[list["BeirSet"], dict[str, Any], list[str]]:
    """The evaluation sets, their input files (for the manifest) and notes on what was (not) found."""

    sets: list[BeirSet] = []
    notes: list[str] = []
    if cfg.beir_paths:
        sets.append(load_beir(*cfg.beir_paths, name=cfg.beir_name))
    for name in cfg.sets:
        beir = load_named_set(name, settings)
        if name == "synthea-conditions":
            n = synthea_reference_answers(beir, settings)
            beir.files["conditions (reference answers)"] = str(synthea_dir(settings) / "conditions.jsonl")
            notes.append(f"synthea-conditions: reference answers for {n} of {len(beir.queries)} questions derived "
                         "from conditions.jsonl (condition + earliest onset date)")
        sets.append(beir)
    if cfg.qa_path:
        corpus = load_corpus(cfg.qa_corpus, settings)
        sets.append(qa_to_beir(cfg.qa_path, corpus, name=f"qa ({Path(cfg.qa_path).name})"))
        notes.append(f"QA pairs {cfg.qa_path} over corpus {cfg.qa_corpus!r}")
    elif cfg.find_qa_split:
        found = find_qa_test_splits(settings)
        for folder in found:
            preset = folder.parent.parent.name
            sets.append(load_beir(folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels.tsv",
                                  name=f"qa-test ({preset})"))
            notes.append(f"synthetic QA test split of finetune.pipeline preset {preset!r}: {folder}")
        if not found:
            notes.append(f"synthetic QA test split: none found ({Path(settings.home) / 'pipeline'}/*/split/test_beir; "
                         "run python -m finetune.pipeline, or pass --qa / --corpus --queries --qrels) - skipped")
    inputs = {f"{beir.name}:{role}": path for beir in sets for role, path in (beir.files or {}).items()
              if path and Path(str(path)).exists()}
    if not sets:
        raise ValueError("no evaluation set: give --set NAME, --qa PATH or --corpus/--queries/--qrels")
    return sets, inputs, notes


def select_queries(beir: "BeirSet", limit: int | None, seed: int) -> list["Query"]:
    """Queries with at least one relevant document, in a seeded random order, the first ``limit``.

    Shuffled because the files are grouped by patient: the first N in file order would all be one
    patient's questions. The answer and judge subsets are prefixes of this order.
    """
    judged = [q for q in beir.queries if any(g >= 1 for g in beir.qrels.get(q.query_id, {}).values())]
    order = list(judged)
    random.Random(seed).shuffle(order)
    return order if limit is None else order[:limit]


# --------------------------------------------------------------------------------------------
# Clients


def generator_settings(settings: "Settings", generator: str | None, generator_model: str | None) -> "Settings":
    """``--generator``: an http(s) URL (an OpenAI-compatible endpoint, e.g. vLLM) or a GGUF file/name."""
    if not generator:
        return settings if not generator_model else settings.replace(llm_model=generator_model)
    if generator.startswith(("http://", "https://")):
        return settings.replace(llm_base_url=generator, llm_model=generator_model or settings.llm_model)
    return settings.replace(llm_base_url="", llm_gguf=Path(generator).expanduser())


def judge_client(cfg: SuiteConfig, settings: "Settings", generator: "LLMClient") -> tuple["LLMClient", str]:
    """The judge endpoint and how the report names it."""

    if cfg.judge_endpoint:
        model = cfg.judge_model or settings.llm_model
        key = read_secret(os.environ.get("CRAG_JUDGE_API_KEY"), os.environ.get("CRAG_JUDGE_API_KEY_FILE"))
        label = f"{model} at {cfg.judge_endpoint.rstrip('/')} (OpenAI-compatible judge endpoint)"
        client = LLMClient(cfg.judge_endpoint, model, key or "EMPTY", timeout_s=settings.llm_timeout_s,
                           max_retries=settings.llm_max_retries, label=label)
        return client, label
    weak = " - a weak judge (135M parameters): treat its scores as a smoke test" if "SmolLM2" in generator.describe() else ""
    return generator, f"{generator.describe()} (the generator itself as judge){weak}"


# --------------------------------------------------------------------------------------------
# Aggregation and reports


def _summary(values: Sequence[float], seed: int) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "ci95": [None, None], "n": 0}
    lo, hi = bootstrap_ci(vals, seed=seed)
    return {"mean": statistics.fmean(vals), "ci95": [lo, hi], "n": len(vals)}


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(records: list[dict[str, Any]], choices: Sequence[RetrieverChoice], modes: Sequence[str],
              judge_metrics: Sequence[str], seed: int) -> dict[str, Any]:
    """``{set: {mode: {model: {metric: {mean, ci, n}}}}}`` plus latencies and paired tests."""

    out: dict[str, Any] = {}
    for set_name in dict.fromkeys(r["set"] for r in records):
        out[set_name] = {}
        for mode in modes:
            per_model: dict[str, Any] = {}
            for choice in choices:
                rows = [r for r in records if r["set"] == set_name and r["mode"] == mode and r["model"] == choice.key]
                if not rows:
                    continue
                m: dict[str, Any] = {}
                for metric in ("context_precision", "ragas_id_precision", "ragas_id_recall", "leakage"):
                    m[metric] = _summary([r["metrics"][metric] for r in rows if r["metrics"].get(metric) is not None], seed)
                m["leakage_max"] = max((r["metrics"]["leakage"] or 0.0) for r in rows)
                m["retrieval_ms_p50"] = _median(r["retrieval_ms"] for r in rows)
                m["retrieval_ms_p95"] = (sorted(r["retrieval_ms"] for r in rows)[max(0, int(0.95 * len(rows)) - 1)]
                                         if rows else None)
                answered = [r for r in rows if r.get("answer")]
                m["answers"] = len(answered)
                m["generation_s_p50"] = _median(r["answer"]["timings"].get("generation_s") for r in answered)
                m["first_token_s_p50"] = _median(r["answer"]["timings"].get("first_token_s") for r in answered)
                m["cited_by_model"] = (sum(any(c["source"] == "model" for c in r["answer"]["citations"]) for r in answered)
                                       / len(answered)) if answered else None
                judged = [r for r in rows if r.get("judge")]
                m["judged"] = len(judged)
                for metric in judge_metrics:
                    m[f"judge_{metric}"] = _summary([r["judge"]["values"].get(metric) for r in judged], seed)
                    m[f"judge_{metric}_failed"] = sum(1 for r in judged if r["judge"]["values"].get(metric) is None)
                per_model[choice.key] = m
            ref = REFERENCE_MODEL if REFERENCE_MODEL in per_model else None
            if ref:
                base = {r["query_id"]: r["metrics"]["context_precision"] for r in records
                        if r["set"] == set_name and r["mode"] == mode and r["model"] == ref}
                for key, m in per_model.items():
                    if key == ref:
                        continue
                    mine = {r["query_id"]: r["metrics"]["context_precision"] for r in records
                            if r["set"] == set_name and r["mode"] == mode and r["model"] == key}
                    common = [q for q in mine if q in base]
                    m["context_precision_p_vs_" + ref] = paired_test([mine[q] for q in common], [base[q] for q in common],
                                                                    seed=seed) if common else None
            if per_model:
                out[set_name][mode] = per_model
    return out


def _fmt(summary: dict[str, Any] | None) -> str | None:
    if not summary or summary.get("mean") is None:
        return None
    lo, hi = summary["ci95"]
    if summary["n"] == 1:
        return f"{summary['mean']:.3f} (n=1)"
    return f"{summary['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _num(value: float | None, digits: int = 1) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def render_tables(results: dict[str, Any], labels: dict[str, str], choices: Sequence[RetrieverChoice],
                  modes: Sequence[str], k: int, judge_metrics: Sequence[str],
                  counts: dict[str, dict[str, int]]) -> str:
    """Markdown: per set, a retrieval table (all questions) and an answer/judge table (subsets)."""

    parts: list[str] = []
    short = {"patient": "patient", "cross": "cross"}
    for set_name, by_mode in results.items():
        c = counts[set_name]
        ret_cols = ["retriever"]
        for mode in modes:
            s = short[mode]
            ret_cols += [f"CP@{k} {s}", f"RAGAS ID-P {s}", f"RAGAS ID-R {s}", f"leakage {s}", f"ms p50 {s}"]
        ans_cols = ["retriever"]
        for mode in modes:
            s = short[mode]
            ans_cols += [f"answers {s}", f"gen s p50 {s}", f"cited {s}"]
            ans_cols += [f"{_JUDGE_SHORT[m]} {s}" for m in judge_metrics]
        ret_rows, ans_rows = [], []
        for choice in choices:
            row: dict[str, Any] = {"retriever": labels.get(choice.key, choice.key)}
            arow: dict[str, Any] = {"retriever": labels.get(choice.key, choice.key)}
            for mode in modes:
                m = by_mode.get(mode, {}).get(choice.key)
                s = short[mode]
                if m is None:
                    continue
                cp = _fmt(m["context_precision"])
                p = m.get(f"context_precision_p_vs_{REFERENCE_MODEL}")
                row[f"CP@{k} {s}"] = f"{cp} p={p:.3g}" if cp and p is not None else cp
                row[f"RAGAS ID-P {s}"] = _fmt(m["ragas_id_precision"])
                row[f"RAGAS ID-R {s}"] = _fmt(m["ragas_id_recall"])
                row[f"leakage {s}"] = f"{m['leakage']['mean']:.3f} (max {m['leakage_max']:.2f})"
                row[f"ms p50 {s}"] = _num(m["retrieval_ms_p50"])
                arow[f"answers {s}"] = str(m["answers"])
                arow[f"gen s p50 {s}"] = _num(m["generation_s_p50"])
                arow[f"cited {s}"] = None if m["cited_by_model"] is None else f"{m['cited_by_model']:.0%}"
                for metric in judge_metrics:
                    val = _fmt(m[f"judge_{metric}"])
                    failed = m[f"judge_{metric}_failed"]
                    arow[f"{_JUDGE_SHORT[metric]} {s}"] = (f"{val or '-'} ({failed} failed)" if failed else val)
            ret_rows.append(row)
            ans_rows.append(arow)
        mode_text = " and ".join(MODE_TITLES[m] for m in modes)
        parts.append(write_markdown_table(
            ret_rows, ret_cols, None,
            title=f"{set_name}: retrieval, {c['questions']} questions, {mode_text} (no LLM)",
            notes=[f"Mean [95% bootstrap CI]; p = paired sign-flip test of CP@{k} against "
                   f"{labels.get(REFERENCE_MODEL, REFERENCE_MODEL)}."]))
        parts.append(write_markdown_table(
            ans_rows, ans_cols, None,
            title=f"{set_name}: answers (up to {c['answered']} questions per retriever and mode) and judge "
                  f"(up to {c['judged']})",
            notes=["cited = share of answers in which the generator cited a passage number itself; "
                   "gen s = generation time (s, median)."]))
    return "\n".join(parts)


_JUDGE_SHORT = {"llm_context_precision": "LLM-CP", "faithfulness": "faithful", "answer_relevancy": "relevancy",
                "answer_correctness": "correctness"}


def formulas_text(k: int, judge_metrics: Sequence[str]) -> list[str]:
    lines = ["Formulas:"]
    lines += [f"- {text.replace('{k}', str(k))}" for text in RETRIEVAL_FORMULAS.values()]
    lines += [f"- {JUDGE_FORMULAS[m]}" for m in judge_metrics]
    return lines


# --------------------------------------------------------------------------------------------
# The run


class Budget:
    """A wall-clock limit for the LLM stages: an item starts only if, judging by the items of its
    kind done so far, it can finish in time. Retrieval metrics always run in full; what the budget
    cuts is reported, and a rerun continues from the cache."""

    def __init__(self, start: float, seconds: float | None) -> None:
        self.deadline = start + seconds if seconds else None
        self.durations: dict[str, list[float]] = {}

    def spent(self, kind: str, seconds: float) -> None:
        self.durations.setdefault(kind, []).append(seconds)

    def allows(self, kind: str) -> bool:
        if self.deadline is None:
            return True
        done = self.durations.get(kind, [])
        expected = statistics.fmean(done) if done else 0.0
        return time.perf_counter() + expected <= self.deadline


def question_major(records: list[dict[str, Any]], selected: dict[str, list["Query"]], limit: int,
                   choices: Sequence[RetrieverChoice], modes: Sequence[str]) -> list[dict[str, Any]]:
    """The records of the first ``limit`` selected questions of each set, ordered question by
    question (every retriever and mode of question 1, then question 2, ...), so a run cut short by
    the budget still compares all retrievers on the questions it finished."""
    position = {(name, q.query_id): i for name, qs in selected.items() for i, q in enumerate(qs[:limit])}
    model_pos = {c.key: i for i, c in enumerate(choices)}
    mode_pos = {m: i for i, m in enumerate(modes)}
    chosen = [r for r in records if (r["set"], r["query_id"]) in position]
    return sorted(chosen, key=lambda r: (position[(r["set"], r["query_id"])], model_pos[r["model"]],
                                         mode_pos[r["mode"]]))


def run_suite(cfg: SuiteConfig, settings: "Settings") -> dict[str, Any]:
    """Run everything; returns the results document (also written to ``cfg.out``)."""
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(cfg.out) if cfg.out else Path(settings.home) / "eval" / "ragas_suite"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(settings.home) / "eval" / "cache"
    choices = parse_models(cfg.models, settings)
    for mode in cfg.modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    notes: list[str] = []
    if cfg.models is None and find_domain_model(settings) is None:
        notes.append("domain model: none trained here (no <home>/models/domain*, see python -m finetune.train) "
                     "- not evaluated")

    t0 = time.perf_counter()
    sets, inputs, set_notes = load_sets(cfg, settings)
    notes += set_notes
    timings["load_sets_s"] = time.perf_counter() - t0

    records: list[dict[str, Any]] = []
    leaks: list[str] = []
    labels: dict[str, str] = {}
    index_reports: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    hits_of: dict[tuple[str, str, str, str], list[Any]] = {}
    retrievers_of: dict[str, Any] = {}
    selected: dict[str, list[Query]] = {}

    for beir in sets:
        t0 = time.perf_counter()
        rs = build_retrievers(beir.corpus, choices, settings, progress=cfg.progress)
        timings[f"index_{beir.name}_s"] = time.perf_counter() - t0
        labels.update(rs.labels)
        index_reports[beir.name] = rs.index_reports
        retrievers_of[beir.name] = rs
        queries = select_queries(beir, cfg.limit, cfg.seed)
        selected[beir.name] = queries
        skipped_patient = sum(1 for q in queries if not q.patient_id)
        if skipped_patient and "patient" in cfg.modes:
            notes.append(f"{beir.name}: {skipped_patient} questions without a patient are scored in cross-patient "
                         "mode only")

        t0 = time.perf_counter()
        new: list[dict[str, Any]] = []
        requests = [(q, mode, scope) for q in queries for mode in cfg.modes
                    if (scope := scope_for(mode, q.patient_id)) is not None]
        for choice in tqdm(choices, desc=f"retrieval {beir.name}", unit="retriever", disable=not cfg.progress):
            retriever = rs.retrievers[choice.key]
            found = retrieve_many(retriever, [(q.text, scope) for q, _, scope in requests], cfg.k)
            for (q, mode, _), (hits, secs, violation) in zip(requests, found):
                relevant = {d for d, g in beir.qrels[q.query_id].items() if g >= 1}
                doc_ids = [h.doc_id for h in hits]
                leakage = M.leakage_rate([h.patient_id for h in hits], q.patient_id) if q.patient_id else None
                where = f"{beir.name}/{choice.key}/{mode}/{q.query_id}"
                if violation:
                    leaks.append(f"{where}: {violation}")
                elif mode == "patient" and leakage:
                    leaks.append(f"{where}: leakage {leakage:.2f}")
                hits_of[(beir.name, choice.key, mode, q.query_id)] = hits
                new.append({
                    "set": beir.name, "query_id": q.query_id, "model": choice.key, "mode": mode, "k": cfg.k,
                    "patient_id": q.patient_id, "question": q.text, "reference": q.answer,
                    "relevant": sorted(relevant), "retrieved": [hit_record(h) for h in hits],
                    "retrieval_ms": round(secs * 1000, 3),
                    "metrics": {"context_precision": M.context_precision(doc_ids, relevant, cfg.k),
                                "leakage": 1.0 if violation else leakage},
                    "answer": None, "judge": None,
                })
        for rec, (p, r) in zip(new, ragas_id_scores([([h["doc_id"] for h in rec["retrieved"]], rec["relevant"])
                                                      for rec in new])):
            rec["metrics"]["ragas_id_precision"] = p
            rec["metrics"]["ragas_id_recall"] = r
        records += new
        timings[f"retrieval_{beir.name}_s"] = time.perf_counter() - t0
        counts[beir.name] = {"questions": len(queries), "answered": min(cfg.answer_limit, len(queries)),
                             "judged": min(cfg.judge_limit, cfg.answer_limit, len(queries)) if cfg.judge else 0,
                             **beir.counts()}

    # ---- answers (the app's pipeline) on the first answer_limit questions of each set
    generator_label = None
    judge_info: dict[str, Any] | None = None
    ran = [f"retrieval metrics (no LLM) on {sum(c['questions'] for c in counts.values())} questions x "
           f"{len(choices)} retrievers x {len(cfg.modes)} modes"]
    skipped: list[str] = []
    budget = Budget(t_start, cfg.budget_s)
    answer_recs = question_major(records, selected, cfg.answer_limit, choices, cfg.modes)
    llm = None
    if cfg.answer_limit > 0 and answer_recs:
        t0 = time.perf_counter()
        llm = get_llm_client(settings)
        timings["generator_start_s"] = time.perf_counter() - t0
        generator_label = llm.describe()
        runner = AnswerRunner(llm, JsonlCache(cache_dir / "answers.jsonl"), k=cfg.k, max_tokens=cfg.max_tokens)
        t0 = time.perf_counter()
        over = 0
        for rec in tqdm(answer_recs, desc="answers", unit="answer", disable=not cfg.progress):
            hits = hits_of[(rec["set"], rec["model"], rec["mode"], rec["query_id"])]
            if not runner.is_cached(rec["question"], hits) and not budget.allows("answer"):
                over += 1
                continue
            t1 = time.perf_counter()
            rec["answer"] = runner.answer(retrievers_of[rec["set"]].retrievers[rec["model"]], labels[rec["model"]],
                                          rec["question"], scope_for(rec["mode"], rec["patient_id"]), hits)
            if not rec["answer"]["cached"]:
                budget.spent("answer", time.perf_counter() - t1)
        timings["generation_s"] = time.perf_counter() - t0
        if len(answer_recs) > over:
            ran.append(f"answers ({generator_label}) for {len(answer_recs) - over} (question, retriever, mode) "
                       f"triples: {runner.generated} generated now, {runner.reused} from the cache")
        if over:
            skipped.append(f"answers: {over} of {len(answer_recs)} not generated, the time budget "
                           f"({cfg.budget_s / 60:.0f} min) ran out; rerun to continue (finished answers are cached)")
    else:
        skipped.append("answers: --answer-limit 0")

    # ---- judge on the first judge_limit answered questions
    if cfg.judge and llm is not None and cfg.judge_limit > 0:
        client, jlabel = judge_client(cfg, settings, llm)
        needs_emb = {"answer_relevancy", "answer_correctness"} & set(cfg.judge_metrics)
        embedder = get_embedder(cfg.judge_embedder, settings) if needs_emb else None
        judge = RagasJudge(client, jlabel, JsonlCache(cache_dir / "judge.jsonl"), embedder=embedder,
                           metrics=cfg.judge_metrics, seed=cfg.seed)
        judge_info = judge.describe()
        judge_recs = [r for r in question_major(records, selected, min(cfg.judge_limit, cfg.answer_limit),
                                                choices, cfg.modes) if r.get("answer")]
        t0 = time.perf_counter()
        over = 0
        for rec in tqdm(judge_recs, desc="judge", unit="answer", disable=not cfg.progress):
            hits = hits_of[(rec["set"], rec["model"], rec["mode"], rec["query_id"])]
            sample = JudgeSample(rec["question"], rec["answer"]["text"] if rec["answer"]["passages"] else "",
                                 [h.text for h in hits], rec["reference"])
            if not judge.is_cached(sample) and not budget.allows("judge"):
                over += 1
                continue
            t1 = time.perf_counter()
            result = judge.score(sample)
            rec["judge"] = result.to_json()
            if not all(result.cached.values()):
                budget.spent("judge", time.perf_counter() - t1)
        timings["judge_s"] = time.perf_counter() - t0
        if judge_recs and len(judge_recs) > over:
            ran.append(f"judge ({jlabel}) on {len(judge_recs) - over} answers: {', '.join(cfg.judge_metrics)}")
        elif not judge_recs:
            skipped.append("judge (LLM metrics): no answers to judge")
        if over:
            skipped.append(f"judge: {over} of {len(judge_recs)} answers not judged, the time budget "
                           f"({cfg.budget_s / 60:.0f} min) ran out; rerun to continue (verdicts are cached)")
    elif not cfg.judge:
        skipped.append("judge (LLM metrics): --no-judge")
    elif llm is None:
        skipped.append("judge (LLM metrics): no answers to judge")
    else:
        skipped.append("judge (LLM metrics): --judge-limit 0")
    timings["total_s"] = time.perf_counter() - t_start

    # ---- outputs
    results = aggregate(records, choices, cfg.modes, cfg.judge_metrics if judge_info else (), cfg.seed)
    per_q = out_dir / "per_question.jsonl"
    with per_q.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
    tables = render_tables(results, labels, choices, cfg.modes, cfg.k,
                           cfg.judge_metrics if judge_info else (), counts)
    chart = None
    first_set = next(iter(results), None)
    if first_set:
        data = {mode: {CHART_NAMES.get(key, key): (m["context_precision"]["mean"], *m["context_precision"]["ci95"])
                       for key, m in per_model.items() if m["context_precision"]["mean"] is not None}
                for mode, per_model in results[first_set].items()}
        chart = bar_chart(data, out_dir / "context_precision.png", metric_name=f"context precision @{cfg.k}",
                          title=f"{first_set}: CP@{cfg.k} (gold ids), 95% CI")
    document = {
        "sets": counts, "modes": list(cfg.modes), "k": cfg.k,
        "models": {c.key: {"label": labels.get(c.key), "kind": c.kind, "embedder": c.embedder} for c in choices},
        "generator": generator_label, "judge": judge_info, "results": results,
        "formulas": {**RETRIEVAL_FORMULAS, **{m: JUDGE_FORMULAS[m] for m in JUDGE_METRICS}},
        "ran": ran, "skipped": skipped, "notes": notes, "leakage_failures": leaks,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    write_json(document, out_dir / "results.json")
    header = ["# RAG evaluation (python -m eval.ragas_suite)", "",
              "Retrievers: " + "; ".join(f"{labels[c.key]}" for c in choices),
              f"Generator: {generator_label or 'not run'}",
              f"Judge: {judge_info['judge'] if judge_info else 'not run'}",
              f"k = {cfg.k}, seed = {cfg.seed}, answer max_tokens = {cfg.max_tokens}", "",
              "Ran: " + "; ".join(ran), "Skipped: " + ("; ".join(skipped) if skipped else "nothing"),
              *[f"Note: {n}" for n in notes], ""]
    footer = ["", *formulas_text(cfg.k, cfg.judge_metrics if judge_info else ()), "",
              "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())]
    markdown = "\n".join(header) + "\n" + tables + "\n".join(footer) + "\n"
    (out_dir / "results.md").write_text(markdown, encoding="utf-8")
    manifest = run_manifest(
        stage="eval.ragas_suite", inputs=inputs,
        parameters={k: v for k, v in asdict(cfg).items() if k != "progress"},
        models={"retrievers": {c.key: labels.get(c.key) for c in choices}, "generator": generator_label,
                "judge": judge_info, "indexes": index_reports},
        counts={**counts, "records": len(records)},
        timings={k: round(v, 2) for k, v in timings.items()},
        outputs={"per_question": str(per_q), "results": str(out_dir / "results.json"),
                 "table": str(out_dir / "results.md"), "chart": str(chart) if chart else None},
    )
    write_json(manifest, out_dir / "manifest.json")
    document["markdown"] = markdown
    document["out_dir"] = str(out_dir)
    return document


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.ragas_suite", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--set", dest="sets", action="append", default=None,
                   help=f"named evaluation set (repeatable; default {', '.join(DEFAULT_SETS)} plus the QA test "
                        "split of finetune.pipeline where one exists)")
    p.add_argument("--corpus", help="BEIR-like corpus.jsonl (with --queries and --qrels)")
    p.add_argument("--queries", help="queries.jsonl {query_id, text, patient_id?, answer?}")
    p.add_argument("--qrels", help="qrels.tsv (query_id, doc_id, grade)")
    p.add_argument("--name", help="name of the --corpus/--queries/--qrels set in the report")
    p.add_argument("--qa", help="QA pairs (qa.jsonl, e.g. the synthetic test split) to evaluate as a set")
    p.add_argument("--qa-corpus", default="synthea", help="corpus the --qa pairs were generated from")
    p.add_argument("--models", help="comma list of retrievers: embedder names/folders and 'bm25' "
                                    "(default: domain if trained, me5-small, minilm, bm25)")
    p.add_argument("--modes", default=",".join(MODES), help="patient, cross or both")
    p.add_argument("--k", type=int, default=None, help="passages retrieved and given to the generator "
                                                       "(default: the app's top_k)")
    p.add_argument("--limit", type=int, default=None, help="questions per set for the retrieval metrics "
                                                           "(seeded random sample; default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answer-limit", type=int, default=DEFAULT_ANSWER_LIMIT,
                   help="questions answered per retriever and mode (0: no generation)")
    p.add_argument("--judge-limit", type=int, default=DEFAULT_JUDGE_LIMIT,
                   help="answered questions judged per retriever and mode")
    p.add_argument("--no-judge", action="store_true", help="skip the LLM-judged RAGAS metrics")
    p.add_argument("--judge-endpoint", help="OpenAI-compatible judge URL, e.g. http://gpu:8000/v1 (vLLM); "
                                            "key from CRAG_JUDGE_API_KEY or CRAG_JUDGE_API_KEY_FILE")
    p.add_argument("--judge-model", help="model name served at --judge-endpoint")
    p.add_argument("--judge-metrics", default=",".join(DEFAULT_JUDGE_METRICS),
                   help=f"comma list from {', '.join(JUDGE_METRICS)}")
    p.add_argument("--generator", help="OpenAI-compatible URL (vLLM) or a GGUF file/name for the embedded server "
                                       "(default: the configured generator, CRAG_LLM_*)")
    p.add_argument("--generator-model", help="model name at the --generator URL")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, help="answer length limit (tokens)")
    p.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MIN,
                   help="wall-clock budget of the whole run; answers and judge verdicts that would not finish "
                        "in it are skipped and reported (a rerun continues from the cache); 0 = no limit")
    p.add_argument("--out", help="output folder (default <home>/eval/ragas_suite)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import bm25s  # noqa: F401  (sets its logger to DEBUG on import; keep the terminal table readable)

    logging.getLogger("bm25s").setLevel(logging.WARNING)

    beir_paths = None
    if any((args.corpus, args.queries, args.qrels)):
        if not all((args.corpus, args.queries, args.qrels)):
            print("error: --corpus, --queries and --qrels go together", file=sys.stderr)
            return 2
        beir_paths = (args.corpus, args.queries, args.qrels)
    settings = generator_settings(load_settings(), args.generator, args.generator_model)
    sets = args.sets if args.sets is not None else ([] if beir_paths or args.qa else list(DEFAULT_SETS))
    cfg = SuiteConfig(
        sets=sets, beir_paths=beir_paths, beir_name=args.name, qa_path=args.qa, qa_corpus=args.qa_corpus,
        find_qa_split=args.sets is None and not beir_paths and not args.qa,
        models=args.models, modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        k=args.k or settings.top_k, limit=args.limit, seed=args.seed, answer_limit=max(0, args.answer_limit),
        judge=not args.no_judge, judge_limit=max(0, args.judge_limit), judge_endpoint=args.judge_endpoint,
        judge_model=args.judge_model,
        judge_metrics=tuple(m.strip() for m in args.judge_metrics.split(",") if m.strip()),
        max_tokens=args.max_tokens, budget_s=args.budget_minutes * 60 or None, out=args.out,
        progress=not args.quiet,
    )
    doc = run_suite(cfg, settings)
    print(doc["markdown"])
    print(f"outputs: {doc['out_dir']}/results.md, results.json, per_question.jsonl, context_precision.png, "
          "manifest.json")
    if doc["leakage_failures"]:
        print(f"FAILED: {len(doc['leakage_failures'])} patient-constrained retrievals returned another patient's "
              "chunks (leakage must be 0):", file=sys.stderr)
        for line in doc["leakage_failures"][:20]:
            print("  " + line, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
