"""Translation through the generator client: German documents into English (optional stage), and
English search questions into German (German query sets over the same notes).

    python -m finetune.translate --in grascco_phi --out var/translate/grascco_en.jsonl --endpoint http://gpu:8000/v1
    python -m finetune.translate --in pseudo_de.jsonl --out en.jsonl --generator qwen2.5-coder-0.5b --limit 5
    python -m finetune.translate --questions data/qa/physionet_deid_dev/qa.jsonl --out qa.de.jsonl --generator qwen2.5-coder-1.5b

Questions: each QA row's ``question`` is translated alone (``prompts/translate_question.<source>.txt``,
rules first and the question last, so the server's prompt cache keeps the rules); the row keeps its document, patient and
answer, gets ``qa_id`` ``<qa_id>@<target>``, ``language`` = target and ``translation`` (source
question, prompt version, model). A reply that is empty, copies the source, is not detected as the
target language, or fails the round trip is dropped and counted, never kept; resumable like documents.
The round trip: embedded with a multilingual model (me5-small), the translation's own source must be
among its ``ROUND_TRIP_TOP`` nearest source questions (not only the nearest: generic questions such
as "What is the patient's diagnosis?" have near-twins); a small generator that swaps "oxygen
saturation" for "blood pressure" writes a fluent question about something else, which this catches.

Why optional: no translation model ships with the project. The CPU generators (SmolLM2-135M,
Qwen2.5-Coder-0.5B) translate clinical German poorly, so on CPU this stage
is a plumbing check; on a GPU host, point it at a real instruct model served by vLLM.

How: each document is cut at blank lines into pieces of at most ``--piece-chars`` and every piece is
translated on its own and put back between the original separators, so the layout (paragraphs,
lists, headers) survives by construction. The prompt (``prompts/translate.<source>.txt``) asks to copy
names, dates, numbers and IDs unchanged, and each output document records how many of the source's
"keep" tokens (tokens with digits, and the surrogate names from gold PHI spans where present) are
still in the translation (``extra.translation.preserved_share``): the pseudonymized surrogates must
survive translation, or the later stages see different patients. PHI span offsets no longer point
into the translated text, so they are not carried over.

Output is ``documents.jsonl`` (same ``doc_id``/``patient_id``, ``language`` = target), append-only
and resumable through :mod:`finetune.llm_jobs` like :mod:`finetune.synthesize` (finished documents
are skipped, a failed one is retried by the next run, a dead endpoint stops the run with the
finished documents kept), with ``manifest.json`` next to it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finetune.llm_jobs import Appends, EndpointPool, JobStopped, ResumableJob, input_info, open_generator, versions
from finetune.qa_schema import read_qa
from rag.config import Settings, load_settings
from rag.corpus import CorpusError, Document, load_corpus
from rag.jsonl_log import read_rows
from rag.language import detect_language
from rag.llm import LLMError
from rag.manifest import write_json
from rag.prompts import load_prompt

log = logging.getLogger(__name__)

PROMPT_NAME = "translate"
QUESTION_PROMPT = "translate_question"
ROUND_TRIP_TOP = 3
TARGET_NAMES = {"en": "English", "de": "German"}
_BLANK = re.compile(r"\n[ \t]*\n+")
_KEEP = re.compile(r"\S*\d\S*")
NAME_LABELS = frozenset({"PTName", "HCPName", "RelativeProxyName", "NAME_PATIENT", "NAME_DOCTOR", "NAME_RELATIVE"})


def split_pieces(text: str, max_chars: int = 1500) -> list[tuple[str, str]]:
    """(piece, separator after it) pairs that join back to ``text`` exactly: cut at blank lines, a
    paragraph longer than ``max_chars`` at line ends (or hard), neighbours packed up to ``max_chars``."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _BLANK.finditer(text):
        parts.append((text[pos:m.start()], m.group(0)))
        pos = m.end()
    parts.append((text[pos:], ""))
    cut: list[tuple[str, str]] = []
    for piece, sep in parts:
        while len(piece) > max_chars:
            i = piece.rfind("\n", 0, max_chars)
            if i <= 0:
                cut.append((piece[:max_chars], ""))
                piece = piece[max_chars:]
            else:
                cut.append((piece[:i], "\n"))
                piece = piece[i + 1:]
        cut.append((piece, sep))
    out: list[tuple[str, str]] = []
    for piece, sep in cut:
        if out and len(out[-1][0]) + len(out[-1][1]) + len(piece) <= max_chars:
            prev, psep = out[-1]
            out[-1] = (prev + psep + piece, sep)
        else:
            out.append((piece, sep))
    return out


def keep_tokens(doc: Document) -> list[str]:
    """What a translation must copy unchanged: tokens with digits (dates, doses, IDs) and surrogate
    names from the gold PHI spans, if the corpus has them."""
    tokens = {t.strip(".,;:()[]") for t in _KEEP.findall(doc.text)}
    for span in (doc.extra or {}).get("phi") or []:
        if isinstance(span, dict) and span.get("label") in NAME_LABELS:
            tokens |= {w for w in str(span.get("text", "")).split() if len(w) > 2 and w[0].isupper()}
    return sorted(t for t in tokens if t)


def preserved_share(tokens: Sequence[str], translation: str) -> float:
    if not tokens:
        return 1.0
    return sum(1 for t in tokens if t in translation) / len(tokens)


def _clean(reply: str, source: str) -> str:
    """The reply without fences or the prompt's markers, and with no more line structure than the
    source piece had (a one-line piece stays one line, no blank lines appear inside a paragraph), so
    the document's layout stays what the splitter made it whatever the model does."""
    text = reply.strip("\n")
    if text.startswith("```"):
        text = text.strip("`").strip("\n")
    if text.startswith("<<<"):
        text = text[3:]
    if text.rstrip().endswith(">>>"):
        text = text.rstrip()[:-3]
    text = text.strip("\n")
    if "\n" not in source:
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    elif not _BLANK.search(source):
        text = _BLANK.sub("\n", text)
    return text


@dataclass
class TranslateStats:
    started: float = field(default_factory=time.monotonic)
    pieces: int = 0
    completion_tokens: int = 0
    preserved: list[float] = field(default_factory=list)


async def _translate_doc(doc: Document, llm: EndpointPool, prompt: Any, target: str, piece_chars: int,
                         stats: TranslateStats) -> dict[str, Any]:
    out = []
    for piece, sep in split_pieces(doc.text, piece_chars):
        if not piece.strip():
            out.append(piece + sep)
            continue
        lead = piece[: len(piece) - len(piece.lstrip())]
        trail = piece[len(piece.rstrip()):]
        messages = prompt.messages(text=piece.strip(), target_name=TARGET_NAMES[target])
        result = await llm.acomplete(messages, max_tokens=int(len(piece) / 2.5) + 64, temperature=0.0, seed=0)
        stats.pieces += 1
        stats.completion_tokens += int(result.usage.get("completion_tokens") or 0)
        out.append(lead + _clean(result.text, piece.strip()) + trail + sep)
    translated = "".join(out)
    tokens = keep_tokens(doc)
    share = preserved_share(tokens, translated)
    stats.preserved.append(share)
    info = {"from": doc.language or "de", "to": target, "prompt_version": prompt.version, "model": llm.model,
            "keep_tokens": len(tokens), "preserved_share": round(share, 3),
            "missing": [t for t in tokens if t not in translated][:20]}
    return dataclasses.replace(doc, text=translated, language=target, extra={"translation": info}).to_json()


def translate_file(in_path: str | Path, out_path: str | Path, *, source: str = "de", target: str = "en",
                   endpoints: list[str] | None = None, generator: str | None = None, model: str | None = None,
                   concurrency: int = 2, limit: int | None = None, piece_chars: int = 1500,
                   settings: Settings | None = None, progress: bool = True) -> dict[str, Any]:
    """Translate the ``source``-language documents of ``in_path`` not yet in ``out_path``; returns the
    manifest (also written as ``manifest.json`` next to the output, also when a dead endpoint stopped
    the run, so the manifest counts what was finished)."""
    settings = settings or load_settings()
    out = Path(out_path)
    job: ResumableJob[Document] = ResumableJob([out], id_of=lambda d: d.doc_id, label="translate",
                                               concurrency=concurrency, progress=progress)
    corpus = load_corpus(in_path, settings)
    docs = [d for d in corpus.documents if (d.language or source) == source]
    docs = docs[:limit] if limit is not None else docs
    todo = job.pending(docs)
    prompt = load_prompt(PROMPT_NAME, source)
    if prompt.language != source:
        raise ValueError(f"no prompt prompts/{PROMPT_NAME}.{source}.txt for source language {source!r}")
    stats = TranslateStats()
    gen: dict[str, Any] = {}
    stopped: JobStopped | None = None
    if todo:
        with open_generator(endpoints, settings=settings, model=model, generator=generator,
                            concurrency=concurrency) as pool:
            gen = {k: pool.info[k] for k in ("kind", "endpoints", "model", "label") if k in pool.info}

            async def work(doc: Document) -> Appends:
                return [(out, [await _translate_doc(doc, pool, prompt, target, piece_chars, stats)])]

            try:
                job.run(todo, work, pool=pool)
            except JobStopped as exc:
                stopped = exc
    rows = read_rows(out)
    shares = [r["extra"]["translation"]["preserved_share"] for r in rows if "extra" in r]
    elapsed = time.monotonic() - stats.started
    manifest = {
        "stage": "finetune.translate", "output": str(out), "inputs": input_info([in_path], [corpus]),
        "parameters": {"source": source, "target": target, "piece_chars": piece_chars, "concurrency": concurrency,
                       "limit": limit, "temperature": 0.0},
        "generator": gen, "prompt_version": prompt.version, "versions": versions(),
        "totals": {"documents_selected": len(docs), "documents_translated": len(rows),
                   "mean_preserved_share": round(sum(shares) / len(shares), 3) if shares else None},
        "this_run": {"documents": job.counts.done, "failed": job.counts.failed, "pieces": stats.pieces,
                     "completion_tokens": stats.completion_tokens, "wall_s": round(elapsed, 1),
                     "skipped_as_done": len(docs) - len(todo)},
    }
    if stopped is not None:
        manifest["this_run"]["stopped"] = str(stopped)
    write_json(manifest, out.with_name("manifest.json"))
    if stopped is not None:
        raise stopped
    return manifest


def _question_reply(reply: str) -> str:
    """The first non-empty line of the reply, without a 'German:' label, quotes or fences."""
    lines = [line.strip() for line in reply.strip().strip("`").splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = re.sub(r"^(?:german|deutsch|translation|übersetzung)\s*:\s*", "", text, flags=re.IGNORECASE)
    return text.strip().strip('"“”„').strip()


class RoundTrip:
    """Is a translation near (cosine, multilingual embedder) its own source, among all sources?"""

    def __init__(self, sources: dict[str, str], embedder: str, settings: Settings) -> None:
        from rag.embedders import get_embedder  # torch: only when a run checks round trips

        self.embedder = get_embedder(embedder, settings)
        self.ids = list(sources)
        self.vectors = np.asarray(self.embedder.embed_queries([sources[i] for i in self.ids]))

    def nearest(self, translation: str, n: int = ROUND_TRIP_TOP) -> list[str]:
        vector = np.asarray(self.embedder.embed_queries([translation]))[0]
        return [self.ids[i] for i in np.argsort(-(self.vectors @ vector))[:n]]


def question_problem(source: str, translation: str, target: str) -> str | None:
    """Why a translated question is not kept ('empty', 'copied', 'language'), or None."""
    if len(translation) < 3:
        return "empty"
    if translation.casefold() == source.casefold():
        return "copied"
    if detect_language(translation, default=target) != target:
        return "language"
    return None


def translate_questions(qa_path: str | Path, out_path: str | Path, *, source: str = "en", target: str = "de",
                        endpoints: list[str] | None = None, generator: str | None = None, model: str | None = None,
                        concurrency: int = 1, limit: int | None = None, round_trip: str | None = "me5-small",
                        settings: Settings | None = None, progress: bool = True) -> dict[str, Any]:
    """Translate the ``source``-language questions of a QA file not yet in ``out_path`` (or in its
    ``.dropped.jsonl`` log); returns the manifest, written as ``<out stem>.manifest.json``.
    ``round_trip``: the embedder of the round-trip check (None: no check)."""
    settings = settings or load_settings()
    out = Path(out_path)
    dropped = out.with_suffix(".dropped.jsonl")
    rows, _ = read_qa(qa_path, required=("qa_id", "doc_id", "question"))
    in_source = [r for r in rows if (r.get("language") or source) == source]
    chosen = in_source[:limit] if limit is not None else in_source
    job: ResumableJob[dict[str, Any]] = ResumableJob([out, dropped], id_of=lambda r: r["qa_id"], id_field="source_qa_id",
                                                     label="translate questions", unit="q", noun="question",
                                                     concurrency=concurrency, progress=progress)
    todo = job.pending(chosen)
    prompt = load_prompt(QUESTION_PROMPT, source)
    if prompt.language != source:
        raise ValueError(f"no prompt prompts/{QUESTION_PROMPT}.{source}.txt for source language {source!r}")
    gen: dict[str, Any] = {}
    stopped: JobStopped | None = None
    started = time.monotonic()
    if todo:
        checker = RoundTrip({r["qa_id"]: r["question"] for r in in_source}, round_trip, settings) if round_trip else None
        with open_generator(endpoints, settings=settings, model=model, generator=generator,
                            concurrency=concurrency) as pool:
            gen = {k: pool.info[k] for k in ("kind", "endpoints", "model", "label") if k in pool.info}

            async def work(row: dict[str, Any]) -> Appends:
                messages = prompt.messages(text=row["question"], target_name=TARGET_NAMES[target])
                result = await pool.acomplete(messages, max_tokens=int(len(row["question"]) / 2) + 32,
                                              temperature=0.0, seed=0)
                text = _question_reply(result.text)
                info = {"from": source, "to": target, "source_question": row["question"],
                        "prompt_version": prompt.version, "model": pool.model}
                problem = question_problem(row["question"], text, target)
                if problem is None and checker is not None and row["qa_id"] not in checker.nearest(text):
                    problem = "round_trip"
                if problem is not None:
                    return [(dropped, [{"source_qa_id": row["qa_id"], "reason": problem, "reply": result.text[:300]}])]
                return [(out, [{**row, "qa_id": f"{row['qa_id']}@{target}", "source_qa_id": row["qa_id"],
                                "question": text, "language": target, "translation": info}])]

            try:
                job.run(todo, work, pool=pool)
            except JobStopped as exc:
                stopped = exc
    kept, lost = read_rows(out), read_rows(dropped)
    manifest = {
        "stage": "finetune.translate --questions", "output": str(out),
        "input": {"path": str(qa_path), "questions": len(rows), "selected": len(chosen)},
        "parameters": {"source": source, "target": target, "concurrency": concurrency, "limit": limit,
                       "temperature": 0.0, "round_trip": round_trip},
        "generator": gen, "prompt_version": prompt.version, "versions": versions(),
        "totals": {"kept": len(kept), "dropped": dict(sorted(Counter(r.get("reason") for r in lost).items()))},
        "this_run": {"questions": job.counts.done, "failed": job.counts.failed,
                     "wall_s": round(time.monotonic() - started, 1), "skipped_as_done": len(chosen) - len(todo)},
    }
    if stopped is not None:
        manifest["this_run"]["stopped"] = str(stopped)
    write_json(manifest, out.with_name(out.stem + ".manifest.json"))
    if stopped is not None:
        raise stopped
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.translate", description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--in", dest="inp", help="documents.jsonl or a named corpus (e.g. grascco_phi)")
    what.add_argument("--questions", help="a QA file (qa.jsonl): translate its questions (default en -> de)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--source", default=None, help="source language (default: de for documents, en for questions)")
    ap.add_argument("--target", default=None, choices=sorted(TARGET_NAMES),
                    help="target language (default: en for documents, de for questions)")
    ap.add_argument("--endpoint", action="append", default=None, help="OpenAI-compatible /v1 URL (repeatable)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--generator", default=None, help="embedded server: smollm2, qwen2.5-coder-0.5b or a GGUF path")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--piece-chars", type=int, default=1500)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    common: dict[str, Any] = {"endpoints": args.endpoint, "generator": args.generator, "model": args.model,
                              "concurrency": args.concurrency, "limit": args.limit, "progress": not args.no_progress}
    try:
        if args.questions:
            m = translate_questions(args.questions, args.out, source=args.source or "en", target=args.target or "de",
                                    **common)
        else:
            m = translate_file(args.inp, args.out, source=args.source or "de", target=args.target or "en",
                               piece_chars=args.piece_chars, **common)
    except (LLMError, ValueError, FileNotFoundError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"totals": m["totals"], "this_run": m["this_run"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
