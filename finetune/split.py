"""Train/dev/test splits that are disjoint by patient, for documents and their QA pairs.

Why by patient: a patient's notes repeat names, drugs and phrasing, so a model that saw one of
them in training has effectively seen the others; a split by document would let test questions be
answered by memory and inflate MAP. Here every patient belongs to exactly one split, and each QA
pair follows the patient of its source document. Corpora without patients (mtsamples) have one
patient per document (``Corpus.patient_structure`` says so), so the split is by document there.

Patients are shuffled with the seed (from a sorted list, so the result depends on the seed and the
set of patients only, not on file order). ``by="documents"`` (default) fills the splits towards
their share of *documents*, which keeps the fractions meaningful when one patient has hundreds of
notes and another a dozen; ``by="patients"`` splits the patient count.

CLI: ``python -m finetune.split --qa qa.jsonl --docs documents.jsonl --out DIR --seed 0``
writes ``DIR/{train,dev,test}/documents.jsonl`` and ``qa.jsonl``, ``DIR/splits.json`` (the
patient -> split assignment) and ``DIR/manifest.json`` with the counts.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.qa_schema import read_qa
from rag.beir import BeirSet, qa_to_beir, write_beir
from rag.config import Settings, load_settings
from rag.corpus import Corpus, CorpusError, Document, Problem, load_corpus, load_jsonl, write_jsonl
from rag.manifest import describe_input, package_versions, run_manifest, write_json

SPLITS: tuple[str, str, str] = ("train", "dev", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


@dataclass
class SplitResult:
    """The assignment and what it puts where. ``qa`` rows are the input dicts, unchanged."""

    patient_split: dict[str, str]
    documents: dict[str, list[Document]]
    qa: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    by: str = "documents"
    patient_structure: str | None = None

    def counts(self) -> dict[str, dict[str, int]]:
        out = {}
        for name in SPLITS:
            out[name] = {
                "patients": sum(1 for s in self.patient_split.values() if s == name),
                "documents": len(self.documents.get(name, [])),
                "qa_pairs": len(self.qa.get(name, [])),
            }
        return out


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, dev, test), got {list(fractions)}")
    total = float(sum(fractions))
    return tuple(f / total for f in fractions)  # type: ignore[return-value]


def assign_patients(doc_counts: Mapping[str, int], *, seed: int = 0,
                    fractions: Sequence[float] = DEFAULT_FRACTIONS, by: str = "documents") -> dict[str, str]:
    """Patient -> split. Every split with a non-zero fraction gets at least one patient when there
    are enough patients; the rest follows the fractions of documents (``by="documents"``) or of
    patients (``by="patients"``)."""
    if by not in ("documents", "patients"):
        raise ValueError(f"by must be 'documents' or 'patients', got {by!r}")
    shares = _check_fractions(fractions)
    patients = sorted(doc_counts)
    random.Random(seed).shuffle(patients)
    weight = {p: (doc_counts[p] if by == "documents" else 1) for p in patients}
    total = sum(weight.values())
    active = [i for i, s in enumerate(shares) if s > 0]
    filled = [0.0, 0.0, 0.0]
    assignment: dict[str, str] = {}
    # the smallest splits (test, dev) are seeded first, so they exist even for a handful of patients
    seeds = sorted(active, key=lambda i: shares[i])[: len(patients)]
    for i, patient in zip(seeds, patients):
        assignment[patient] = SPLITS[i]
        filled[i] += weight[patient]
    for patient in patients[len(seeds):]:
        # the split furthest below its target share takes the next patient
        i = max(active, key=lambda j: (shares[j] * total - filled[j], -j))
        assignment[patient] = SPLITS[i]
        filled[i] += weight[patient]
    return assignment


#: The part of an annotated de-identification set that nobody reads while writing rules: a third of
#: its patients (of its documents where it has none), drawn with this seed. ``eval.deid --part
#: unread`` scores it and refuses to show its misses; word lists are built from the rest.
UNREAD_SEED = 17


def unread_patients(patients: Iterable[str], seed: int = UNREAD_SEED) -> set[str]:
    """The unread third of a set's patients; stable across runs and file orders."""
    ordered = sorted(set(patients))
    random.Random(seed).shuffle(ordered)
    return set(ordered[: len(ordered) // 3])


def _qa_problems_source(qa_source: str | None) -> str:
    return qa_source or "<qa pairs>"


def split_by_patient(
    corpus: Corpus | Sequence[Document],
    qa: Sequence[Mapping[str, Any]] | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    by: str = "documents",
    qa_lines: Sequence[int] | None = None,
    qa_source: str | None = None,
) -> SplitResult:
    """Split documents (and QA pairs, by their ``doc_id``) into train/dev/test, disjoint by patient.

    A QA pair whose ``doc_id`` is not in the corpus, or whose ``patient_id`` contradicts its
    document's, raises :class:`CorpusError` naming the pair's line (``qa_lines``) in ``qa_source``.
    """
    documents = list(corpus.documents if isinstance(corpus, Corpus) else corpus)
    if not documents:
        raise ValueError("no documents to split")
    doc_counts: dict[str, int] = {}
    for doc in documents:
        doc_counts[doc.patient_id] = doc_counts.get(doc.patient_id, 0) + 1
    assignment = assign_patients(doc_counts, seed=seed, fractions=fractions, by=by)
    docs_by_split: dict[str, list[Document]] = {name: [] for name in SPLITS}
    for doc in documents:
        docs_by_split[assignment[doc.patient_id]].append(doc)

    qa_by_split: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    problems: list[Problem] = []
    by_id = {d.doc_id: d for d in documents}
    for n, row in enumerate(qa or []):
        line = qa_lines[n] if qa_lines is not None else n + 1
        doc = by_id.get(str(row.get("doc_id")))
        if doc is None:
            problems.append(Problem(_qa_problems_source(qa_source), line, "missing_field",
                                    f"QA pair {row.get('qa_id')!r}: doc_id {row.get('doc_id')!r} is not in the documents"))
            continue
        pid = row.get("patient_id")
        if pid is not None and str(pid) != doc.patient_id:
            problems.append(Problem(_qa_problems_source(qa_source), line, "malformed",
                                    f"QA pair {row.get('qa_id')!r}: patient_id {pid!r} differs from its document's "
                                    f"patient {doc.patient_id!r}"))
            continue
        qa_by_split[assignment[doc.patient_id]].append(dict(row))
    if problems:
        raise CorpusError(problems, _qa_problems_source(qa_source))
    structure = corpus.patient_structure if isinstance(corpus, Corpus) else None
    return SplitResult(assignment, docs_by_split, qa_by_split, seed, _check_fractions(fractions), by, structure)


def load_assignment(path: str | Path) -> dict[str, str]:
    """The patient -> split mapping of a ``splits.json`` written by :func:`write_split`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    patients = data.get("patients") if isinstance(data, dict) else None
    if not isinstance(patients, dict):
        raise ValueError(f"{path}: expected a splits.json with a 'patients' mapping")
    return {str(k): str(v) for k, v in patients.items()}


def _write_rows(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_split(result: SplitResult, out_dir: str | Path, *, inputs: Mapping[str, str | Path] | None = None,
                seconds: float | None = None) -> dict[str, Any]:
    """Write the split files, ``splits.json`` and ``manifest.json``; returns the manifest."""

    out = Path(out_dir)
    for name in SPLITS:
        write_jsonl(result.documents[name], out / name / "documents.jsonl")
        _write_rows(result.qa.get(name, []), out / name / "qa.jsonl")
    splits_json = {"seed": result.seed, "fractions": list(result.fractions), "by": result.by,
                   "patient_structure": result.patient_structure, "patients": dict(sorted(result.patient_split.items()))}
    (out / "splits.json").write_text(json.dumps(splits_json, indent=2) + "\n", encoding="utf-8")
    manifest: dict[str, Any] = {
        "stage": "finetune.split",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {k: describe_input(v) if Path(v).is_file() else {"name": str(v)}
                   for k, v in (inputs or {}).items()},
        "parameters": {"seed": result.seed, "fractions": list(result.fractions), "by": result.by},
        "patient_structure": result.patient_structure,
        "counts": result.counts(),
        "disjoint_by_patient": True,
        "versions": {"clinical-rag": package_versions(("clinical-rag",)).get("clinical-rag")},
        "timings": {"seconds": round(seconds, 3) if seconds is not None else None},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def write_qa_split(qa_path: str | Path, docs: str, split: str, out_dir: str | Path, *, seed: int = 0,
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), by: str = "documents",
                   assignment: str | Path | None = None, settings: Settings | None = None) -> tuple[BeirSet, dict[str, Path]]:
    """Write one split of a QA set as ``corpus.jsonl``/``queries.jsonl``/``qrels.tsv``.

    The corpus holds only that split's documents (held-out patients' records), the queries its QA
    pairs. The split comes from ``assignment`` (a ``splits.json`` written by ``finetune.split``) or
    is recomputed with ``finetune.split.split_by_patient`` from the same seed and fractions.
    """
    settings = settings or load_settings()
    corpus = load_corpus(docs, settings)
    if assignment is not None:
        patient_split = load_assignment(assignment)
    else:
        patient_split = split_by_patient(corpus, seed=seed, fractions=fractions, by=by).patient_split
    missing = sorted({d.patient_id for d in corpus.documents} - set(patient_split))
    if missing:
        raise ValueError(f"{len(missing)} patients of {docs} have no split in the assignment (e.g. {missing[0]!r})")
    chosen = [d for d in corpus.documents if patient_split[d.patient_id] == split]
    if not chosen:
        raise ValueError(f"split {split!r} has no documents (splits present: {sorted(set(patient_split.values()))})")
    name = f"{corpus.name}-{split}"
    split_corpus = Corpus(name=name, documents=chosen, problems=[], patient_structure=corpus.patient_structure,
                          source=f"{corpus.source} ({split} split)")
    # QA rows of other splits are expected in a full QA file: keep only those whose document is in this split
    full = qa_to_beir(qa_path, corpus, name)
    keep = {d.doc_id for d in chosen}
    queries = [q for q in full.queries if q.extra.get("doc_id") in keep]
    beir = BeirSet(name, split_corpus, queries, {q.query_id: full.qrels[q.query_id] for q in queries}, full.files)
    paths = write_beir(beir, out_dir)
    write_json(run_manifest(stage="finetune.split --write-qa-split", inputs={"qa": qa_path, "docs": corpus.source},
                            parameters={"split": split, "seed": seed, "fractions": list(fractions), "by": by,
                                        "assignment": str(assignment) if assignment else None},
                            counts=beir.counts()), Path(out_dir) / "manifest.json")
    return beir, paths


def _counts_table(result: SplitResult) -> str:
    counts = result.counts()
    lines = ["| split | patients | documents | QA pairs |", "|---|---|---|---|"]
    for name in SPLITS:
        c = counts[name]
        lines.append(f"| {name} | {c['patients']} | {c['documents']} | {c['qa_pairs']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.split", description=__doc__.split("\n")[0])
    parser.add_argument("--docs", required=True, help="documents.jsonl (doc_id, patient_id, text) or a corpus name")
    parser.add_argument("--qa", help="qa.jsonl whose pairs follow their document's patient")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", default="0.8,0.1,0.1", help="train,dev,test (default 0.8,0.1,0.1)")
    parser.add_argument("--by", default="documents", choices=["documents", "patients"],
                        help="what the fractions count (default: documents)")
    parser.add_argument("--no-patients", action="store_true",
                        help="the documents have no patient_id: each document is its own patient")
    args = parser.parse_args(list(argv) if argv is not None else None)
    t0 = time.perf_counter()
    try:
        fractions = [float(x) for x in args.fractions.split(",")]
        docs_path = Path(args.docs)
        if args.no_patients and docs_path.suffix == ".jsonl":
            corpus = load_jsonl(docs_path, one_patient_per_document=True)
        else:
            corpus = load_corpus(args.docs, load_settings())
        rows, lines = read_qa(args.qa) if args.qa else ([], [])
        result = split_by_patient(corpus, rows, seed=args.seed, fractions=fractions, by=args.by,
                                  qa_lines=lines, qa_source=args.qa)
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    inputs = {"docs": args.docs, **({"qa": args.qa} if args.qa else {})}
    write_split(result, args.out, inputs=inputs, seconds=time.perf_counter() - t0)
    print(f"patient structure: {corpus.patient_structure}; seed {args.seed}; fractions {args.fractions} of {args.by}")
    print(_counts_table(result))
    print(f"wrote {Path(args.out)}/{{train,dev,test}}/documents.jsonl, qa.jsonl, splits.json, manifest.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
