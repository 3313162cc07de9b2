"""Where the data stages run: in this process (``local``, the default) or as Ray tasks over patient
partitions (``ray``; ``pip install -e '.[scale]'``).

    python -m finetune.pseudonymize --in docs.jsonl --out pseudo.jsonl --key-file KEY --engine ray
    python -m finetune.synthesize --in pseudo.jsonl --out qa/qa.jsonl --engine ray --ray-address ray://head:10001
    python -m finetune.engine embed --corpus pseudo.jsonl --embedder me5-small --engine ray --ray-cpus 8
    python -m finetune.pipeline --preset cpu-demo --engine ray

Why partitions by patient: surrogates and splits are per patient, so a patient's documents stay in
one partition and a partition is a self-contained unit of work: run anywhere, retried whole, skipped
once finished. A partition is ``sha256(patient) mod P`` (a document without patient is its own
patient, as in pseudonymization): the same documents land in the same partition on every run and
every cluster, which is what makes finished partitions reusable.

Why results travel back to the driver: a worker computes a partition (resuming inside it from a
scratch folder where it can see one) and returns the result through Ray's object store; the driver
writes ``parts/<stem>/part-00007.jsonl`` (or ``.npz``) and then ``part-00007.done``, last. So a
cluster needs no shared file system, and a ``.done`` marker always means a complete part file. The
marker records a fingerprint of the stage parameters and of every item (id and content digest) of
its partition; a rerun skips a part whose marker matches, so changed input or parameters redo
exactly the partitions they touch.

Why the final file is written by the driver, in input order: the stages' contracts are single JSONL
files in document order, and the local run is the reference. Pseudonymization concatenates parts in
input order; QA synthesis replays recorded replies through the single-process filter pass
(``finetune.ray_stages``); the index is written by the driver from vectors computed in the workers.
Where the work is deterministic the result equals the local run byte for byte (docs/scale.md).

This module depends on ``rag`` only (and on Ray, imported where it is used), so ``rag.index`` can be
driven from here: ``python -m finetune.engine embed``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.chunking import Chunk
from rag.config import Settings, load_settings
from rag.corpus import load_corpus
from rag.embedders import get_embedder
from rag.index import EMBED_BATCH, ChunkIndex, SyncReport
from rag.manifest import atomic_write_text, write_json

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
DEFAULT_PARTITIONS = 64
PART_MARKER = ".done"


class EngineError(RuntimeError):
    """Partitions failed or are missing; finished ones are kept and a rerun resumes."""


# --------------------------------------------------------------------------------------------
# Partitions


def group_of(patient_id: str | None, doc_id: str) -> str:
    """The unit that must stay together: the patient, or the document where there is none (the rule
    ``finetune.pseudonymize`` uses for surrogates)."""
    return str(patient_id) if patient_id is not None and str(patient_id).strip() else f"doc:{doc_id}"


def partition_of(group: str, partitions: int) -> int:
    """A stable hash, not Python's ``hash`` (salted per process): same group, same partition, anywhere."""
    return int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") % partitions


def digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()[:16]


@dataclass(frozen=True)
class Part:
    """One partition of a stage: its items (documents or chunks) in input order, and its files."""

    index: int
    folder: Path
    item_ids: tuple[str, ...]
    digests: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}{suffix}"

    @property
    def marker(self) -> Path:
        return self.path(PART_MARKER)

    def scratch(self, params: Mapping[str, Any]) -> Path:
        """Where a worker keeps its in-progress state, per fingerprint: a partition resumes inside itself
        only from work on the same items with the same parameters."""
        return self.path(f".{self.fingerprint(params)}.work")

    def fingerprint(self, params: Mapping[str, Any]) -> str:
        blob = json.dumps({"params": params, "items": list(zip(self.item_ids, self.digests))}, sort_keys=True,
                          default=str)
        return digest(blob)

    def read_marker(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_done(self, fingerprint: str, needed: Collection[str]) -> bool:
        """The marker matches these parameters and items, and its part file holds every ``needed`` item."""
        marker = self.read_marker()
        if not marker or marker.get("fingerprint") != fingerprint:
            return False
        covered = set(marker.get("covered", ()))
        return all(i in covered for i in needed)

    def write_marker(self, fingerprint: str, covered: Iterable[str], extra: Mapping[str, Any] | None = None) -> None:
        """Written after the part file: a marker always means a complete part."""
        write_json({"part": self.name, "fingerprint": fingerprint, "covered": sorted(covered),
                    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})},
                   self.marker)


def private_scratch(name: str) -> Path:
    """A folder only this user can open, in the temp dir of the machine that calls it (a worker).

    For work files that hold identifying text, such as the input of a pseudonymization partition:
    they must not land next to the pseudonymized output, and must outlive a killed worker so that the
    partition resumes (on a local Ray, or wherever the task lands on the same node)."""
    base = Path(tempfile.gettempdir()) / f"crag-engine-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    info = base.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise EngineError(f"{base} belongs to another user or is open to others; remove it or set TMPDIR")
    folder = base / name
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def parts_dir(out_path: str | Path) -> Path:
    """``<out dir>/parts/<out stem>``: the stage's output folder, one subfolder per output file."""
    out_path = Path(out_path)
    stem = out_path.name[: -len(".jsonl")] if out_path.name.endswith(".jsonl") else out_path.name
    return out_path.parent / "parts" / stem


def plan_parts(items: Iterable[tuple[str, str, str]], partitions: int, folder: Path) -> list[Part]:
    """Non-empty partitions of ``(item_id, group, content digest)`` items, each in input order."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    ids: dict[int, list[str]] = {}
    digests: dict[int, list[str]] = {}
    seen: set[str] = set()
    for item_id, group, content in items:
        if item_id in seen:
            raise EngineError(f"id {item_id!r} occurs twice: partitions need unique ids")
        seen.add(item_id)
        p = partition_of(group, partitions)
        ids.setdefault(p, []).append(item_id)
        digests.setdefault(p, []).append(content)
    return [Part(p, Path(folder), tuple(ids[p]), tuple(digests[p])) for p in sorted(ids)]


@dataclass
class PartsReport:
    """What a partitioned stage did this run (recorded under ``engine`` in the stage's manifest)."""

    parts: int = 0
    skipped: int = 0  # finished by an earlier run (marker matched)
    ran: int = 0
    idle: int = 0  # nothing pending in them (their items are already in the final output)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"parts": self.parts, "skipped_finished": self.skipped, "ran": self.ran, "nothing_pending": self.idle,
                "seconds": round(self.seconds, 2)}


def run_parts(engine: "Engine", parts: Sequence[Part], *, target: str, params: Mapping[str, Any],
              call: Callable[[Part, list[str]], dict[str, Any]], store: Callable[[Part, Any], Iterable[str]],
              pending: Collection[str] | None = None, cpus: float = 1.0, progress: bool = True,
              label: str = "parts") -> PartsReport:
    """Run ``target`` (``"module:function"``) once per unfinished partition and store each result.

    ``call(part, ids)`` gives the task's keyword arguments for the part's ``ids`` still ``pending``
    (all of its items when ``pending`` is None); ``store(part, result)`` writes the part file on the
    driver and returns the item ids it holds, then the marker is written. Raises :class:`EngineError`
    when partitions failed, after storing every one that finished."""
    t0 = time.perf_counter()
    report = PartsReport(parts=len(parts))
    todo: list[tuple[Part, str, list[str]]] = []
    for part in parts:
        needed = [i for i in part.item_ids if pending is None or i in pending]
        fingerprint = part.fingerprint(params)
        if not needed:
            report.idle += 1
        elif part.is_done(fingerprint, needed):
            report.skipped += 1
        else:
            todo.append((part, fingerprint, needed))

    def on_result(i: int, result: Any) -> None:
        part, fingerprint, _ = todo[i]
        covered = list(store(part, result))
        part.write_marker(fingerprint, covered)
        report.ran += 1

    if todo:
        log.info("%s: %d of %d partitions to run (%d finished earlier)", label, len(todo), len(parts), report.skipped)
        engine.map(target, [call(part, needed) for part, _, needed in todo], on_result, cpus=cpus,
                   progress=progress, label=label, names=[part.name for part, _, _ in todo])
    report.seconds = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------------------------
# Engines


def invoke(target: str, kwargs: Mapping[str, Any]) -> Any:
    """Call ``"module:function"`` by name: workers import the stage code themselves, so nothing from
    the driver's ``__main__`` has to be pickled."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


class Engine:
    """Runs a function over partitions; ``distributed`` False means a stage keeps today's single-process path."""

    name = "base"
    distributed = False

    def __init__(self, partitions: int = DEFAULT_PARTITIONS) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions

    def map(self, target: str, calls: Sequence[Mapping[str, Any]], on_result: Callable[[int, Any], None], *,
            cpus: float = 1.0, progress: bool = True, label: str = "parts", names: Sequence[str] | None = None) -> None:
        """``invoke(target, calls[i])`` for every i; ``on_result(i, result)`` on the driver as each finishes.
        Failures are collected and raised together as :class:`EngineError` at the end."""
        raise NotImplementedError

    def max_task_cpus(self) -> float:
        """The most CPUs one task may ask for and still be scheduled."""
        return float(os.cpu_count() or 1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "partitions": self.partitions}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _failed(label: str, failures: Sequence[str], total: int) -> EngineError:
    return EngineError(f"{label}: {len(failures)} of {total} partitions failed ({'; '.join(failures[:3])}); "
                       "finished partitions are kept: run the same command again to resume")


class LocalEngine(Engine):
    """Today's behaviour: every stage runs in this process (with its own ``--workers`` or ``--concurrency``).

    ``map`` runs partitions one after the other in-process, for code that partitions regardless."""

    name = "local"

    def map(self, target: str, calls: Sequence[Mapping[str, Any]], on_result: Callable[[int, Any], None], *,
            cpus: float = 1.0, progress: bool = True, label: str = "parts", names: Sequence[str] | None = None) -> None:
        failures = []
        for i, kwargs in enumerate(calls):
            try:
                result = invoke(target, kwargs)
            except Exception as exc:  # one bad partition must not lose the others' work
                log.warning("%s: partition %s failed: %s", label, names[i] if names else i, exc)
                failures.append(f"{names[i] if names else i}: {type(exc).__name__}: {exc}")
                continue
            on_result(i, result)
        if failures:
            raise _failed(label, failures, len(calls))


class RayEngine(Engine):
    """Ray tasks: connects to ``address`` (``ray://head:10001``, or a cluster address such as ``auto``),
    else starts a local Ray for this run with ``num_cpus`` (default: all) that listens on loopback only.

    A Ray already initialised in this process (a notebook, a test fixture) is used as it is and left
    running. Workers import this package: install it (and prepare the models) on every node.
    """

    name = "ray"
    distributed = True

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 partitions: int = DEFAULT_PARTITIONS, max_retries: int = 2) -> None:
        super().__init__(partitions)
        self.address = address or None
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self._owned = False
        self._started = False

    def start(self) -> "RayEngine":
        if self._started:
            return self
        # no usage statistics leave the machine (Ray asks, or sends, otherwise)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
            self._owned = True
        self._started = True
        return self

    def cluster_cpus(self) -> float:
        import ray

        self.start()
        return float(ray.cluster_resources().get("CPU", 1.0))

    def max_task_cpus(self) -> float:
        return self.cluster_cpus()

    def describe(self) -> dict[str, Any]:
        import ray

        return {**super().describe(), "address": self.address or "local (started for the run)",
                "cluster_cpus": self.cluster_cpus(), "ray": ray.__version__}

    def map(self, target: str, calls: Sequence[Mapping[str, Any]], on_result: Callable[[int, Any], None], *,
            cpus: float = 1.0, progress: bool = True, label: str = "parts", names: Sequence[str] | None = None) -> None:
        import ray
        from ray.exceptions import RayError
        from tqdm.auto import tqdm

        self.start()
        task = ray.remote(invoke).options(num_cpus=cpus, max_retries=self.max_retries, name=label)
        # a bounded window: arguments (documents, chunk texts) enter the object store as tasks are
        # submitted, not all at once
        window = max(2, int(2 * self.cluster_cpus() / max(cpus, 1e-3)))
        queue = list(enumerate(calls))[::-1]
        running: dict[Any, int] = {}
        failures: list[str] = []
        bar = tqdm(total=len(calls), unit="part", desc=label, disable=not progress, file=sys.stderr)
        try:
            while queue or running:
                while queue and len(running) < window:
                    i, kwargs = queue.pop()
                    running[task.remote(target, kwargs)] = i
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    i = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayError as exc:
                        cause = getattr(exc, "cause", None) or exc
                        log.warning("%s: partition %s failed: %s", label, names[i] if names else i, cause)
                        failures.append(f"{names[i] if names else i}: {type(cause).__name__}: {cause}")
                    else:
                        on_result(i, result)
                    bar.update(1)
        finally:
            bar.close()
            for ref in running:  # the driver stopped early (an error while storing): do not leave work running
                ray.cancel(ref)
        if failures:
            raise _failed(label, failures, len(calls))

    def close(self) -> None:
        if self._owned:
            import ray

            ray.shutdown()
        self._owned = self._started = False


def open_engine(name: str = "local", *, address: str | None = None, num_cpus: int | None = None,
                partitions: int | None = None) -> Engine:
    """The engine a command line asked for (``RAY_ADDRESS`` is the default address, as in Ray itself)."""
    if name == "local":
        return LocalEngine(partitions or DEFAULT_PARTITIONS)
    if name == "ray":
        return RayEngine(address or os.environ.get("RAY_ADDRESS") or None, num_cpus, partitions or DEFAULT_PARTITIONS)
    raise ValueError(f"unknown engine {name!r}; engines are {', '.join(ENGINES)}")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and the Ray options, the same on every command that has them."""
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: this process (default); ray: Ray tasks over patient partitions (extra [scale])")
    group.add_argument("--ray-address", default=None,
                       help="ray://head:10001 or a cluster address (default RAY_ADDRESS, else a local Ray for the run)")
    group.add_argument("--ray-cpus", type=int, default=None,
                       help="CPUs of the local Ray started for the run (default all)")
    group.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS,
                       help=f"patient partitions (default {DEFAULT_PARTITIONS}; keep it across reruns to reuse "
                            "finished ones)")


def engine_from_args(args: argparse.Namespace) -> Engine:
    return open_engine(args.engine, address=args.ray_address, num_cpus=args.ray_cpus, partitions=args.partitions)


# --------------------------------------------------------------------------------------------
# Embedding an index: vectors in the workers, the store written by the driver


def embed_batches(batches: Sequence[Sequence[str]], embedder: str, settings: Settings, device: str | None = None,
                  threads: int | None = None, kind: str = "passage") -> np.ndarray:
    """Worker task: ``kind`` ("passage" or "query") vectors of each batch, each batch embedded as one
    call, as ``ChunkIndex.sync`` does.

    A vector depends, in its last bits, on the batch it was computed in (padding length, kernel
    shapes) and on the number of threads that summed it; the same batches on the same thread count
    give the local run's vectors byte for byte. The embedder is loaded once per worker process."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    model = get_embedder(embedder, settings, device=device)
    embed = model.embed_queries if kind == "query" else model.embed_passages
    vectors = [embed(list(batch), show_progress=False) for batch in batches]
    return np.concatenate(vectors) if vectors else np.zeros((0, model.dim), dtype=np.float32)


def _chunk_item(chunk: Chunk) -> str:
    """A chunk's id plus its text's digest: a part made for an older version of a document is not reused."""
    return f"{chunk.chunk_id}@{digest(chunk.text)}"


def embed_chunks(engine: Engine, chunks: Sequence[Chunk], *, embedder: str, fingerprint: str, settings: Settings,
                 folder: Path, device: str | None = None, threads: int | None = None,
                 progress: bool = True) -> tuple[np.ndarray, PartsReport]:
    """Vectors of ``chunks`` in their order, computed by ``engine``'s workers (:func:`embed_on`)."""
    return embed_on(engine, [_chunk_item(c) for c in chunks], [c.text for c in chunks], embedder=embedder,
                    fingerprint=fingerprint, settings=settings, folder=folder, device=device, threads=threads,
                    progress=progress)


def embed_on(engine: Engine, items: Sequence[str], texts: Sequence[str], *, embedder: str, fingerprint: str,
             settings: Settings, folder: Path, kind: str = "passage", device: str | None = None,
             threads: int | None = None, progress: bool = True) -> tuple[np.ndarray, PartsReport]:
    """Vectors of ``texts`` (unique ``items`` ids, ending in ``@<digest>``) in their order.

    Unlike the other stages this one is partitioned by the local run's batches (``EMBED_BATCH``
    texts in input order), not by patient: a vector belongs to no patient's surrogates or split, and
    whole batches, embedded on ``threads`` threads (the driver's count by default), give the local
    run's vectors byte for byte. Each part's vectors go to ``part-NNNNN.npz`` (ids and vectors)
    before its marker, so an interrupted run embeds only the partitions that had not finished."""
    batch_of = {item: i // EMBED_BATCH for i, item in enumerate(items)}
    parts = plan_parts(((item, f"batch:{batch_of[item]}", item.rsplit("@", 1)[1]) for item in items),
                       engine.partitions, folder)
    text_of = dict(zip(items, texts))
    if threads is None:
        import torch

        threads = torch.get_num_threads()

    def batches(ids: Sequence[str]) -> list[list[str]]:
        grouped: dict[int, list[str]] = {}
        for i in ids:  # a part holds whole batches, its ids in input order
            grouped.setdefault(batch_of[i], []).append(text_of[i])
        return list(grouped.values())

    def store(part: Part, vectors: np.ndarray) -> list[str]:
        tmp = part.path(".tmp.npz")
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, ids=np.array(part.item_ids), vectors=np.asarray(vectors, dtype=np.float32))
        os.replace(tmp, part.path(".npz"))
        return list(part.item_ids)

    report = run_parts(engine, parts, target="finetune.engine:embed_batches",
                       params={"stage": "embed", "embedder": fingerprint, "kind": kind, "batch": EMBED_BATCH,
                               "threads": threads},
                       call=lambda part, ids: {"batches": batches(ids), "embedder": embedder, "settings": settings,
                                               "device": device, "threads": threads, "kind": kind},
                       store=store, cpus=float(min(threads, engine.max_task_cpus())), progress=progress,
                       label=f"embed {kind}s")
    row = {item: i for i, item in enumerate(items)}
    out: np.ndarray | None = None
    for part in parts:
        with np.load(part.path(".npz")) as npz:
            vectors = npz["vectors"]
            if out is None:
                out = np.zeros((len(items), vectors.shape[1]), dtype=np.float32)
            for item, vector in zip(npz["ids"].tolist(), vectors):
                out[row[item]] = vector
    return (out if out is not None else np.zeros((0, 0), dtype=np.float32)), report


def build_index_with(engine: Engine, corpus: str, embedder: str | None = None, settings: Settings | None = None, *,
                     limit: int | None = None, progress: bool = True,
                     keep_parts: bool = False) -> tuple[ChunkIndex, SyncReport, dict[str, Any]]:
    """``rag.index.build_index`` with the embedding spread over ``engine``'s workers.

    The driver plans and writes the store (:meth:`rag.index.ChunkIndex.sync_with`): the same collection,
    chunk ids and metadata as a local build; the vectors are the same model's on the same kind of CPU.
    Parts live in ``<home>/engine/embed/<collection>/`` until the store holds them, then are removed
    (``keep_parts`` keeps them)."""
    settings = settings or load_settings()
    loaded = load_corpus(corpus, settings, limit=limit)
    name = embedder or settings.embedder
    model = get_embedder(name, settings, device=settings.device)
    index = ChunkIndex(loaded.name, model, settings)
    folder = Path(settings.home) / "engine" / "embed" / index.name
    if not engine.distributed:
        return index, index.sync(loaded.documents, progress=progress), {"engine": engine.describe()}
    reports: list[PartsReport] = []

    def vectors_for(chunks: list[Chunk]) -> np.ndarray:
        vectors, report = embed_chunks(engine, chunks, embedder=name, fingerprint=model.fingerprint,
                                       settings=settings, folder=folder, device=settings.device, progress=progress)
        reports.append(report)
        return vectors

    report = index.sync_with(loaded.documents, vectors_for)
    if not keep_parts:
        shutil.rmtree(folder, ignore_errors=True)
    info = {"engine": engine.describe(), "parts": reports[0].to_json() if reports else None}
    manifest = index.manifest() or {}
    manifest["engine"] = info
    index.manifest_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(index.manifest_path, json.dumps(manifest, indent=2))
    return index, report, info


def _iter_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", newline="\n") as fh:
        for line in fh:
            if line.strip():
                yield line if line.endswith("\n") else line + "\n"


class PartReader:
    """The lines of one part file, taken by id in input order: streams while the file is in that order
    (the usual case), buffers the lines it has to skip when it is not (a partition resumed out of order)."""

    def __init__(self, path: Path, id_field: str = "doc_id") -> None:
        self.path = path
        self.id_field = id_field
        self._lines = _iter_lines(path)
        self._buffer: dict[str, str] = {}

    def take(self, item_id: str) -> str:
        if item_id in self._buffer:
            return self._buffer.pop(item_id)
        for line in self._lines:
            found = str(json.loads(line).get(self.id_field))
            if found == item_id:
                return line
            self._buffer[found] = line
        raise EngineError(f"{self.path} has no row for {item_id!r}; delete its .done marker and rerun")


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.engine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help="build or update an index (rag.index) with the vectors computed by the engine")
    embed.add_argument("--corpus", default=None, help="named corpus or path (default from config)")
    embed.add_argument("--embedder", default=None, help="registry name or a local sentence-transformers folder")
    embed.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    embed.add_argument("--keep-parts", action="store_true",
                       help="keep the per-partition vectors after the store is written")
    embed.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_arguments(embed)
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings()
    t0 = time.perf_counter()
    try:
        with engine_from_args(args) as engine:
            index, report, info = build_index_with(engine, args.corpus or settings.corpus, args.embedder, settings,
                                                   limit=args.limit, progress=not args.quiet,
                                                   keep_parts=args.keep_parts)
    except (EngineError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"engine: {json.dumps(info)}")
    print(f"store: {index.store_dir / 'chroma'}  manifest: {index.manifest_path}  "
          f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
