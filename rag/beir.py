"""BEIR-like retrieval sets (docs/design.md §3): a corpus, queries and graded relevance judgments.

Every evaluation CLI reads the same three files (``corpus.jsonl``, ``queries.jsonl``, ``qrels.tsv``),
so any set - our QA test split, PubMedQA, a hospital's own judgments - is scored the same way.
The readers accept the common BEIR spellings (``_id``, ``query``, ``corpus-id``, ``score``) as well
as ours, because sets arrive from both worlds; bad rows become a :class:`rag.corpus.CorpusError`
that names file and line, never a silent skip.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.config import Settings, load_settings
from rag.corpus import (
    Corpus,
    CorpusError,
    Problem,
    load_corpus,
    load_jsonl,
    read_jsonl_objects,
    synthea_dir,
    write_jsonl,
)

QUERY_ID_FIELDS = ("query_id", "_id", "qa_id", "id")
QUERY_TEXT_FIELDS = ("text", "query", "question")
QRELS_QUERY_COLUMNS = ("query_id", "query-id", "qid")
QRELS_DOC_COLUMNS = ("doc_id", "corpus-id", "docid")
QRELS_GRADE_COLUMNS = ("grade", "score", "relevance")
NAMED_SETS = ("synthea-conditions", "pubmedqa")


@dataclass
class Query:
    """One evaluation question. ``patient_id`` is the patient scope it belongs to (None: no patient)."""

    query_id: str
    text: str
    patient_id: str | None = None
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query_id": self.query_id, "text": self.text}
        if self.patient_id is not None:
            out["patient_id"] = self.patient_id
        if self.answer is not None:
            out["answer"] = self.answer
        if self.extra:
            out["extra"] = self.extra
        return out


@dataclass
class BeirSet:
    """A corpus with queries and ``qrels[query_id][doc_id] = grade`` (grade >= 1 is relevant)."""

    name: str
    corpus: Corpus
    queries: list[Query]
    qrels: dict[str, dict[str, int]]
    files: dict[str, str] = field(default_factory=dict)  # role -> path read, for manifests (hashes)

    def limited(self, limit: int | None) -> "BeirSet":
        """The first ``limit`` queries (file order) with their qrels; the corpus stays whole."""
        if limit is None or limit >= len(self.queries):
            return self
        queries = self.queries[:limit]
        keep = {q.query_id for q in queries}
        return BeirSet(self.name, self.corpus, queries, {q: r for q, r in self.qrels.items() if q in keep}, self.files)

    def counts(self) -> dict[str, Any]:
        relevant = [sum(1 for g in self.qrels.get(q.query_id, {}).values() if g >= 1) for q in self.queries]
        return {
            "documents": len(self.corpus),
            "patients": len(self.corpus.patients()),
            "patient_structure": self.corpus.patient_structure,
            "queries": len(self.queries),
            "queries_with_relevant": sum(1 for r in relevant if r),
            "relevant_pairs": sum(relevant),
            "relevant_per_query_max": max(relevant, default=0),
        }


# --------------------------------------------------------------------------------------------
# Reading


def _first_key(row: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in row), None)


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def load_queries(path: str | Path) -> list[Query]:
    """``queries.jsonl``: ``{query_id, text, patient_id?, answer?}`` (BEIR ``_id``/``query`` accepted)."""
    path = _existing(path)
    problems: list[Problem] = []
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for line, row in read_jsonl_objects(path, problems):
        id_key, text_key = _first_key(row, QUERY_ID_FIELDS), _first_key(row, QUERY_TEXT_FIELDS)
        qid = _opt_str(row.get(id_key)) if id_key else None
        text = row.get(text_key) if text_key else None
        if qid is None:
            problems.append(Problem(str(path), line, "missing_field", f"no query id (one of {', '.join(QUERY_ID_FIELDS)})"))
            continue
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem(str(path), line, "missing_field" if text is None else "empty_text",
                                    f"query {qid!r} has no text (one of {', '.join(QUERY_TEXT_FIELDS)})"))
            continue
        if qid in seen:
            problems.append(Problem(str(path), line, "duplicate_doc_id", f"query id {qid!r} already used on line {seen[qid]}"))
            continue
        seen[qid] = line
        known = {id_key, text_key, "patient_id", "answer", "extra"}
        extra = dict(row.get("extra") or {}) if isinstance(row.get("extra"), dict) else {}
        extra.update({k: v for k, v in row.items() if k not in known})
        queries.append(Query(qid, text, _opt_str(row.get("patient_id")), _opt_str(row.get("answer")), extra))
    if problems:
        raise CorpusError(problems, str(path))
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``qrels.tsv`` with a header naming the query, document and grade columns (tab-separated)."""
    path = _existing(path)
    problems: list[Problem] = []
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise CorpusError([Problem(str(path), 1, "malformed", "empty qrels file (expected a header)")], str(path))
        header = [h.strip().lstrip("\ufeff") for h in header]
        cols = [next((header.index(n) for n in names if n in header), None)
                for names in (QRELS_QUERY_COLUMNS, QRELS_DOC_COLUMNS, QRELS_GRADE_COLUMNS)]
        if None in cols:
            raise CorpusError([Problem(str(path), 1, "malformed",
                                       f"header {header!r} must name a query column ({'/'.join(QRELS_QUERY_COLUMNS)}), "
                                       f"a document column ({'/'.join(QRELS_DOC_COLUMNS)}) and a grade column "
                                       f"({'/'.join(QRELS_GRADE_COLUMNS)}), tab-separated")], str(path))
        qcol, dcol, gcol = cols  # type: ignore[misc]
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                problems.append(Problem(str(path), line, "malformed", f"expected {len(header)} tab-separated fields, got {len(row)}"))
                continue
            qid, did, raw_grade = row[qcol].strip(), row[dcol].strip(), row[gcol].strip()
            try:
                grade = int(float(raw_grade))
            except ValueError:
                problems.append(Problem(str(path), line, "malformed", f"grade {raw_grade!r} is not a number"))
                continue
            if not qid or not did:
                problems.append(Problem(str(path), line, "missing_field", "empty query or document id"))
                continue
            qrels.setdefault(qid, {})[did] = grade
    if problems:
        raise CorpusError(problems, str(path))
    return qrels


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return path


def _load_corpus_file(path: Path, name: str) -> Corpus:
    """Our ``documents.jsonl`` form, or BEIR's ``{_id, title, text}`` (title kept in ``extra``).

    Without a ``patient_id`` on the first row the corpus has no patients: one per document.
    """
    first: dict[str, Any] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except json.JSONDecodeError:
                    first = {}
                break
    id_field = "_id" if "_id" in first and "doc_id" not in first else "doc_id"
    return load_jsonl(path, name=name, id_field=id_field, one_patient_per_document="patient_id" not in first)


def _check_references(beir: BeirSet, qrels_source: str) -> None:
    """Every judged document and query must exist: a typo in an id would silently lower the score."""
    doc_ids = {d.doc_id for d in beir.corpus.documents}
    query_ids = {q.query_id for q in beir.queries}
    problems = []
    for qid, rels in beir.qrels.items():
        if qid not in query_ids:
            problems.append(Problem(qrels_source, None, "missing_field", f"qrels name unknown query {qid!r}"))
        for did in rels:
            if did not in doc_ids:
                problems.append(Problem(qrels_source, None, "missing_field",
                                        f"qrels of query {qid!r} name unknown document {did!r}"))
    if problems:
        raise CorpusError(problems, qrels_source)


def load_beir(corpus_path: str | Path, queries_path: str | Path, qrels_path: str | Path,
              name: str | None = None) -> BeirSet:
    """Read a BEIR-like set from its three files; every bad row and dangling id is reported together."""
    corpus_path = _existing(corpus_path)
    name = name or corpus_path.parent.name or corpus_path.stem
    corpus = _load_corpus_file(corpus_path, name)
    beir = BeirSet(name, corpus, load_queries(queries_path), load_qrels(qrels_path),
                   {"corpus": str(corpus_path), "queries": str(queries_path), "qrels": str(qrels_path)})
    _check_references(beir, str(qrels_path))
    return beir


# --------------------------------------------------------------------------------------------
# Writing


def write_queries(queries: list[Query], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for q in queries:
            fh.write(json.dumps(q.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(queries)


def write_qrels(qrels: dict[str, dict[str, int]], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    rows = 0
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write("query_id\tdoc_id\tgrade\n")
        for qid, rels in qrels.items():
            for did, grade in rels.items():
                fh.write(f"{qid}\t{did}\t{grade}\n")
                rows += 1
    tmp.replace(path)
    return rows


def write_beir(beir_set: BeirSet, out_dir: str | Path) -> dict[str, Path]:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels.tsv`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    paths = {"corpus": out / "corpus.jsonl", "queries": out / "queries.jsonl", "qrels": out / "qrels.tsv"}
    write_jsonl(beir_set.corpus.documents, paths["corpus"])
    write_queries(beir_set.queries, paths["queries"])
    write_qrels(beir_set.qrels, paths["qrels"])
    return paths


# --------------------------------------------------------------------------------------------
# Named sets and QA pairs


def _synthea_conditions(settings: Settings) -> BeirSet:
    """Synthea's 212 patient-scoped condition queries ("Has this patient been diagnosed with X?")."""
    corpus = load_corpus("synthea", settings)
    path = synthea_dir(settings) / "qrels_condition_diagnosis.jsonl"
    problems: list[Problem] = []
    queries: list[Query] = []
    qrels: dict[str, dict[str, int]] = {}
    for line, row in read_jsonl_objects(path, problems):
        qid, text, pid, rel = row.get("query_id"), row.get("query"), row.get("patient_id"), row.get("relevant_doc_ids")
        if not qid or not isinstance(text, str) or not pid or not isinstance(rel, list) or not rel:
            problems.append(Problem(str(path), line, "missing_field",
                                    "need query_id, query, patient_id and a non-empty relevant_doc_ids list"))
            continue
        extra = {k: v for k, v in row.items() if k not in {"query_id", "query", "patient_id", "relevant_doc_ids"}}
        queries.append(Query(str(qid), text, str(pid), None, extra))
        qrels[str(qid)] = {str(d): 1 for d in rel}
    if problems:
        raise CorpusError(problems, str(path))
    beir = BeirSet("synthea-conditions", corpus, queries, qrels, {"corpus": corpus.source, "queries+qrels": str(path)})
    _check_references(beir, str(path))
    return beir


def _pubmedqa(settings: Settings) -> BeirSet:
    """PubMedQA-L as passage retrieval; a query's "patient" is its abstract (``pmid:<pmid>``)."""
    corpus = load_corpus("pubmedqa_retrieval", settings)
    folder = Path(settings.data_dir) / "pubmedqa_retrieval"
    queries = load_queries(folder / "queries.jsonl")
    for q in queries:
        pmid = q.extra.pop("pmid", None)
        if pmid is not None and q.patient_id is None:
            q.patient_id = f"pmid:{pmid}"
        if q.answer is None and isinstance(q.extra.get("long_answer"), str):
            q.answer = q.extra.pop("long_answer")
    beir = BeirSet("pubmedqa", corpus, queries, load_qrels(folder / "qrels.tsv"),
                   {"corpus": corpus.source, "queries": str(folder / "queries.jsonl"), "qrels": str(folder / "qrels.tsv")})
    _check_references(beir, str(folder / "qrels.tsv"))
    return beir


_NAMED = {"synthea-conditions": _synthea_conditions, "pubmedqa": _pubmedqa, "pubmedqa_retrieval": _pubmedqa}


def load_named_set(name: str, settings: Settings | None = None) -> BeirSet:
    """A set shipped with the project or in the shared data: ``synthea-conditions`` or ``pubmedqa``."""
    settings = settings or load_settings()
    if name not in _NAMED:
        raise ValueError(f"unknown evaluation set {name!r}; known: {', '.join(NAMED_SETS)} "
                         "(or give --corpus/--queries/--qrels paths)")
    return _NAMED[name](settings)


def qa_to_beir(qa_jsonl_path: str | Path, corpus: Corpus, name: str) -> BeirSet:
    """QA pairs (docs/design.md §3) as a retrieval set: each question is a query whose one relevant
    document (grade 1) is the document it was generated from; the patient and the reference answer
    travel with it. Every QA row must name a document of ``corpus`` and agree on its patient.
    """
    path = _existing(qa_jsonl_path)
    docs = corpus.by_id()
    problems: list[Problem] = []
    queries: list[Query] = []
    qrels: dict[str, dict[str, int]] = {}
    for line, row in read_jsonl_objects(path, problems):
        qid, question, doc_id = _opt_str(row.get("qa_id")), row.get("question"), _opt_str(row.get("doc_id"))
        if qid is None or doc_id is None or not isinstance(question, str) or not question.strip():
            problems.append(Problem(str(path), line, "missing_field", "a QA pair needs qa_id, doc_id and a question"))
            continue
        if qid in qrels:
            problems.append(Problem(str(path), line, "duplicate_doc_id", f"qa_id {qid!r} used twice"))
            continue
        doc = docs.get(doc_id)
        if doc is None:
            problems.append(Problem(str(path), line, "missing_field", f"doc_id {doc_id!r} is not in corpus {corpus.name!r}"))
            continue
        pid = _opt_str(row.get("patient_id")) or doc.patient_id
        if pid != doc.patient_id:
            problems.append(Problem(str(path), line, "malformed",
                                    f"patient_id {pid!r} differs from its document's patient {doc.patient_id!r}"))
            continue
        extra = {k: v for k, v in row.items() if k not in {"qa_id", "question", "doc_id", "patient_id", "answer"}}
        extra["doc_id"] = doc_id
        queries.append(Query(qid, question, pid, _opt_str(row.get("answer")), extra))
        qrels[qid] = {doc_id: 1}
    if problems:
        raise CorpusError(problems, str(path))
    return BeirSet(name, corpus, queries, qrels, {"qa": str(path), "corpus": corpus.source})
