"""The document model and the loaders that turn every data set into it (docs/design.md §3).

Everything downstream (chunking, index, QA synthesis, evaluation) sees only :class:`Document`, so
the quirks of each source (FHIR note types as lists, German letters without patients, PubMed
abstracts split into passages) are resolved here and nowhere else.

Bad input is never silently dropped or merged: a malformed row, a duplicate ``doc_id``, an empty
text or a missing patient becomes a :class:`Problem` that names the file and the line. With
``on_problem="raise"`` (the default) all problems of a file are collected first and raised together
as one :class:`CorpusError`, so a user fixes a file in one pass instead of one error at a time;
with ``on_problem="skip"`` the good rows are kept and the problems travel in ``Corpus.problems``.

Run ``python -m rag.corpus NAME_OR_PATH [--limit N]`` to see what a corpus holds.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

from rag.config import Settings, load_settings

log = logging.getLogger(__name__)

OnProblem = Literal["raise", "skip"]
ProblemKind = Literal[
    "malformed", "encoding", "duplicate_doc_id", "empty_text", "missing_patient_id", "missing_field"
]

#: Document fields besides ``doc_id``/``patient_id``/``text`` that a source row may fill by name.
OPTIONAL_FIELDS: tuple[str, ...] = ("case_id", "date", "doc_type", "specialty", "language", "source")
#: The scalar fields stored as metadata next to each chunk, in contract order.
METADATA_FIELDS: tuple[str, ...] = ("doc_id", "patient_id", *OPTIONAL_FIELDS)
DEFAULT_PATIENT_PATTERN = r"^(?P<patient>[^/]+)/"
MAX_LISTED_PROBLEMS = 20
REENCODE_HINT = "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass
class Document:
    """One clinical document in the form every later stage reads (docs/design.md §3).

    ``text`` is kept verbatim (no stripping): PHI spans and chunk offsets point into it.
    ``extra`` holds source fields without a place in the contract (PHI spans, authors, keywords).
    """

    doc_id: str
    patient_id: str
    text: str
    case_id: str | None = None
    date: str | None = None
    doc_type: str | None = None
    specialty: str | None = None
    language: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, str | int | float | bool]:
        """The scalar, non-None fields (no text, no extra): what the vector store can filter on."""
        return {name: getattr(self, name) for name in METADATA_FIELDS if getattr(self, name) is not None}

    def to_json(self) -> dict[str, Any]:
        """The ``documents.jsonl`` form: contract fields without None, ``extra`` only when non-empty."""
        out: dict[str, Any] = {"doc_id": self.doc_id, "patient_id": self.patient_id, "text": self.text}
        out.update({k: v for k, v in self.metadata().items() if k not in out})
        if self.extra:
            out["extra"] = self.extra
        return out

    def content_hash(self) -> str:
        """SHA-256 over the text and the metadata, in stable JSON.

        The index compares it to decide whether a document must be re-embedded. ``extra`` is left
        out on purpose: it is neither embedded nor stored, so a change there needs no re-index.
        """
        payload = {"text": self.text, **self.metadata()}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Patient:
    """A patient as the app lists them; only synthea carries names and demographics."""

    patient_id: str
    name: str | None = None
    birth_date: str | None = None
    gender: str | None = None
    deceased: str | None = None


@dataclass
class Problem:
    """One defect in the input, located so the user can open the file at the right line."""

    path: str
    line: int | None
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.kind}: {self.detail}"


class CorpusError(ValueError):
    """Raised when input has problems and ``on_problem="raise"``; lists every problem found."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self._message())

    def _message(self) -> str:
        count = len(self.problems)
        where = f" in {self.source}" if self.source else ""
        lines = [f"{count} problem{'s' if count != 1 else ''}{where}:"]
        lines += [f"  {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if count > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {count - MAX_LISTED_PROBLEMS} more")
        lines.append("Fix the rows above, or load with on_problem='skip' to keep only the good rows.")
        return "\n".join(lines)


@dataclass
class Corpus:
    """A loaded document set.

    ``patient_structure`` states how ``patient_id`` was obtained, because retrieval "inside one
    patient" means something different for each: ``native`` (the source has patients),
    ``one-per-document`` (no patients: each document is its own), ``per-abstract`` (PubMed).
    """

    name: str
    documents: list[Document]
    problems: list[Problem]
    patient_structure: str
    source: str

    def patients(self) -> list[str]:
        return sorted({doc.patient_id for doc in self.documents})

    def by_id(self) -> dict[str, Document]:
        return {doc.doc_id: doc for doc in self.documents}

    def __len__(self) -> int:
        return len(self.documents)


# --------------------------------------------------------------------------------------------
# Raw rows -> documents (shared by every loader)
# --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """A parsed source record and where it came from."""

    path: str
    line: int | None
    data: dict[str, Any]


@dataclass
class _FieldSpec:
    """How the keys of a source row map onto :class:`Document` fields.

    ``post`` lets a named loader finish a mapped row (first specialty of a list, ``pmid:`` prefix)
    while the generic rules (missing fields, duplicates, problems) stay in one place.
    """

    text_field: str = "text"
    id_field: str = "doc_id"
    patient_field: str = "patient_id"
    field_map: dict[str, str] = field(default_factory=dict)
    language: str | None = None
    source: str | None = None
    one_patient_per_document: bool = False
    post: Callable[[dict[str, Any]], None] | None = None
    patient_hint: str = ""

    def __post_init__(self) -> None:
        allowed = {"doc_id", "patient_id", "text", *OPTIONAL_FIELDS}
        bad = {k: v for k, v in self.field_map.items() if v not in allowed}
        if bad:
            raise ValueError(f"field_map targets must be Document fields {sorted(allowed)}; got {bad}")

    def map(self, row: dict[str, Any]) -> dict[str, Any]:
        core = {self.text_field: "text", self.id_field: "doc_id", self.patient_field: "patient_id"}
        out: dict[str, Any] = {"extra": {}}
        for key, value in row.items():
            target = self.field_map.get(key) or core.get(key) or (key if key in OPTIONAL_FIELDS else None)
            if target is not None:
                out[target] = value
            elif key == "extra" and isinstance(value, dict):  # our own documents.jsonl, read back
                out["extra"].update(value)
            elif value is not None:
                out["extra"][key] = value
        for name, default in (("language", self.language), ("source", self.source)):
            if out.get(name) is None:  # the row's own value wins over the loader's default
                out[name] = default
        if self.post is not None:
            self.post(out)
        return out


def _as_text(value: Any) -> str | None:
    """Optional metadata as a string; lists (FHIR note types, labels) are joined with '; '."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        joined = "; ".join(str(v) for v in value if v not in (None, ""))
        return joined or None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _as_id(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value)
    return text if text.strip() else None


def _make_document(row: _Row, spec: _FieldSpec) -> tuple[Document | None, list[Problem]]:
    """Validate one mapped row; return the document or every problem it has."""
    fields = spec.map(row.data)
    problems: list[Problem] = []

    def problem(kind: ProblemKind, detail: str) -> None:
        problems.append(Problem(row.path, row.line, kind, detail))

    doc_id = _as_id(fields.get("doc_id"))
    if doc_id is None:
        problem("missing_field", f"no document id in field {spec.id_field!r}")
    text = fields.get("text")
    if text is None:
        problem("missing_field", f"no text in field {spec.text_field!r}")
    elif not isinstance(text, str):
        problem("malformed", f"field {spec.text_field!r} must be a string, got {type(text).__name__}")
    elif not text.strip():
        problem("empty_text", f"document {doc_id!r} has an empty text")
    if spec.one_patient_per_document:
        patient_id = doc_id
    else:
        patient_id = _as_id(fields.get("patient_id"))
        if patient_id is None:
            hint = spec.patient_hint or (
                f"no patient id in field {spec.patient_field!r}; for a corpus without patients "
                "load with one_patient_per_document=True"
            )
            problem("missing_patient_id", f"document {doc_id!r}: {hint}")
    if problems:
        return None, problems
    assert doc_id is not None and patient_id is not None and isinstance(text, str)
    optional = {name: _as_text(fields.get(name)) for name in OPTIONAL_FIELDS}
    return Document(doc_id=doc_id, patient_id=patient_id, text=text, extra=fields["extra"], **optional), []


def _collect(
    records: Iterable[_Row | Problem],
    spec: _FieldSpec,
    *,
    name: str,
    source: str,
    patient_structure: str,
    on_problem: OnProblem,
    limit: int | None,
) -> Corpus:
    """Turn records into a corpus, applying the duplicate rule and the ``on_problem`` policy."""
    documents: list[Document] = []
    problems: list[Problem] = []
    first_seen: dict[str, _Row] = {}
    for record in records:
        if limit is not None and len(documents) >= limit:
            break
        if isinstance(record, Problem):
            problems.append(record)
            continue
        doc, row_problems = _make_document(record, spec)
        if doc is None:
            problems.extend(row_problems)
            continue
        first = first_seen.get(doc.doc_id)
        if first is not None:
            where = f"line {first.line}" if first.path == record.path else f"{first.path}:{first.line}"
            problems.append(Problem(record.path, record.line, "duplicate_doc_id",
                                    f"doc_id {doc.doc_id!r} already used on {where} (the first row is kept)"))
            continue
        first_seen[doc.doc_id] = record
        documents.append(doc)
    if problems and on_problem == "raise":
        raise CorpusError(problems, source)
    if problems:
        log.warning("%s: skipped %d problem row(s); see Corpus.problems", source, len(problems))
    return Corpus(name=name, documents=documents, problems=problems,
                  patient_structure=patient_structure, source=source)


def _check_on_problem(on_problem: str) -> None:
    if on_problem not in ("raise", "skip"):
        raise ValueError(f"on_problem must be 'raise' or 'skip', got {on_problem!r}")


def _existing_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    return path


# --------------------------------------------------------------------------------------------
# Readers: bytes -> records, with exact line numbers
# --------------------------------------------------------------------------------------------


def _encoding_problem(path: Path, line: int, file_offset: int, line_offset: int, bad: bytes) -> Problem:
    return Problem(str(path), line, "encoding",
                   f"not valid UTF-8: byte {bad[:4]!r} at byte offset {file_offset} of the file "
                   f"({line_offset} into the line); {REENCODE_HINT}")


def _decoded_lines(path: Path, bad: list[Problem]) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line number, text)`` decoding each line alone, so an encoding error has its line.

    Undecodable lines yield ``None`` and append an "encoding" problem to ``bad``.
    """
    offset = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append(_encoding_problem(path, number, offset + exc.start, exc.start,
                                             raw[exc.start:exc.end]))
                text = None
            offset += len(raw)
            if number == 1 and text is not None:
                text = text.removeprefix("\ufeff")
            yield number, text


def read_jsonl_objects(path: str | Path, problems: list[Problem]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every record of a JSON Lines file.

    The one JSONL reader for all our contracts (documents, queries, QA pairs, gold spans): bad lines
    (encoding, invalid JSON, not an object) are appended to ``problems`` with file and line instead
    of stopping at the first, so a caller can report them all at once.
    """
    rows: list[tuple[int, dict[str, Any]]] = []
    for record in _jsonl_records(Path(path)):
        if isinstance(record, Problem):
            problems.append(record)
        else:
            rows.append((record.line, record.data))
    return rows


def _jsonl_records(path: Path) -> Iterator[_Row | Problem]:
    bad: list[Problem] = []
    for number, text in _decoded_lines(path, bad):
        if text is None:
            yield from bad
            bad.clear()
            continue
        if not text.strip():
            continue  # blank lines (a trailing newline) carry no record
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Problem(str(path), number, "malformed", f"invalid JSON at column {exc.colno}: {exc.msg}")
            continue
        if not isinstance(data, dict):
            yield Problem(str(path), number, "malformed", f"expected a JSON object, got {type(data).__name__}")
            continue
        yield _Row(str(path), number, data)


def _csv_records(path: Path, delimiter: str) -> Iterator[_Row | Problem]:
    """CSV records with the file line where each starts (a quoted field may span lines)."""
    bad: list[Problem] = []
    bad_lines: set[int] = set()

    def lines() -> Iterator[str]:
        for number, text in _decoded_lines(path, bad):
            if text is None:
                bad_lines.add(number)
                text = "\n"  # keep the line count; the record that spans it is dropped below
            yield text

    reader = csv.reader(lines(), delimiter=delimiter)
    header: list[str] | None = None
    last_end = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield from bad
            yield Problem(str(path), reader.line_num, "malformed", f"CSV error: {exc}; stopped reading")
            return
        start, last_end = last_end + 1, reader.line_num
        yield from bad
        bad.clear()
        if bad_lines.intersection(range(start, last_end + 1)):
            if header is None:
                return  # without a readable header no row can be interpreted; the problem says why
            continue
        if not row:
            continue  # blank line
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            yield Problem(str(path), start, "malformed",
                          f"expected {len(header)} fields as in the header, got {len(row)}")
            continue
        yield _Row(str(path), start, {k: (v if v != "" else None) for k, v in zip(header, row)})
    yield from bad


def _text_folder_records(folder: Path, pattern: re.Pattern[str] | None) -> Iterator[_Row | Problem]:
    for file in sorted(p for p in folder.rglob("*.txt") if p.is_file()):
        relative = file.relative_to(folder).as_posix()
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            line_start = raw.rfind(b"\n", 0, exc.start) + 1
            yield _encoding_problem(file, line, exc.start, exc.start - line_start, raw[exc.start:exc.end])
            continue
        data: dict[str, Any] = {"doc_id": str(PurePosixPath(relative).with_suffix("")), "text": text}
        if pattern is not None:
            match = pattern.search(relative)
            data["patient_id"] = match.group("patient") if match else None
        yield _Row(str(file), None, data)


# --------------------------------------------------------------------------------------------
# Generic loaders
# --------------------------------------------------------------------------------------------


def _structure(one_patient_per_document: bool) -> str:
    return "one-per-document" if one_patient_per_document else "native"


def _load_jsonl(path: Path, spec: _FieldSpec, *, name: str, patient_structure: str,
                on_problem: OnProblem, limit: int | None) -> Corpus:
    _check_on_problem(on_problem)
    path = _existing_file(path)
    return _collect(_jsonl_records(path), spec, name=name, source=str(path),
                    patient_structure=patient_structure, on_problem=on_problem, limit=limit)


def load_jsonl(
    path: str | Path,
    *,
    name: str | None = None,
    text_field: str = "text",
    id_field: str = "doc_id",
    patient_field: str = "patient_id",
    on_problem: OnProblem = "raise",
    one_patient_per_document: bool = False,
    field_map: dict[str, str] | None = None,
    language: str | None = None,
    limit: int | None = None,
) -> Corpus:
    """Load a JSON Lines file of documents.

    ``field_map`` renames source keys to Document fields (``{"encounter_id": "case_id"}``); keys
    that are Document fields by name are taken as they are, all others go to ``extra``.
    ``language`` is the default for rows without one; ``source`` defaults to the corpus name (the
    file stem unless ``name`` is given), so citations say where a document came from.
    ``one_patient_per_document`` declares a corpus without patients: each document's
    ``patient_id`` is its ``doc_id``.
    """
    path = Path(path)
    name = name or path.stem
    spec = _FieldSpec(text_field=text_field, id_field=id_field, patient_field=patient_field,
                      field_map=dict(field_map or {}), language=language, source=name,
                      one_patient_per_document=one_patient_per_document)
    return _load_jsonl(path, spec, name=name, patient_structure=_structure(one_patient_per_document),
                       on_problem=on_problem, limit=limit)


def load_csv(
    path: str | Path,
    *,
    name: str | None = None,
    text_field: str = "text",
    id_field: str = "doc_id",
    patient_field: str = "patient_id",
    on_problem: OnProblem = "raise",
    one_patient_per_document: bool = False,
    field_map: dict[str, str] | None = None,
    language: str | None = None,
    limit: int | None = None,
    delimiter: str = ",",
) -> Corpus:
    """Load a CSV file with a header row; same rules as :func:`load_jsonl`, empty cells are missing.

    Problem line numbers are file lines (where the record starts), not record counts.
    """
    _check_on_problem(on_problem)
    path = _existing_file(path)
    name = name or path.stem
    spec = _FieldSpec(text_field=text_field, id_field=id_field, patient_field=patient_field,
                      field_map=dict(field_map or {}), language=language, source=name,
                      one_patient_per_document=one_patient_per_document)
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))  # long letters exceed 128 KiB
    return _collect(_csv_records(path, delimiter), spec, name=name, source=str(path),
                    patient_structure=_structure(one_patient_per_document), on_problem=on_problem,
                    limit=limit)


def load_text_folder(
    folder: str | Path,
    *,
    patient_pattern: str | None = DEFAULT_PATIENT_PATTERN,
    name: str | None = None,
    on_problem: OnProblem = "raise",
    language: str | None = None,
    limit: int | None = None,
) -> Corpus:
    """Load every ``*.txt`` below ``folder`` (recursively, sorted) as one document.

    ``doc_id`` is the relative path without ``.txt``. The patient is the named group ``patient`` of
    ``patient_pattern`` searched in the relative POSIX path (default: the first folder, as in
    ``<patient>/<note>.txt``); ``None`` means no patients, one per document.
    """
    _check_on_problem(on_problem)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {folder}")
    pattern = re.compile(patient_pattern) if patient_pattern is not None else None
    if pattern is not None and "patient" not in pattern.groupindex:
        raise ValueError(f"patient_pattern needs a named group (?P<patient>...): {patient_pattern!r}")
    if not any(p.is_file() for p in folder.rglob("*.txt")):
        raise ValueError(f"no .txt files under {folder}")
    name = name or folder.name
    hint = f"its path does not match patient_pattern {patient_pattern!r}"
    spec = _FieldSpec(language=language, source=name, one_patient_per_document=pattern is None,
                      patient_hint=hint)
    return _collect(_text_folder_records(folder, pattern), spec, name=name, source=str(folder),
                    patient_structure=_structure(pattern is None), on_problem=on_problem, limit=limit)


def write_jsonl(documents: Iterable[Document], path: str | Path) -> int:
    """Write documents in the ``documents.jsonl`` form (UTF-8, one object a line); returns the count.

    Written to a temporary file and renamed, so a reader never sees half a corpus.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for doc in documents:
                fh.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


# --------------------------------------------------------------------------------------------
# Named corpora (the sets in ../shared/data, and the synthea demo copy that ships)
# --------------------------------------------------------------------------------------------


class NamedLoader(Protocol):
    def __call__(self, settings: Settings, *, limit: int | None = None,
                 on_problem: OnProblem = "raise") -> Corpus: ...


def synthea_dir(settings: Settings | None = None) -> Path:
    """The synthea folder: the project's own copy (``data/synthea``), else the shared set."""
    settings = settings or load_settings()
    candidates = [Path(settings.demo_data_dir) / "synthea", Path(settings.data_dir) / "synthea_fhir_10patients"]
    for folder in candidates:
        if (folder / "notes.jsonl").is_file():
            return folder
    raise FileNotFoundError("synthea notes.jsonl not found in " + " or ".join(str(c) for c in candidates))


def _shared_file(settings: Settings, folder: str, file: str) -> Path:
    data_dir = Path(settings.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"shared data folder not found: expected {data_dir} (set CRAG_DATA_DIR or data_dir to it). "
            f"Only 'synthea' ships with the project; the other named corpora need the shared data sets."
        )
    return data_dir / folder / file


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None


def _load_synthea(settings: Settings, *, limit: int | None = None, on_problem: OnProblem = "raise") -> Corpus:
    spec = _FieldSpec(field_map={"encounter_id": "case_id", "note_type": "doc_type"},
                      language="en", source="synthea")
    return _load_jsonl(synthea_dir(settings) / "notes.jsonl", spec, name="synthea",
                       patient_structure="native", on_problem=on_problem, limit=limit)


def _load_physionet(settings: Settings, *, limit: int | None = None, on_problem: OnProblem = "raise") -> Corpus:
    spec = _FieldSpec(language="en", source="physionet_deid_dev")
    return _load_jsonl(_shared_file(settings, "physionet_deid_dev", "notes.jsonl"), spec,
                       name="physionet_deid_dev", patient_structure="native", on_problem=on_problem,
                       limit=limit)


def _load_grascco(settings: Settings, *, limit: int | None = None, on_problem: OnProblem = "raise") -> Corpus:
    spec = _FieldSpec(language="de", source="grascco_phi", one_patient_per_document=True)
    return _load_jsonl(_shared_file(settings, "grascco_phi", "documents.jsonl"), spec, name="grascco_phi",
                       patient_structure="one-per-document", on_problem=on_problem, limit=limit)


def _mtsamples_post(fields: dict[str, Any]) -> None:
    """Merged samples carry several labels; the first is the primary, all stay in ``extra``."""
    fields["specialty"] = _first(fields["extra"].get("specialties"))
    fields["doc_type"] = _first(fields["extra"].get("sample_names"))


def _load_mtsamples(settings: Settings, *, limit: int | None = None, on_problem: OnProblem = "raise") -> Corpus:
    spec = _FieldSpec(language="en", source="mtsamples", one_patient_per_document=True, post=_mtsamples_post)
    return _load_jsonl(_shared_file(settings, "mtsamples", "documents.jsonl"), spec, name="mtsamples",
                       patient_structure="one-per-document", on_problem=on_problem, limit=limit)


def _pubmedqa_post(fields: dict[str, Any]) -> None:
    """The abstract is the "record": its passages share ``pmid:<pmid>`` as patient id."""
    pmid = _as_id(fields.get("patient_id"))
    if pmid is not None:
        fields["extra"]["pmid"] = pmid
        fields["patient_id"] = f"pmid:{pmid}"


def _load_pubmedqa(settings: Settings, *, limit: int | None = None, on_problem: OnProblem = "raise") -> Corpus:
    spec = _FieldSpec(patient_field="pmid", field_map={"section_label": "doc_type"}, language="en",
                      source="pubmedqa_retrieval", post=_pubmedqa_post)
    return _load_jsonl(_shared_file(settings, "pubmedqa_retrieval", "corpus.jsonl"), spec,
                       name="pubmedqa_retrieval", patient_structure="per-abstract", on_problem=on_problem,
                       limit=limit)


NAMED_CORPORA: dict[str, NamedLoader] = {
    "synthea": _load_synthea,
    "physionet_deid_dev": _load_physionet,
    "grascco_phi": _load_grascco,
    "mtsamples": _load_mtsamples,
    "pubmedqa_retrieval": _load_pubmedqa,
}


def load_corpus(
    name_or_path: str | Path,
    settings: Settings | None = None,
    *,
    limit: int | None = None,
    on_problem: OnProblem = "raise",
) -> Corpus:
    """A registered corpus by name, or a ``.jsonl``/``.csv`` file or a folder of ``.txt`` files."""
    _check_on_problem(on_problem)
    settings = settings or load_settings()
    key = str(name_or_path)
    if key in NAMED_CORPORA:
        return NAMED_CORPORA[key](settings, limit=limit, on_problem=on_problem)
    path = Path(key).expanduser()
    if path.is_dir():
        return load_text_folder(path, on_problem=on_problem, limit=limit)
    if path.suffix.lower() == ".jsonl":
        return load_jsonl(path, on_problem=on_problem, limit=limit)
    if path.suffix.lower() == ".csv":
        return load_csv(path, on_problem=on_problem, limit=limit)
    known = ", ".join(sorted(NAMED_CORPORA))
    if path.exists():
        raise ValueError(f"cannot load {path}: expected a .jsonl or .csv file or a folder of .txt files")
    raise ValueError(f"unknown corpus {key!r}: known names are {known}; "
                     "or give a path to a .jsonl/.csv file or a folder of .txt files")


def corpus_name(name_or_path: str | Path) -> str:
    """The name a corpus is stored and indexed under: a registered name as is, a file its stem, a
    folder its name - the same name ``load_corpus`` gives it, so a path and the loaded corpus open
    the same index."""
    key = str(name_or_path)
    if key in NAMED_CORPORA:
        return key
    path = Path(key).expanduser()
    return path.name if path.is_dir() else path.stem if path.suffix.lower() in (".jsonl", ".csv") else key


def load_patients(corpus_name: str, settings: Settings | None = None) -> list[Patient]:
    """The patients of a corpus, sorted by id; names and demographics exist only for synthea."""
    settings = settings or load_settings()
    if corpus_name == "synthea":
        path = synthea_dir(settings) / "patients.jsonl"
        if path.is_file():
            return _synthea_patients(path)
    corpus = load_corpus(corpus_name, settings)
    return [Patient(patient_id=pid) for pid in corpus.patients()]


def _synthea_patients(path: Path) -> list[Patient]:
    patients: list[Patient] = []
    problems: list[Problem] = []
    for record in _jsonl_records(path):
        if isinstance(record, Problem):
            problems.append(record)
            continue
        pid = _as_id(record.data.get("patient_id"))
        if pid is None:
            problems.append(Problem(record.path, record.line, "missing_patient_id", "no 'patient_id'"))
            continue
        patients.append(Patient(pid, *(_as_text(record.data.get(k))
                                       for k in ("name", "birth_date", "gender", "deceased"))))
    if problems:
        raise CorpusError(problems, str(path))
    return sorted(patients, key=lambda p: p.patient_id)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rag.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("corpus", help=f"a name ({', '.join(NAMED_CORPORA)}) or a .jsonl/.csv/folder path")
    parser.add_argument("--limit", type=int, default=None, help="load at most N documents")
    parser.add_argument("--skip-bad", action="store_true", help="keep the good rows, list the problems")
    parser.add_argument("--write", metavar="OUT.jsonl", help="also write the documents.jsonl form here")
    args = parser.parse_args(argv)
    try:
        corpus = load_corpus(args.corpus, limit=args.limit, on_problem="skip" if args.skip_bad else "raise")
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"corpus:            {corpus.name} ({corpus.source})")
    print(f"documents:         {len(corpus)}")
    print(f"patients:          {len(corpus.patients())}")
    print(f"patient structure: {corpus.patient_structure}")
    print(f"problems:          {len(corpus.problems)}")
    for problem in corpus.problems[:MAX_LISTED_PROBLEMS]:
        print(f"  {problem}")
    if args.write:
        print(f"wrote {write_jsonl(corpus.documents, args.write)} documents to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
