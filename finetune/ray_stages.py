"""QA synthesis on a distributed engine (``--engine ray``): generation in patient partitions, then the
single-process filter pass over the recorded replies.

Why two phases: generating is the expensive part and is independent per document (a document's calls
depend only on its own earlier replies), but the filters are not: the exact-duplicate filter keeps
the first copy of a question *in corpus order* and the round-trip filter ranks against the whole
corpus. Filtering inside partitions would keep different pairs than the local run. So

1. every partition runs :func:`finetune.synthesize.synthesize_file` on its documents in a worker,
   against the same endpoints (or its own embedded llama.cpp server), through a
   :class:`RecordingPool` that logs each reply under a digest of its request; the worker's own output
   is scratch, the reply log is the part (``<out dir>/parts/<stem>/part-NNNNN.jsonl``);
2. the driver runs ``synthesize_file`` once more over the whole input, one document at a time in
   corpus order, with a :class:`ReplayPool` that answers every request from those logs. This is the
   local run, with its filters, resume files and manifest; only the generator is a recording.

So ``qa.jsonl`` and ``qa.rejected.jsonl`` are byte-identical to a single-process run with
``concurrency=1`` whenever the generator answers the same request the same way (fixed per-call seeds
are sent; temperature 0 or a seeded sampler, one slot per server). The progress log carries wall-clock
times and is never identical. Phase 2 costs the filters only (BM25 round trip ~1k questions/s).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from finetune.engine import Engine, EngineError, Part, digest, group_of, parts_dir, plan_parts, run_parts
from finetune.llm_jobs import EndpointPool, open_generator
from finetune.synthesize import OutputFiles, default_generator, synthesize_file
from rag.config import Settings, load_settings
from rag.corpus import load_corpus
from rag.jsonl_log import append_rows, read_rows, repair_tail
from rag.llm import ChatResult, LLMRequestError, LLMUnavailable, Messages
from rag.manifest import atomic_write_text, write_json

REPLIES_DB = "replies.sqlite"


def request_key(messages: Messages, kwargs: Mapping[str, Any]) -> str:
    """The identity of a request: its messages and every sampling and format option (seed included)."""
    blob = json.dumps({"messages": messages, **kwargs}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RecordingPool(EndpointPool):
    """The worker's generator, each reply also appended to ``log`` under its request key.

    A reply is logged as soon as it arrives, before the job marks its document finished, so a
    resumed partition never lacks a reply its output depends on. A refusal (HTTP 4xx) is logged too:
    the local run reacts to it (smaller windows, or a document recorded as refused), so must the replay.
    """

    def __init__(self, clients: Sequence[Any], info: Mapping[str, Any], log: Path) -> None:
        super().__init__(clients, info)
        self.log = log

    @classmethod
    def around(cls, pool: EndpointPool, log: Path) -> "RecordingPool":
        return cls(pool.clients, pool.info, log)

    async def acomplete(self, messages: Messages, **kwargs: Any) -> ChatResult:
        key = request_key(messages, kwargs)
        try:
            result = await super().acomplete(messages, **kwargs)
        except LLMRequestError as exc:
            append_rows(self.log, [{"key": key, "refused": {"message": str(exc), "status": exc.status}}])
            raise
        append_rows(self.log, [{"key": key, "result": dataclasses.asdict(result)}])
        return result


class ReplyStore:
    """Every recorded reply of a run, by request key, in SQLite: at 400k documents the replies do not
    fit comfortably in the driver's memory, and a lookup stays a few microseconds."""

    def __init__(self, path: Path, part_files: Iterable[Path]) -> None:
        path.unlink(missing_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE replies (key TEXT PRIMARY KEY, row TEXT NOT NULL)")
        for part_file in part_files:
            with part_file.open(encoding="utf-8") as fh:
                rows = ((json.loads(line)["key"], line) for line in fh if line.strip())
                self.db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?)", rows)
        self.db.commit()

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.db.execute("SELECT row FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found else None

    def close(self) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)


class ReplayPool(EndpointPool):
    """Answers each request with the reply recorded for it; ``info`` is the recording generator's, so
    records and manifest name the model that really answered."""

    def __init__(self, replies: ReplyStore, info: Mapping[str, Any]) -> None:  # no clients: nothing to call
        self.clients, self.inflight, self.info = [], [], {**info, "replayed": True}
        self.replies = replies

    @property
    def model(self) -> str:
        return str(self.info.get("model", ""))

    async def acomplete(self, messages: Messages, **kwargs: Any) -> ChatResult:
        row = self.replies.get(request_key(messages, kwargs))
        if row is None:  # an LLMError: the document is left undone, as after a failed call
            raise LLMUnavailable("no recorded reply for this request; delete the partitions' .done markers and rerun")
        if "refused" in row:
            raise LLMRequestError(row["refused"]["message"], int(row["refused"]["status"]))
        return ChatResult(**row["result"])

    async def aclose(self) -> None:
        pass

    def close(self) -> None:
        pass


def synthesize_part(documents: list[dict[str, Any]], work_dir: str, settings: Settings, endpoints: list[str] | None,
                    model: str | None, generator: str | None, concurrency: int,
                    options: dict[str, Any]) -> dict[str, Any]:
    """Worker task: generate for one partition's documents, recording every reply.

    ``work_dir`` holds the partition's resumable run and reply log: a worker killed half-way resumes
    there (where it can see the folder) and loses at most the documents in flight."""
    work = Path(work_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError:  # a node that cannot write the driver's folder: start the partition over
        work = Path(tempfile.mkdtemp(prefix="crag-synthesize-part-"))
    docs_path, log = work / "docs.jsonl", work / "replies.jsonl"
    atomic_write_text(docs_path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in documents))
    repair_tail(log)
    files = OutputFiles.for_output(work / "run" / "qa.jsonl")
    with open_generator(endpoints, settings=settings, model=model, concurrency=concurrency,
                        generator=None if endpoints else default_generator(generator, settings)) as pool:
        manifest = synthesize_file(docs_path, files.qa, generator_pool=RecordingPool.around(pool, log),
                                   concurrency=concurrency, settings=settings, progress=False, roundtrip="none",
                                   **options)
        info = dict(pool.info)
    finished = sorted({str(r["doc_id"]) for path in (files.progress, files.qa) for r in read_rows(path)
                       if "doc_id" in r})
    complete = set(finished) >= {str(d["doc_id"]) for d in documents}
    replies = log.read_text(encoding="utf-8") if log.is_file() else ""
    if complete:
        shutil.rmtree(work, ignore_errors=True)
    return {"replies": replies, "finished": finished, "complete": complete, "generator": info,
            "this_run": manifest.get("this_run", {})}


def synthesize_partitioned(engine: Engine, in_path: str | Path | Sequence[str | Path], out_path: str | Path, *,
                           settings: Settings | None = None, progress: bool = True, endpoints: list[str] | None = None,
                           model: str | None = None, generator: str | None = None, concurrency: int = 4,
                           limit: int | None = None, per_doc: int = 8, per_call: int = 3, seed: int = 0,
                           temperature: float = 0.7, window_chars: int | None = None,
                           evidence_enum: bool = True, request_extra: dict[str, Any] | None = None,
                           roundtrip: str = "bm25", roundtrip_k: int | None = None,
                           skip_filters: Sequence[str] = (), interleave_patients: bool = False,
                           strict_answers: bool = False, anchored: bool = False) -> dict[str, Any]:
    """:func:`finetune.synthesize.synthesize_file` with generation spread over ``engine``'s workers.

    Same arguments and outputs; ``concurrency`` is the requests in flight per partition. Resumable:
    documents finished in ``out_path`` are not generated again, finished partitions are not run
    again, and the filter pass resumes like the local run. Raises :class:`finetune.engine.EngineError`
    while partitions are missing (their finished siblings are kept)."""
    settings = settings or load_settings()
    in_paths = [in_path] if isinstance(in_path, (str, Path)) else list(in_path)
    files = OutputFiles.for_output(out_path)
    selected = [d for p in in_paths for d in load_corpus(p, settings, limit=limit).documents]
    for path in (files.progress, files.qa):
        repair_tail(path)
    finished = {str(r["doc_id"]) for path in (files.progress, files.qa) for r in read_rows(path) if "doc_id" in r}
    rows = {d.doc_id: d.to_json() for d in selected if d.doc_id not in finished}
    folder = parts_dir(files.qa)
    parts = plan_parts(((d.doc_id, group_of(d.patient_id, d.doc_id),
                         digest(json.dumps(d.to_json(), sort_keys=True, ensure_ascii=False))) for d in selected),
                       engine.partitions, folder)
    generation = {"per_doc": per_doc, "per_call": per_call, "seed": seed, "temperature": temperature,
                  "window_chars": window_chars, "evidence_enum": evidence_enum, "request_extra": request_extra,
                  "anchored": anchored}
    params = {"stage": "synthesize", **generation, "endpoints": endpoints, "model": model, "generator": generator,
              "llm_ctx": settings.llm_ctx}
    incomplete: list[str] = []

    def store(part: Part, result: dict[str, Any]) -> list[str]:
        atomic_write_text(part.path(".jsonl"), result["replies"])
        write_json({"generator": result["generator"], "this_run": result["this_run"]}, part.path(".manifest.json"))
        if not result["complete"]:
            incomplete.append(part.name)
        return result["finished"]

    report = run_parts(engine, parts, target="finetune.ray_stages:synthesize_part", params=params,
                       call=lambda part, ids: {"documents": [rows[i] for i in ids],
                                               "work_dir": str(part.scratch(params)), "settings": settings,
                                               "endpoints": endpoints, "model": model, "generator": generator,
                                               "concurrency": concurrency, "options": generation},
                       store=store, pending=rows, cpus=1.0 if endpoints else float(settings.llm_threads),
                       progress=progress, label="synthesize")
    if incomplete:
        raise EngineError(f"synthesize: {len(incomplete)} partitions left documents undone "
                          f"({', '.join(incomplete[:3])}): the generator failed for them; run the same command "
                          "again to resume")
    part_files = [p.path(".jsonl") for p in parts if p.path(".jsonl").is_file()]
    info: dict[str, Any] = {}
    for part in parts:
        if part.path(".manifest.json").is_file():
            info = json.loads(part.path(".manifest.json").read_text(encoding="utf-8"))["generator"]
            break
    folder.mkdir(parents=True, exist_ok=True)
    replies = ReplyStore(folder / REPLIES_DB, part_files if rows else [])
    try:
        manifest = synthesize_file(
            in_paths, files.qa, per_doc=per_doc, per_call=per_call, seed=seed, temperature=temperature,
            window_chars=window_chars, evidence_enum=evidence_enum, request_extra=request_extra, roundtrip=roundtrip,
            roundtrip_k=roundtrip_k, skip_filters=skip_filters, interleave_patients=interleave_patients,
            strict_answers=strict_answers, anchored=anchored, limit=limit, settings=settings, progress=progress,
            concurrency=1,
            generator_pool=ReplayPool(replies, info))
    finally:
        replies.close()
    manifest["engine"] = {**engine.describe(), **report.to_json(), "parts_dir": str(folder),
                          "concurrency_per_partition": concurrency,
                          "filter_pass": "driver, one document at a time in corpus order, replayed replies"}
    _add_generation_time(manifest, report.seconds)
    write_json(manifest, files.manifest)
    return manifest


def _add_generation_time(manifest: dict[str, Any], seconds: float) -> None:
    """This run's wall time and rates over both phases: the filter pass alone would report a
    generation that took no time."""
    this_run = manifest.get("this_run") or {}
    wall = round(float(this_run.get("wall_s") or 0.0) + seconds, 1)
    minutes = wall / 60
    rated = wall > 1
    tokens = this_run.get("completion_tokens", 0)
    this_run.update({"wall_s": wall, "generation_wall_s": round(seconds, 1),
                     "kept_per_minute": round(this_run.get("kept", 0) / minutes, 2) if rated else None,
                     "documents_per_minute": round(this_run.get("documents_done", 0) / minutes, 3) if rated else None,
                     "completion_tokens_per_s": round(tokens / wall, 2) if rated else None})
    runs = manifest.get("runs") or []
    if runs and runs[-1] is not this_run:
        runs[-1] = this_run
