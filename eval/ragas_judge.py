"""RAGAS scoring of RAG answers: ID-based context metrics (no LLM) and LLM-judged metrics.

* :func:`ragas_id_scores` runs RAGAS's own ``IDBasedContextPrecision`` / ``IDBasedContextRecall``
  on document ids, next to our rank-aware context precision (``rag.metrics``), so the table shows
  both the study's formula and what the RAGAS library itself reports.
* :class:`RagasJudge` runs RAGAS's LLM metrics (``ragas.metrics.collections``) through the project's
  LLM client (:mod:`eval.ragas_adapters`): context precision with reference (without reference
  where a question has no reference answer, which the output says), faithfulness, answer relevancy
  and, on request, answer correctness. Every verdict is cached (key: metric, inputs, judge, ragas
  version, output limits), so an interrupted run resumes and a rerun costs nothing.

A judge failure (invalid output after retries, output cut off) is recorded per metric with its
reason and the run goes on; only an unreachable judge stops the run (every later call would fail).
``import ragas`` happens inside the functions: it takes seconds and most callers never need it.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

from eval.rag_cache import JsonlCache, cache_key
from eval.ragas_adapters import ClientRagasLLM, QueryEmbedding
from rag.llm import LLMUnavailable

if TYPE_CHECKING:
    from rag.embedders import Embedder
    from rag.llm import LLMClient

#: Judge metrics this module knows, in table order.
JUDGE_METRICS: tuple[str, ...] = ("llm_context_precision", "faithfulness", "answer_relevancy", "answer_correctness")
DEFAULT_JUDGE_METRICS: tuple[str, ...] = ("llm_context_precision", "faithfulness", "answer_relevancy")

JUDGE_FORMULAS: dict[str, str] = {
    "llm_context_precision": "LLM context precision (RAGAS ContextPrecisionWithReference): the judge marks each "
                             "retrieved passage useful (v_k=1) for reaching the reference answer; "
                             "sum_k(P@k * v_k) / sum_k v_k (WithoutReference: judged against the generated answer)",
    "faithfulness": "Faithfulness (RAGAS): share of the answer's statements (split by the judge) that the judge "
                    "finds supported by the retrieved passages",
    "answer_relevancy": "Answer relevancy (RAGAS): cosine similarity between the question and questions the judge "
                        "writes back from the answer (0 when the judge calls the answer noncommittal)",
    "answer_correctness": "Answer correctness (RAGAS): 0.75 * F1 of answer vs reference statements (judge "
                          "classifies TP/FP/FN) + 0.25 * cosine similarity of answer and reference",
}


def ragas_version() -> str:
    try:
        return importlib_metadata.version("ragas")
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def ragas_id_scores(samples: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[tuple[float, float]]:
    """RAGAS ``IDBasedContextPrecision`` and ``IDBasedContextRecall`` for many
    ``(retrieved_ids, reference_ids)`` pairs, in one event loop.

    Both are set-based (not rank-aware): precision = |retrieved ∩ reference| / |retrieved|, recall =
    |retrieved ∩ reference| / |reference|. RAGAS returns NaN for an empty retrieval; we report 0 for
    it (nothing relevant was handed to the generator), so every retriever is averaged over the same
    questions.
    """
    import warnings

    from ragas import SingleTurnSample

    with warnings.catch_warnings():
        # ragas 0.4.3 points to ragas.metrics.collections, which has no ID-based metrics yet
        warnings.simplefilter("ignore", DeprecationWarning)
        from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall

    precision, recall = IDBasedContextPrecision(), IDBasedContextRecall()

    async def run() -> list[tuple[float, float]]:
        out = []
        for retrieved, reference in samples:
            if not retrieved:
                out.append((0.0, 0.0))
                continue
            sample = SingleTurnSample(retrieved_context_ids=list(retrieved), reference_context_ids=list(reference))
            p = await precision.single_turn_ascore(sample)
            r = await recall.single_turn_ascore(sample)
            out.append((0.0 if math.isnan(p) else float(p), 0.0 if math.isnan(r) else float(r)))
        return out

    return asyncio.run(run())


class JudgeUnavailable(RuntimeError):
    """The judge endpoint cannot be reached: the run stops instead of recording N failures."""


@dataclass
class JudgeSample:
    question: str
    answer: str
    contexts: list[str]
    reference: str | None = None


@dataclass
class JudgeResult:
    """Per metric: value (None when it could not be computed), the RAGAS variant used, and why not."""

    values: dict[str, float | None] = field(default_factory=dict)
    variants: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"values": self.values, "variants": self.variants, "errors": self.errors,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "cached": self.cached}


class RagasJudge:
    """RAGAS LLM metrics over one OpenAI-compatible judge endpoint, with a verdict cache."""

    def __init__(self, client: "LLMClient", label: str, cache: JsonlCache, *,
                 embedder: "Embedder | None" = None, metrics: Sequence[str] = DEFAULT_JUDGE_METRICS,
                 max_tokens: int = 512, max_chars: int = 160, max_items: int = 5, strictness: int = 1,
                 seed: int = 0) -> None:
        unknown = [m for m in metrics if m not in JUDGE_METRICS]
        if unknown:
            raise ValueError(f"unknown judge metric(s) {unknown}; choose from {', '.join(JUDGE_METRICS)}")
        needs_embedder = {"answer_relevancy", "answer_correctness"} & set(metrics)
        if needs_embedder and embedder is None:
            raise ValueError(f"{sorted(needs_embedder)} compare texts by embedding: pass an embedder")
        self.client = client
        self.label = label
        self.cache = cache
        self.embedder = embedder
        self.metrics = tuple(metrics)
        self.max_tokens, self.max_chars, self.max_items = max_tokens, max_chars, max_items
        self.strictness = strictness
        self.seed = seed
        self._built: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "judge": self.label,
            "metrics": list(self.metrics),
            "ragas": ragas_version(),
            "embeddings_for_relevancy": self.embedder.label if self.embedder is not None else None,
            "output_limits": {"max_tokens": self.max_tokens, "string_max_chars": self.max_chars,
                              "list_max_items": self.max_items},
            "answer_relevancy_strictness": self.strictness,
        }

    def _components(self) -> dict[str, Any]:
        if self._built is None:
            from ragas.metrics.collections import (
                AnswerCorrectness,
                AnswerRelevancy,
                ContextPrecisionWithoutReference,
                ContextPrecisionWithReference,
                Faithfulness,
            )


            llm = ClientRagasLLM(self.client, max_tokens=self.max_tokens, seed=self.seed,
                                 max_chars=self.max_chars, max_items=self.max_items)
            emb = QueryEmbedding(self.embedder) if self.embedder is not None else None
            built: dict[str, Any] = {
                "cp_ref": ContextPrecisionWithReference(llm=llm),
                "cp_noref": ContextPrecisionWithoutReference(llm=llm),
                "faithfulness": Faithfulness(llm=llm),
            }
            if emb is not None:
                built["answer_relevancy"] = AnswerRelevancy(llm=llm, embeddings=emb, strictness=self.strictness)
                built["answer_correctness"] = AnswerCorrectness(llm=llm, embeddings=emb)
            self._built = built
        return self._built

    def _plan(self, sample: JudgeSample) -> list[tuple[str, str, str | None, dict[str, Any]]]:
        """(metric, variant, reason it cannot run, RAGAS ascore kwargs) for each requested metric."""
        plan = []
        has_ctx, has_ref = bool(sample.contexts), bool(sample.reference)
        for metric in self.metrics:
            skip = None
            if metric == "llm_context_precision":
                variant = "ContextPrecisionWithReference" if has_ref else "ContextPrecisionWithoutReference"
                kwargs = {"user_input": sample.question, "retrieved_contexts": sample.contexts}
                kwargs.update({"reference": sample.reference} if has_ref else {"response": sample.answer})
                if not has_ctx:
                    skip = "no passages retrieved"
            elif metric == "faithfulness":
                variant = "Faithfulness"
                kwargs = {"user_input": sample.question, "response": sample.answer, "retrieved_contexts": sample.contexts}
                if not has_ctx:
                    skip = "no passages retrieved"
            elif metric == "answer_relevancy":
                variant = f"AnswerRelevancy(strictness={self.strictness})"
                kwargs = {"user_input": sample.question, "response": sample.answer}
            else:
                variant = "AnswerCorrectness"
                kwargs = {"user_input": sample.question, "response": sample.answer, "reference": sample.reference}
                if not has_ref:
                    skip = "no reference answer"
            if not sample.answer.strip() and metric != "llm_context_precision":
                skip = "empty answer"
            plan.append((metric, variant, skip, kwargs))
        return plan

    def _key(self, variant: str, kwargs: dict[str, Any]) -> str:
        return cache_key("judge", variant, kwargs, self.label, ragas_version(), self.max_tokens, self.max_chars,
                         self.max_items, self.seed,
                         self.embedder.fingerprint if self.embedder is not None else None)

    def is_cached(self, sample: JudgeSample) -> bool:
        """True when every metric that can run on ``sample`` has a cached verdict."""
        return all(skip or self._key(variant, kwargs) in self.cache for _, variant, skip, kwargs in self._plan(sample))

    def score(self, sample: JudgeSample) -> JudgeResult:
        """Score one answer on every configured metric (cached verdicts are reused)."""

        result = JudgeResult()
        for metric, variant, skip, kwargs in self._plan(sample):
            result.variants[metric] = variant
            if skip:
                result.values[metric] = None
                result.errors[metric] = skip
                continue
            key = self._key(variant, kwargs)
            cached = self.cache.get(key)
            if cached is not None:
                result.values[metric] = cached["value"]
                if cached.get("error"):
                    result.errors[metric] = cached["error"]
                result.seconds[metric] = cached.get("seconds", 0.0)
                result.cached[metric] = True
                continue
            component = {"llm_context_precision": "cp_ref" if variant.endswith("WithReference") else "cp_noref"}.get(
                metric, metric)
            t0 = time.perf_counter()
            value: float | None
            error = None
            try:
                out = asyncio.run(self._components()[component].ascore(**kwargs))
                value = None if out.value is None or math.isnan(float(out.value)) else float(out.value)
                if value is None:
                    error = "RAGAS returned NaN (e.g. the judge found no statements)"
            except LLMUnavailable as exc:
                raise JudgeUnavailable(f"the judge {self.label} is unreachable: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - a bad verdict is a result to report, not a crash
                value, error = None, f"{type(exc).__name__}: {str(exc)[:200]}"
            seconds = time.perf_counter() - t0
            self.cache.put(key, {"value": value, "error": error, "seconds": round(seconds, 3)})
            result.values[metric] = value
            if error:
                result.errors[metric] = error
            result.seconds[metric] = seconds
            result.cached[metric] = False
        return result
