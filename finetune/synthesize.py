"""Synthetic question-answer pairs from clinical documents, filtered and resumable (issue 4).

    python -m finetune.synthesize --in pseudo.jsonl --out var/qa/run/qa.jsonl --per-doc 8
    python -m finetune.synthesize --in physionet_deid_dev --in grascco_phi --limit 15 \\
        --generator qwen2.5-coder-0.5b --out var/qa/accept/qa.jsonl
    python -m finetune.synthesize --in docs.jsonl --out qa.jsonl --endpoint http://gpu:8000/v1 --model clinical-llm
    python -m finetune.synthesize --in pseudo.jsonl --out qa.jsonl --engine ray   (finetune.ray_stages)

How one document is turned into pairs, and why:

* **Unit of generation.** A document that fits the generator's context (``--window-chars``,
  derived from ``llm_ctx`` minus the prompt and the output budget, ~9 k characters at 4096 tokens)
  is sent whole: nursing notes and most letters fit, and whole-note questions round-trip best.
  Longer documents (mtsamples, long German letters) are cut at paragraph boundaries into windows
  that each fit; the questions are spread over the windows and each record carries its window
  (``chunk_id = "<doc_id>@start-end"``). Evidence is still checked against the whole document.
* **Several calls per document**, at most ``--per-call`` (default 3) questions each, with a rotating
  focus (diagnoses/findings, medication/therapy, labs/timeline, procedures/plan/history) and style
  hint (keyword query, full clinical question, handover question). The texts of both live in
  ``prompts/qa_hints.<lang>.txt``; the prompt in ``prompts/qa_generate.<lang>.txt``; the note's
  language picks the prompt. Each call has a fixed seed derived from ``--seed``, the document and
  the call number, so a rerun sends the same requests. Calls on one document run one after the
  other, and a quote used by an earlier call leaves the evidence enum of the next, so every call
  grounds its questions somewhere new (sub-1B generators otherwise repeat one item within a call:
  measured, Qwen2.5-Coder-0.5B at 5 per call kept 0 of 14, at 1 per call 2 of 14 on three notes).
* **Anchored calls** (``--anchored``): the passages come first. :mod:`finetune.anchors` picks up to
  ``--per-doc`` sentences that name something specific (rare words), and each gets one short call
  (``prompts/qa_anchor.<lang>.txt``: rules first, so the server's prompt cache keeps them, then the
  passage) asking for one query in the rotating style; the passage is the evidence, so the reply
  carries only the query and its answer. Fewer prompt and output tokens per question, and the
  question is about a fact the note states (docs/results.md has the measurement).
* **Structured output**: ``response_format`` with the JSON schema of :mod:`finetune.qa_schema`, whose
  ``evidence`` is an enum of the note's sentences, so the quote is verbatim by construction
  (llama.cpp and vLLM enforce the schema while decoding). A reply cut off at ``max_tokens`` is salvaged item
  by item instead of being thrown away.
* **Filters** (:mod:`finetune.filters`) run per document as soon as its calls are back; every drop
  is written with its reason to ``<stem>.rejected.jsonl``.

Resumability: output is append-only. A document's kept pairs are written with one ``write`` on an
``O_APPEND`` descriptor, then its line in ``<stem>.progress.jsonl``; a restart skips every document
that has either, so nothing is redone and nothing is written twice (a half line left by a kill is
cut off first). A document whose calls failed after the client's retries is *not* marked done and
is retried by the next run; five such documents in a row stop the run (the endpoint is taken for
dead; run the same command again to resume). :mod:`finetune.llm_jobs` holds these rules for both
LLM stages. ``manifest.json`` next to the output is rewritten every few documents and at the end,
with counts over all runs (recomputed from the files) and this run's timings.

Endpoints: none given starts the embedded llama.cpp server (``--generator`` name or GGUF path, 1
thread by default, one slot per request in flight); one or several ``--endpoint`` URLs (vLLM,
``/v1`` at the end) share the requests, each request going to the endpoint with the fewest in flight.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.anchors import pick_anchors
from finetune.engine import EngineError, add_engine_arguments, engine_from_args
from finetune.filters import (
    BM25Reference,
    DenseReference,
    DocContext,
    FilterState,
    apply_filters,
    default_filters,
    guess_language,
    normalize,
    patient_names,
)
from finetune.llm_jobs import Appends, EndpointPool, JobStopped, ResumableJob, input_info, open_generator, versions
from finetune.qa_schema import (
    LANGUAGE_NAMES,
    SCHEMA_NAME,
    Candidate,
    QARecord,
    doc_seed,
    evidence_options,
    generation_schema,
)
from rag.config import Settings, load_settings
from rag.corpus import Corpus, Document, load_corpus
from rag.embedders import get_embedder
from rag.jsonl_log import read_rows
from rag.llm import LLMError, LLMRequestError
from rag.local_llm import QWEN_NAME, qwen_gguf_path
from rag.manifest import write_json
from rag.prompts import PROMPT_DIR, load_prompt

log = logging.getLogger(__name__)

PROMPT_NAME = "qa_generate"
ANCHOR_PROMPT_NAME = "qa_anchor"
ANCHORED_MAX_TOKENS = 100  # question_type, a query of <= 12 words and a few words of answer, with headroom
HINTS_NAME = "qa_hints"
FOCI: tuple[str, ...] = ("diagnoses", "medication", "labs", "procedures")
STYLES: tuple[str, ...] = ("clinical", "keyword", "handover")
PROMPT_OVERHEAD_TOKENS = 450  # system + rules + chat template, measured ~380 with Qwen's tokenizer
TOKENS_PER_ITEM = 140  # pretty-printed item of ~60 words as Qwen/SmolLM2 emit it, plus headroom
CHARS_PER_TOKEN = 2.0  # conservative: German letters measured 3.5 (SmolLM2) to 4.3 (Qwen) chars/token,
# dense passages less; a window that still overflows is split again (see _synthesize_document)


class SynthesisError(RuntimeError):
    """The run cannot go on (bad input, the generator keeps failing)."""


# --------------------------------------------------------------------------------------------
# Prompt hints (focus and style texts) from prompts/qa_hints.<lang>.txt


@dataclass(frozen=True)
class Hints:
    version: str
    focus: dict[str, str]
    style: dict[str, str]


def load_hints(language: str, prompt_dir: Path = PROMPT_DIR) -> Hints:
    """Focus and style texts; format: ``version:`` line, ``### focus`` / ``### style``, ``key: text``."""
    path = prompt_dir / f"{HINTS_NAME}.{language}.txt"
    if not path.is_file():
        path = prompt_dir / f"{HINTS_NAME}.en.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("version:"):
        raise SynthesisError(f"{path}:1: the first line must be 'version: <id>'")
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if line.startswith("### "):
            current = sections.setdefault(line[4:].strip(), {})
            continue
        key, sep, text = line.partition(":")
        if current is None or not sep or not text.strip():
            raise SynthesisError(f"{path}:{no}: expected 'key: text' inside a '### focus' or '### style' section")
        current[key.strip()] = text.strip()
    missing = [f"focus.{k}" for k in FOCI if k not in sections.get("focus", {})]
    missing += [f"style.{k}" for k in STYLES if k not in sections.get("style", {})]
    if missing:
        raise SynthesisError(f"{path}: missing {', '.join(missing)}")
    return Hints(lines[0].split(":", 1)[1].strip(), sections["focus"], sections["style"])


# --------------------------------------------------------------------------------------------
# Planning: which calls a document gets


@dataclass
class Call:
    doc: Document
    language: str
    index: int
    n: int
    focus: str
    style: str
    seed: int
    window: tuple[int, int] | None  # None: the whole document
    anchor: str | None = None  # anchored call: the passage asked about (``finetune.anchors``)


def doc_language(doc: Document) -> str:
    lang = (doc.language or "").lower()[:2]
    if lang in LANGUAGE_NAMES:
        return lang
    guess, _, _ = guess_language(doc.text[:3000])
    return guess or "en"


_PARA = re.compile(r"\n[ \t]*\n+")
_LINE = re.compile(r"\n")


def split_windows(text: str, max_chars: int) -> list[tuple[int, int]]:
    """Cut ``text`` into spans of at most ``max_chars``, at paragraph, then line, then hard breaks;
    neighbouring pieces are packed together."""
    if len(text) <= max_chars:
        return [(0, len(text))]

    def pieces(a: int, b: int, patterns: Sequence[re.Pattern[str]]) -> list[tuple[int, int]]:
        if b - a <= max_chars:
            return [(a, b)]
        if not patterns:
            return [(i, min(b, i + max_chars)) for i in range(a, b, max_chars)]
        out, pos = [], a
        for m in patterns[0].finditer(text, a, b):
            out += pieces(pos, m.end(), patterns[1:]) if m.end() - pos > max_chars else [(pos, m.end())]
            pos = m.end()
        if pos < b:
            out += pieces(pos, b, patterns[1:]) if b - pos > max_chars else [(pos, b)]
        return out

    packed: list[tuple[int, int]] = []
    for a, b in pieces(0, len(text), [_PARA, _LINE]):
        if packed and b - packed[-1][0] <= max_chars:
            packed[-1] = (packed[-1][0], b)
        else:
            packed.append((a, b))
    return [(a, b) for a, b in packed if text[a:b].strip()]


def plan_calls(doc: Document, *, per_doc: int, per_call: int, window_chars: int, seed: int,
               anchored: bool = False) -> list[Call]:
    """The calls for one document: ``per_doc`` questions spread over its windows, ``per_call`` at most
    per call, focus and style rotating from a per-document offset. ``anchored``: one call per anchor
    passage (``finetune.anchors.pick_anchors``), one question each; a note with fewer specific
    passages gets fewer calls."""
    lang = doc_language(doc)
    if anchored:
        offset = doc_seed(seed, doc.doc_id, -1)
        return [Call(doc=doc, language=lang, index=i, n=1, focus="anchor", style=STYLES[(offset + i) % len(STYLES)],
                     seed=doc_seed(seed, doc.doc_id, i), window=None, anchor=anchor)
                for i, anchor in enumerate(pick_anchors(doc.text, per_doc, lang))]
    windows = split_windows(doc.text, window_chars)
    whole = len(windows) == 1
    shares = [per_doc // len(windows) + (1 if i < per_doc % len(windows) else 0) for i in range(len(windows))]
    offset = doc_seed(seed, doc.doc_id, -1)
    calls: list[Call] = []
    for window, share in zip(windows, shares):
        while share > 0:
            n = min(per_call, share)
            share -= n
            i = len(calls)
            calls.append(Call(doc=doc, language=lang, index=i, n=n, focus=FOCI[(offset + i) % len(FOCI)],
                              style=STYLES[(offset // 7 + i) % len(STYLES)], seed=doc_seed(seed, doc.doc_id, i),
                              window=None if whole else window))
    return calls


# --------------------------------------------------------------------------------------------
# Parsing a reply (with salvage of a cut-off list)


def parse_items(text: str) -> tuple[list[Any], bool]:
    """The items of a ``{"items": [...]}`` reply and whether the reply was complete JSON.

    A reply cut off by ``max_tokens`` keeps every item that closed before the cut.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(stripped)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("items"), list):
        return list(value["items"]), True
    if isinstance(value, list):
        return value, True
    m = re.search(r'"items"\s*:\s*\[', stripped)
    if not m:
        return [], False
    decoder = json.JSONDecoder()
    pos, items = m.end(), []
    while True:
        while pos < len(stripped) and stripped[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(stripped) or stripped[pos] == "]":
            break
        try:
            item, pos = decoder.raw_decode(stripped, pos)
        except ValueError:
            break
        items.append(item)
    return items, False


def _as_str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def candidates_from(items: Sequence[Any], call: Call) -> list[Candidate]:
    out = []
    for j, raw in enumerate(items):
        d = raw if isinstance(raw, dict) else {}
        if call.anchor is not None and isinstance(raw, dict):
            raw = {**raw, "evidence": call.anchor}  # the passage asked about is the item's evidence
        out.append(Candidate(
            doc_id=call.doc.doc_id, patient_id=call.doc.patient_id, question=_as_str(d.get("question")),
            answer=_as_str(d.get("answer")), evidence=call.anchor or _as_str(d.get("evidence")),
            question_type=_as_str(d.get("question_type")) or "other", language=call.language,
            call_index=call.index, item_index=j, focus=call.focus, style=call.style, seed=call.seed,
            window=call.window, raw=raw))
    return out


# --------------------------------------------------------------------------------------------
# Output files


@dataclass
class OutputFiles:
    qa: Path
    rejected: Path
    progress: Path
    manifest: Path

    @classmethod
    def for_output(cls, out_path: str | Path) -> "OutputFiles":
        qa = Path(out_path)
        stem = qa.name[: -len(".jsonl")] if qa.name.endswith(".jsonl") else qa.name
        return cls(qa, qa.with_name(f"{stem}.rejected.jsonl"), qa.with_name(f"{stem}.progress.jsonl"),
                   qa.with_name("manifest.json"))


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    calls: int = 0
    calls_failed: int = 0
    candidates: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    truncated_replies: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _load_inputs(in_paths: Sequence[str | Path], settings: Settings, limit: int | None) -> tuple[list[Corpus], list[Document]]:
    corpora, selected = [], []
    for p in in_paths:
        corpus = load_corpus(p, settings)
        corpora.append(corpus)
        selected += corpus.documents[:limit] if limit is not None else corpus.documents
    ids = Counter(d.doc_id for c in corpora for d in c.documents)
    clashes = [i for i, n in ids.items() if n > 1]
    if clashes:
        raise SynthesisError(f"doc_id(s) occur in more than one input ({', '.join(clashes[:5])}); "
                             "give each input unique ids")
    return corpora, selected


def interleave_by_patient(docs: Sequence[Document]) -> list[Document]:
    """Round-robin over patients (first-seen order), keeping each patient's own order."""
    by_patient: dict[str, list[Document]] = {}
    for d in docs:
        by_patient.setdefault(d.patient_id, []).append(d)
    queues = list(by_patient.values())
    out: list[Document] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def _totals(files: OutputFiles) -> dict[str, Any]:
    """Counts over all runs, recomputed from the files (the files are the truth, not the memory)."""
    kept = read_rows(files.qa)
    rejected = read_rows(files.rejected)
    progress = read_rows(files.progress)
    reasons = Counter(r.get("drop_reason", "?") for r in rejected)
    done = {r["doc_id"] for r in progress if "doc_id" in r} | {r["doc_id"] for r in kept if "doc_id" in r}
    # a "truncated" row marks a reply cut off at max_tokens (an item lost), not a generated candidate
    n_cand = len(kept) + len(rejected) - reasons.get("truncated", 0)
    return {
        "documents_done": len(done),
        "documents_with_request_errors": sum(1 for r in progress if r.get("error")),
        "candidates": n_cand,
        "kept": len(kept),
        "kept_share": round(len(kept) / n_cand, 4) if n_cand else None,
        "kept_per_document": round(len(kept) / len(done), 3) if done else None,
        "dropped": sum(reasons.values()) - reasons.get("truncated", 0),
        "truncated_replies": reasons.get("truncated", 0),
        "drop_reasons": dict(reasons.most_common()),
        "question_types": dict(Counter(r.get("question_type") for r in kept).most_common()),
        "languages": dict(Counter(r.get("language") for r in kept).most_common()),
        "roundtrip_sibling_outranked": sum(1 for r in kept if (r.get("verdicts") or {}).get("roundtrip_siblings_above")),
    }


async def _run_call(call: Call, endpoints: EndpointPool, *, prompts: dict[str, Any], hints: dict[str, Hints],
                    temperature: float, stats: RunStats, evidence_enum: bool = True,
                    used_evidence: set[str] | None = None,
                    request_extra: dict[str, Any] | None = None) -> tuple[list[Candidate], int]:
    """One generation call -> candidates (+ number of items lost to a cut-off reply).

    ``used_evidence``: quotes earlier calls on this document already asked about; they leave the
    enum, so each call has to ground its questions somewhere new (small models otherwise return the
    same item again and again). ``prompts``: the run's template per language (``qa_anchor`` for
    anchored calls, else ``qa_generate``)."""
    hint = hints[call.language]
    lang_name = LANGUAGE_NAMES[call.language][call.language]
    if call.anchor is not None:  # the rules first and the passage last: the server caches the rules
        messages = prompts[call.language].messages(
            passage=call.anchor, style=hint.style[call.style], lang_name=lang_name)
        schema = generation_schema(1, with_evidence=False)
        max_tokens = ANCHORED_MAX_TOKENS
    else:
        text = call.doc.text if call.window is None else call.doc.text[call.window[0]:call.window[1]]
        messages = prompts[call.language].messages(
            document=text.strip(), n=str(call.n), focus=hint.focus[call.focus], style=hint.style[call.style],
            lang_name=lang_name)
        options = evidence_options(text) if evidence_enum else None
        if options and used_evidence:
            options = [o for o in options if o not in used_evidence] or options
        schema = generation_schema(call.n, options)
        max_tokens = TOKENS_PER_ITEM * call.n + 60
    rf = {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema}}
    result = await endpoints.acomplete(messages, max_tokens=max_tokens, temperature=temperature,
                                      seed=call.seed, response_format=rf, extra_body=request_extra)
    stats.calls += 1
    stats.llm_seconds += result.elapsed_s
    stats.prompt_tokens += int(result.usage.get("prompt_tokens") or 0)
    stats.completion_tokens += int(result.usage.get("completion_tokens") or 0)
    items, complete = parse_items(result.text)
    lost = 0
    if not complete:
        stats.truncated_replies += 1
        lost = 1  # the item that was being written when the reply was cut off
    return candidates_from(items, call), lost


def default_generator(generator: str | None, settings: Settings) -> str | Path:
    """``generator``, else ``CRAG_LLM_GGUF``, else Qwen2.5-Coder-0.5B where the ``[qwen]`` extra is
    installed (SmolLM2-135M produced almost no pairs that pass the filters), else the bundled SmolLM2."""
    if generator:
        return generator
    if settings.llm_gguf:
        return settings.llm_gguf

    try:
        qwen_gguf_path(settings.model_cache)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("QA synthesis falls back to the bundled SmolLM2-135M, which passes few pairs: %s", exc)
        return "smollm2"
    return QWEN_NAME


def synthesize_file(
    in_path: str | Path | Sequence[str | Path],
    out_path: str | Path,
    *,
    per_doc: int = 8,
    endpoints: list[str] | None = None,
    generator: str | None = None,
    concurrency: int = 4,
    seed: int = 0,
    limit: int | None = None,
    settings: Settings | None = None,
    progress: bool = True,
    model: str | None = None,
    per_call: int = 3,
    temperature: float = 0.7,
    window_chars: int | None = None,
    roundtrip: str = "bm25",
    roundtrip_k: int | None = None,
    skip_filters: Sequence[str] = (),
    evidence_enum: bool = True,
    interleave_patients: bool = False,
    request_extra: dict[str, Any] | None = None,
    strict_answers: bool = False,
    generator_pool: EndpointPool | None = None,
    anchored: bool = False,
) -> dict[str, Any]:
    """Generate, filter and append QA pairs for every document of ``in_path`` not done yet.

    ``in_path``: a documents.jsonl, a named corpus, or a list of them (``limit`` applies to each).
    ``endpoints`` None starts the embedded llama.cpp server with ``generator`` (a name from
    :data:`rag.local_llm.GENERATOR_NAMES` or a GGUF path; default ``settings.llm_gguf``).
    ``roundtrip``: ``"bm25"``, ``"dense:<embedder>"`` (e.g. ``dense:me5-small``) or ``"none"``; the
    reference index covers every document of the inputs, not only the ``limit`` selected.
    ``evidence_enum``: the schema lists the note's sentences as the only allowed evidence (verbatim
    quotes by construction where the server enforces the schema).
    ``interleave_patients``: take documents patient by patient in turn (one of each, then the next
    of each), so a partial output already covers many patients (a reader training while it grows
    can split by patient).
    ``request_extra``: more fields for every request body (sampling options such as
    ``{"presence_penalty": 0.5}``, or vLLM's ``chat_template_kwargs``).
    ``strict_answers``: drop pairs whose answer is not supported by the evidence quote itself (the
    default only requires support by the note and records ``answer_in_evidence``).
    ``generator_pool``: an open generator used instead of ``endpoints`` or the embedded server
    (``finetune.ray_stages`` passes one that records the replies in a worker, or replays them).
    ``anchored``: pick up to ``per_doc`` specific passages per note first and ask one question about
    each (``prompts/qa_anchor``; ``per_call`` and ``evidence_enum`` then do not apply).
    Returns the manifest (also written to ``manifest.json`` next to ``out_path``).
    """
    settings = settings or load_settings()
    if per_doc < 1 or per_call < 1 or concurrency < 1:
        raise ValueError("per_doc, per_call and concurrency must be >= 1")
    in_paths = [in_path] if isinstance(in_path, (str, Path)) else list(in_path)
    files = OutputFiles.for_output(out_path)
    # rejected, then kept, then the progress line: a document is finished once its kept pairs or its
    # progress line are written, so a kill between the files never redoes a document with pairs
    job: ResumableJob[Document] = ResumableJob(
        [files.qa, files.rejected, files.progress], done_in=[files.progress, files.qa], id_of=lambda d: d.doc_id,
        label="synthesize", concurrency=concurrency, progress=progress)

    corpora, selected = _load_inputs(in_paths, settings, limit)
    all_docs = [d for c in corpora for d in c.documents]
    if interleave_patients:
        selected = interleave_by_patient(selected)
    todo = job.pending(selected)
    old_manifest = json.loads(files.manifest.read_text(encoding="utf-8")) if files.manifest.is_file() else {}

    ctx = int(settings.llm_ctx)
    max_out = ANCHORED_MAX_TOKENS if anchored else TOKENS_PER_ITEM * per_call + 60
    if window_chars is None:
        window_chars = max(1000, int((ctx - max_out - PROMPT_OVERHEAD_TOKENS) * CHARS_PER_TOKEN))

    languages = sorted({doc_language(d) for d in selected} | {"en"})
    prompts = {lang: load_prompt(ANCHOR_PROMPT_NAME if anchored else PROMPT_NAME, lang) for lang in languages}
    hints = {lang: load_hints(lang) for lang in languages}
    prompt_versions = {lang: f"{prompts[lang].version}+{hints[lang].version}" for lang in languages}

    # filters: the reference retriever covers every input document
    patient_of = {d.doc_id: d.patient_id for d in all_docs}
    t_ref = time.monotonic()
    reference = None
    if todo and roundtrip != "none":
        if roundtrip == "bm25":
            reference = BM25Reference([d.doc_id for d in all_docs], [d.text for d in all_docs])
        elif roundtrip.startswith("dense:"):
            reference = DenseReference([d.doc_id for d in all_docs], [d.text for d in all_docs],
                                       get_embedder(roundtrip.split(":", 1)[1], settings))
        else:
            raise ValueError(f"roundtrip must be 'bm25', 'dense:<embedder>' or 'none', not {roundtrip!r}")
    ref_seconds = time.monotonic() - t_ref
    state: FilterState = default_filters(reference=reference, patient_of=patient_of, k=roundtrip_k,
                                         per_doc=per_doc, skip=skip_filters,
                                         answer_against="evidence" if strict_answers else "document")
    if state.duplicates is not None and todo:
        for r in read_rows(files.qa):
            state.duplicates.seen.setdefault(normalize(r.get("question", "")), r.get("qa_id", ""))

    stats = RunStats()
    generator_cm: AbstractContextManager[EndpointPool | None] = nullcontext(None)
    if todo and generator_pool is not None:
        generator_cm = nullcontext(generator_pool)
    elif todo:
        generator_cm = open_generator(endpoints, settings=settings, model=model, concurrency=concurrency,
                                      generator=None if endpoints else default_generator(generator, settings))
    with generator_cm as pool:
        generator_info: dict[str, Any] = pool.info if pool is not None else old_manifest.get("generator") or {}
        gen_name = str(generator_info.get("model", ""))
        if old_manifest and todo:
            before = (old_manifest.get("generator", {}).get("model"), old_manifest.get("prompt_versions"))
            if before != (gen_name, prompt_versions):
                log.warning("resuming %s with a different generator or prompt version than before (%s); the "
                            "records carry their own generator and prompt_version", files.qa, before)

        params = {"per_doc": per_doc, "per_call": per_call, "concurrency": concurrency, "seed": seed,
                  "limit": limit, "temperature": temperature, "window_chars": window_chars,
                  "max_tokens_per_call": max_out, "roundtrip": roundtrip, "evidence_enum": evidence_enum,
                  "interleave_patients": interleave_patients, "request_extra": request_extra,
                  "strict_answers": strict_answers, "anchored": anchored,
                  "roundtrip_k": next((getattr(f, "k", None) for f in state.filters if f.name == "roundtrip"), None),
                  "filters": state.names, "llm_ctx": ctx, "llm_threads": settings.llm_threads}

        earlier_runs = list(old_manifest.get("runs", []))
        if old_manifest.get("this_run") and not old_manifest["this_run"].get("finished"):
            earlier_runs.append({**old_manifest["this_run"], "interrupted": True})  # killed: last checkpoint

        def manifest(final: bool) -> dict[str, Any]:
            runs = list(earlier_runs)
            done = job.counts.done
            this_run = {
                "finished": final, "started_unix": round(time.time() - stats.elapsed(), 1),
                "documents_todo": len(todo), "documents_done": done,
                "documents_failed": job.counts.failed, "calls": stats.calls, "calls_failed": stats.calls_failed,
                "truncated_replies": stats.truncated_replies, "candidates": stats.candidates, "kept": stats.kept,
                "dropped": dict(stats.dropped.most_common()), "wall_s": round(stats.elapsed(), 1),
                "llm_request_s": round(stats.llm_seconds, 1), "reference_index_s": round(ref_seconds, 2),
                "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
                "kept_per_minute": round(stats.kept / (stats.elapsed() / 60), 2) if stats.elapsed() > 1 else None,
                "documents_per_minute": round(done / (stats.elapsed() / 60), 3) if stats.elapsed() > 1 else None,
                "completion_tokens_per_s": round(stats.completion_tokens / stats.elapsed(), 2) if stats.elapsed() > 1 else None,
            }
            return {
                "stage": "finetune.synthesize",
                "output": {"qa": str(files.qa), "rejected": str(files.rejected), "progress": str(files.progress)},
                "inputs": input_info(in_paths, corpora),
                "documents_selected": len(selected),
                "documents_skipped_as_done": len(selected) - len(todo),
                "parameters": params,
                "generator": generator_info,
                "prompt_versions": prompt_versions,
                "schema": SCHEMA_NAME,
                "reference_retriever": reference.label if reference is not None else None,
                "versions": versions(),
                "totals": _totals(files),
                "this_run": this_run,
                "runs": runs,
            }

        if pool is not None:
            endpoints_pool = pool

            async def work(doc: Document) -> Appends:
                return await _synthesize_document(
                    doc, endpoints_pool, files=files, state=state, prompts=prompts, hints=hints, per_doc=per_doc,
                    per_call=per_call, window_chars=window_chars, seed=seed, temperature=temperature, stats=stats,
                    evidence_enum=evidence_enum, request_extra=request_extra, gen_name=gen_name,
                    prompt_versions=prompt_versions, anchored=anchored)

            def postfix() -> dict[str, Any]:
                minutes = max(stats.elapsed(), 1e-6) / 60
                return {"kept": stats.kept, "pairs_per_min": f"{stats.kept / minutes:.1f}",
                        "tok_s": f"{stats.completion_tokens / max(stats.elapsed(), 1e-6):.1f}"}

            try:
                job.run(todo, work, pool=pool, postfix=postfix,
                        checkpoint=lambda: write_json(manifest(False), files.manifest))
            except JobStopped as exc:
                raise SynthesisError(str(exc)) from exc
        result = manifest(True)
        result["runs"] = result["runs"] + [result["this_run"]]
        write_json(result, files.manifest)
        return result


async def _synthesize_document(doc: Document, endpoints: EndpointPool, *, files: OutputFiles, state: FilterState,
                               prompts: dict[str, Any], hints: dict[str, Hints], per_doc: int, per_call: int,
                               window_chars: int, seed: int, temperature: float, stats: RunStats,
                               evidence_enum: bool, request_extra: dict[str, Any] | None, gen_name: str,
                               prompt_versions: dict[str, str], anchored: bool = False) -> Appends:
    """One document's calls, one after the other (each call's quotes leave the next call's enum), then
    its filtered rows; an LLMError after the client's retries leaves the document to the next run."""
    t0 = time.monotonic()
    cands: list[Candidate] = []
    lost = 0
    error: str | None = None
    used: set[str] = set()
    window = window_chars
    try:
        while True:
            calls = plan_calls(doc, per_doc=per_doc, per_call=per_call, window_chars=window, seed=seed,
                               anchored=anchored)
            try:
                for call in calls:  # sequential within a document; documents run in parallel
                    got, cut = await _run_call(call, endpoints, prompts=prompts, hints=hints,
                                               temperature=temperature, stats=stats,
                                               evidence_enum=evidence_enum, used_evidence=used,
                                               request_extra=request_extra)
                    used |= {c.evidence for c in got}
                    cands += got
                    lost += cut
                break
            except LLMRequestError as exc:
                # the text did not fit the context after all: smaller windows, same document
                if "context" in str(exc).lower() and window > 1500:
                    stats.calls_failed += 1
                    window //= 2
                    cands, lost, used = [], 0, set()
                    continue
                raise
    except LLMRequestError as exc:  # a 4xx the server will always refuse: record, do not retry
        stats.calls_failed += 1
        error = f"request refused: HTTP {exc.status}"
        calls = []
    except LLMError:
        stats.calls_failed += 1
        raise
    return _finish_document(doc, cands, lost, error, files=files, state=state, stats=stats, gen_name=gen_name,
                            prompt_versions=prompt_versions, n_calls=len(calls), seconds=time.monotonic() - t0)


def _finish_document(doc: Document, cands: list[Candidate], lost: int, error: str | None, *, files: OutputFiles,
                     state: FilterState, stats: RunStats, gen_name: str, prompt_versions: dict[str, str],
                     n_calls: int, seconds: float) -> Appends:
    lang = doc_language(doc)
    ctx = DocContext(doc.doc_id, doc.patient_id, doc.text, lang, names=patient_names(doc.extra))
    result = apply_filters(cands, ctx, state)
    pv = prompt_versions.get(lang, prompt_versions.get("en", ""))
    kept_rows = [QARecord.from_candidate(c, generator=gen_name, prompt_version=pv).to_json() for c in result.kept]
    rejected_rows = [{"qa_id": c.qa_id, "doc_id": c.doc_id, "drop_reason": d.reason, "detail": d.detail,
                      "question": c.question, "answer": c.answer, "evidence": c.evidence,
                      "question_type": c.question_type, "focus": c.focus, "verdicts": c.verdicts}
                     for c, d in result.dropped]
    if lost:
        rejected_rows.append({"qa_id": f"{doc.doc_id}#cut", "doc_id": doc.doc_id, "drop_reason": "truncated",
                              "detail": "reply cut off at max_tokens", "question": "", "answer": "", "evidence": ""})
    reasons = Counter(r["drop_reason"] for r in rejected_rows)
    stats.candidates += len(cands)
    stats.kept += len(kept_rows)
    stats.dropped.update(reasons)
    # order matters for resume: rejected, then kept, then the progress line
    return [(files.rejected, rejected_rows), (files.qa, kept_rows),
            (files.progress, [{"doc_id": doc.doc_id, "patient_id": doc.patient_id, "calls": n_calls,
                               "candidates": len(cands), "kept": len(kept_rows), "dropped": dict(reasons),
                               "seconds": round(seconds, 2), "finished_unix": round(time.time(), 1),
                               "error": error}])]


# --------------------------------------------------------------------------------------------
# CLI


def _markdown(manifest: dict[str, Any]) -> str:
    t, r = manifest["totals"], manifest["this_run"]
    rows = [("documents done (all runs)", t["documents_done"]), ("candidates", t["candidates"]),
            ("kept", t["kept"]), ("kept share", t["kept_share"]), ("kept per document", t["kept_per_document"]),
            ("this run: documents", r["documents_done"]), ("this run: wall s", r["wall_s"]),
            ("this run: kept pairs / minute", r["kept_per_minute"]),
            ("this run: completion tokens / s", r["completion_tokens_per_s"])]
    rows += [(f"dropped: {k}", v) for k, v in t["drop_reasons"].items()]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.synthesize", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inputs", action="append", required=True,
                    help="documents.jsonl or a named corpus; repeat for several (doc_ids must be unique)")
    ap.add_argument("--out", required=True, help="qa.jsonl to append to (manifest.json is written next to it)")
    ap.add_argument("--per-doc", type=int, default=8, help="questions asked per document (default 8)")
    ap.add_argument("--per-call", type=int, default=3,
                    help="at most this many questions per call (default 3; 1 for sub-1B generators)")
    ap.add_argument("--endpoint", action="append", default=None,
                    help="OpenAI-compatible base URL ending in /v1 (repeatable); none = embedded llama.cpp")
    ap.add_argument("--model", default=None, help="model name at the endpoint(s) (default CRAG_LLM_MODEL)")
    ap.add_argument("--generator", default=None,
                    help="embedded server: smollm2, qwen2.5-coder-0.5b or a GGUF path (default CRAG_LLM_GGUF, "
                         "else qwen2.5-coder-0.5b where installed)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--limit", type=int, default=None, help="first N documents of each input")
    ap.add_argument("--window-chars", type=int, default=None, help="longest text per call (default from llm_ctx)")
    ap.add_argument("--roundtrip", default="bm25", help="bm25 (default), dense:<embedder> or none")
    ap.add_argument("--roundtrip-k", type=int, default=None, help="default: 5%% of the corpus, 2..10")
    ap.add_argument("--skip-filter", action="append", default=[], help="leave out a filter by name")
    ap.add_argument("--free-evidence", action="store_true",
                    help="evidence as a free string instead of an enum of the note's sentences")
    ap.add_argument("--interleave-patients", action="store_true",
                    help="one document per patient in turn, so a partial output covers many patients")
    ap.add_argument("--request-extra", type=json.loads, default=None,
                    help='JSON object merged into every request, e.g. \'{"presence_penalty": 0.5}\'')
    ap.add_argument("--strict-answers", action="store_true",
                    help="drop answers not supported by the evidence quote itself (for reference-answer sets)")
    ap.add_argument("--anchored", action="store_true",
                    help="pick the note's specific passages first, one short call per passage (finetune.anchors)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default CRAG_LLM_THREADS=1)")
    ap.add_argument("--no-progress", action="store_true")
    add_engine_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    overrides = {"llm_threads": args.threads} if args.threads else {}
    settings = load_settings(**overrides)
    try:
        with engine_from_args(args) as engine:
            run: Callable[..., dict[str, Any]] = synthesize_file
            if engine.distributed:
                # python -m runs this file as __main__: ray_stages must use it, not import a second copy
                sys.modules.setdefault("finetune.synthesize", sys.modules[__name__])
                from finetune.ray_stages import synthesize_partitioned  # it imports this module: not at the top

                run = functools.partial(synthesize_partitioned, engine)
            manifest = run(
                args.inputs, args.out, per_doc=args.per_doc, endpoints=args.endpoint, generator=args.generator,
                concurrency=args.concurrency, seed=args.seed, limit=args.limit, settings=settings,
                progress=not args.no_progress, model=args.model, per_call=args.per_call,
                temperature=args.temperature, window_chars=args.window_chars, roundtrip=args.roundtrip,
                roundtrip_k=args.roundtrip_k, skip_filters=args.skip_filter, evidence_enum=not args.free_evidence,
                interleave_patients=args.interleave_patients, request_extra=args.request_extra,
                strict_answers=args.strict_answers, anchored=args.anchored)
    except (SynthesisError, LLMError, EngineError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md = _markdown(manifest)
    qa = OutputFiles.for_output(args.out).qa
    qa.with_name("summary.md").write_text(md + "\n", encoding="utf-8")
    _plot(manifest, qa.with_name("summary.png"))
    print(md)
    return 0


def _plot(manifest: dict[str, Any], path: Path) -> None:
    """Kept pairs and drops per filter (all runs) as a bar chart next to the output."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is a convenience; the JSON and markdown carry the numbers
        return
    t = manifest["totals"]
    labels = ["kept"] + list(t["drop_reasons"])
    values = [t["kept"]] + list(t["drop_reasons"].values())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(labels[::-1], values[::-1], color=["#999"] * (len(values) - 1) + ["#2a7"])
    ax.set_xlabel("candidate QA pairs")
    gen = manifest.get("generator", {})
    ax.set_title(f"{t['documents_done']} documents, {gen.get('label') or gen.get('model', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
