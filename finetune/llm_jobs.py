"""One resumable runner for the stages that send every document to the generator: QA synthesis
(:mod:`finetune.synthesize`) and translation (:mod:`finetune.translate`).

Why one runner: both stages run for hours to days against an endpoint that can drop out, and both
must survive a kill or a dead server without losing or repeating finished work. The rules live here
once, so the stages only say what one document turns into:

* **Resume by id.** An item is finished when its id is in one of the ``done_in`` logs; a rerun skips
  it. An item's rows go out with one ``write`` per log (:func:`rag.jsonl_log.append_rows`), in the
  order the item function gives them, the row that marks it finished last: a kill leaves the item
  finished or not, never half of it marked.
* **Torn tail.** A half line left by a kill is cut off (:func:`rag.jsonl_log.repair_tail`) before
  anything is read or appended.
* **Failures.** :class:`rag.llm.LLMClient` has already retried with backoff; an item whose call still
  fails is counted, left undone and retried by the next run. After ``max_consecutive_failures`` in a
  row the endpoint is taken for dead: no new item starts, the ones in flight finish and are written,
  and :class:`JobStopped` says how to continue. One bad document does not stop hours of work; a dead
  server does not burn every remaining document through its retries.
* **Concurrency.** ``concurrency`` items in flight on one event loop. Rows are appended by the loop
  itself between awaits, so each item is written once and whole, without locks.
"""
from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from rag.config import Settings
from rag.corpus import Corpus
from rag.jsonl_log import append_rows, read_rows, repair_tail
from rag.llm import ChatResult, LLMClient, LLMError, Messages
from rag.local_llm import EmbeddedLLMServer
from rag.manifest import package_versions, sha256_file

log = logging.getLogger(__name__)

T = TypeVar("T")

Appends = Sequence[tuple[Path, Sequence[dict[str, Any]]]]
"""What one finished item writes: rows per log, appended in this order (the marking row last)."""

MAX_CONSECUTIVE_FAILURES = 5
CHECKPOINT_EVERY_ITEMS = 10
CHECKPOINT_EVERY_S = 60.0


@dataclass
class JobCounts:
    """This run's tally; the logs hold the tally over all runs."""

    selected: int = 0
    skipped: int = 0  # finished by an earlier run
    done: int = 0
    failed: int = 0  # left undone after the client's retries; the next run retries them


class JobStopped(LLMError):
    """The generator failed for several items in a row; finished items are kept and a rerun resumes.

    An :class:`~rag.llm.LLMError`, so a CLI that already reports endpoint errors reports this one too.
    """

    def __init__(self, message: str, counts: JobCounts):
        super().__init__(message)
        self.counts = counts


# --------------------------------------------------------------------------------------------
# The generator a run talks to


class EndpointPool:
    """Clients for one or several endpoints behind one ``acomplete``.

    Each request goes to the endpoint with the fewest in flight, so a slower server gets less work
    instead of a fixed share. ``info`` describes the generator for the manifest.
    """

    def __init__(self, clients: Sequence[LLMClient], info: Mapping[str, Any] | None = None):
        if not clients:
            raise ValueError("EndpointPool needs at least one client")
        self.clients = list(clients)
        self.inflight = [0] * len(self.clients)
        self.info: dict[str, Any] = dict(info or {})

    @property
    def model(self) -> str:
        return self.clients[0].model

    def pick(self) -> int:
        return min(range(len(self.clients)), key=lambda i: self.inflight[i])

    async def acomplete(self, messages: Messages, **kwargs: Any) -> ChatResult:
        """:meth:`rag.llm.LLMClient.acomplete` on the least busy endpoint (same arguments)."""
        i = self.pick()
        self.inflight[i] += 1
        try:
            return await self.clients[i].acomplete(messages, **kwargs)
        finally:
            self.inflight[i] -= 1

    async def aclose(self) -> None:
        """Close the async connections of the running loop (they belong to it and die with it)."""
        for c in self.clients:
            await c.aclose()

    def close(self) -> None:
        for c in self.clients:
            c.close()


@contextmanager
def open_generator(endpoints: Sequence[str] | None, *, settings: Settings, model: str | None = None,
                   generator: str | Path | None = None, concurrency: int = 1) -> Iterator[EndpointPool]:
    """The given OpenAI-compatible ``endpoints``, else the embedded llama.cpp server with
    ``generator`` (default ``settings.llm_gguf``) and one slot of ``llm_ctx`` per request in flight.

    The embedded server gets a long timeout: on CPU one request can take minutes while the other
    slots decode. Clients are closed and the server stopped on exit, also after an error.
    """
    server: EmbeddedLLMServer | None = None
    clients: list[LLMClient] = []
    try:
        if endpoints:
            key = settings.api_key()
            clients = [LLMClient(url, model or settings.llm_model, key, timeout_s=settings.llm_timeout_s,
                                 max_retries=settings.llm_max_retries) for url in endpoints]
            info: dict[str, Any] = {"kind": "endpoints", "endpoints": [c.base_url for c in clients],
                                    "model": model or settings.llm_model}
        else:
            ctx = int(settings.llm_ctx)
            server = EmbeddedLLMServer(generator or settings.llm_gguf, threads=settings.llm_threads,
                                       ctx=ctx * concurrency, parallel=concurrency, model_cache=settings.model_cache)
            server.start()
            clients = [server.client(timeout_s=max(settings.llm_timeout_s, 600.0),
                                     max_retries=settings.llm_max_retries)]
            info = {"kind": "embedded llama.cpp", "model": server.alias, "label": server.label,
                    "gguf": str(server.gguf_path), "gguf_bytes": server.gguf_path.stat().st_size,
                    "threads": server.threads, "slots": server.parallel, "ctx_per_slot": ctx,
                    "startup_s": round(server.startup_s or 0.0, 2)}
        yield EndpointPool(clients, info)
    finally:
        for c in clients:
            c.close()
        if server is not None:
            server.stop()


# --------------------------------------------------------------------------------------------
# The runner


class ResumableJob(Generic[T]):
    """Runs an async item function over items not finished yet and appends what each returns.

    ``logs``: every append-only log the job writes (their torn tails are cut before reading).
    ``done_in``: the logs whose rows mark an item finished (default: all ``logs``), matched on
    ``id_field`` against ``id_of(item)``.
    ``label``/``unit``/``noun``: the progress bar's title and unit, and the word for an item in
    messages ("document" -> "3 documents in a row failed").
    ``fsync``: wait for each item's rows to reach the disk (off, like the stages so far: a lost
    tail after a power cut is redone by the next run).
    """

    def __init__(self, logs: Sequence[str | Path], *, id_of: Callable[[T], str],
                 done_in: Sequence[str | Path] | None = None, id_field: str = "doc_id", label: str = "job",
                 unit: str = "doc", noun: str = "document", concurrency: int = 1, progress: bool = True,
                 fsync: bool = False, max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES):
        if concurrency < 1 or max_consecutive_failures < 1:
            raise ValueError("concurrency and max_consecutive_failures must be >= 1")
        self.logs = [Path(p) for p in logs]
        self.done_in = [Path(p) for p in done_in] if done_in is not None else list(self.logs)
        self.id_of = id_of
        self.id_field = id_field
        self.label = label
        self.unit = unit
        self.noun = noun
        self.concurrency = concurrency
        self.progress = progress
        self.fsync = fsync
        self.max_consecutive_failures = max_consecutive_failures
        self.counts = JobCounts()

    def repair(self) -> None:
        """Create the logs' folders and cut a half-written last line off each log."""
        for path in self.logs:
            path.parent.mkdir(parents=True, exist_ok=True)
            cut = repair_tail(path)
            if cut:
                log.warning("%s: cut %d bytes of a half-written last line (an interrupted run)", path.name, cut)

    def finished_ids(self) -> set[str]:
        return {r[self.id_field] for p in self.done_in for r in read_rows(p) if self.id_field in r}

    def pending(self, items: Iterable[T]) -> list[T]:
        """``items`` not finished by an earlier run, in their order (repairs the logs first)."""
        self.repair()
        done = self.finished_ids()
        selected = list(items)
        todo = [item for item in selected if self.id_of(item) not in done]
        self.counts.selected = len(selected)
        self.counts.skipped = len(selected) - len(todo)
        return todo

    def run(self, items: Sequence[T], work: Callable[[T], Awaitable[Appends]], *,
            pool: EndpointPool | None = None, checkpoint: Callable[[], None] | None = None,
            postfix: Callable[[], Mapping[str, Any]] | None = None) -> JobCounts:
        """:meth:`arun` on a fresh event loop."""
        if not items:
            return self.counts
        return asyncio.run(self.arun(items, work, pool=pool, checkpoint=checkpoint, postfix=postfix))

    async def arun(self, items: Sequence[T], work: Callable[[T], Awaitable[Appends]], *,
                   pool: EndpointPool | None = None, checkpoint: Callable[[], None] | None = None,
                   postfix: Callable[[], Mapping[str, Any]] | None = None) -> JobCounts:
        """Process ``items`` with ``work`` and append what it returns; returns this run's counts.

        ``work`` raising :class:`~rag.llm.LLMError` leaves the item undone (counted as failed);
        any other exception is a bug and ends the run. ``checkpoint`` is called after every
        ``CHECKPOINT_EVERY_ITEMS`` finished items or ``CHECKPOINT_EVERY_S`` seconds (the stages
        rewrite their manifest there); ``postfix`` gives the progress bar's extra fields.
        ``pool``'s async connections are closed at the end, inside this loop.
        Raises :class:`JobStopped` after ``max_consecutive_failures`` failures in a row.
        """
        from tqdm.auto import tqdm

        queue = deque(items)
        bar = tqdm(total=len(queue), unit=self.unit, disable=not self.progress, desc=self.label, dynamic_ncols=True)
        consecutive = 0
        stopped: list[JobStopped] = []
        last_checkpoint = time.monotonic()

        async def worker() -> None:
            nonlocal consecutive, last_checkpoint
            while queue and not stopped:
                item = queue.popleft()
                try:
                    appends = await work(item)
                except LLMError as exc:
                    self.counts.failed += 1
                    consecutive += 1
                    log.warning("%s %s left undone after the client's retries: %s", self.noun, self.id_of(item),
                                type(exc).__name__)
                    if consecutive >= self.max_consecutive_failures and not stopped:
                        stopped.append(JobStopped(
                            f"{consecutive} {self.noun}s in a row failed (last: {exc}); stopping. Finished "
                            f"{self.noun}s are kept; run the same command again to resume.", self.counts))
                    bar.update(1)
                    continue
                consecutive = 0
                # no await from here on: this item's rows go out before another worker runs
                for path, rows in appends:
                    append_rows(path, rows, fsync=self.fsync)
                self.counts.done += 1
                bar.update(1)
                if postfix is not None:
                    bar.set_postfix(**postfix())
                if checkpoint is not None and (self.counts.done % CHECKPOINT_EVERY_ITEMS == 0
                                               or time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S):
                    last_checkpoint = time.monotonic()
                    checkpoint()

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, min(self.concurrency, len(items))))))
        finally:
            bar.close()
            if pool is not None:
                await pool.aclose()
        if stopped:
            raise stopped[0]
        if self.counts.failed:
            log.warning("%d %s(s) failed and were left undone; run the same command again to retry them",
                        self.counts.failed, self.noun)
        return self.counts


# --------------------------------------------------------------------------------------------
# What every stage's manifest records


def input_info(in_paths: Sequence[str | Path], corpora: Sequence[Corpus]) -> list[dict[str, Any]]:
    """Each input as given, what it resolved to, and its checksum where it is a file, so a manifest
    says which documents a run saw."""
    out = []
    for p, corpus in zip(in_paths, corpora):
        src = Path(corpus.source)
        info: dict[str, Any] = {"input": str(p), "corpus": corpus.name, "path": str(src),
                                "documents": len(corpus), "patients": len(corpus.patients()),
                                "patient_structure": corpus.patient_structure}
        if src.is_file():
            info["sha256"] = sha256_file(src)
        out.append(info)
    return out


def versions() -> dict[str, str]:
    return {"python": platform.python_version(),
            **package_versions(("xllamacpp", "httpx", "rapidfuzz", "bm25s", "jsonschema", "sentence-transformers"))}
