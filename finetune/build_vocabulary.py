"""Build the clinical word lists of the allow-list layer from text that is not PHI.

    python -m finetune.build_vocabulary            # writes finetune/resources/clinical_vocabulary.{en,de}.txt

The allow-list layer (``finetune.phi_vocabulary``) masks words it does not know. General word
lists do not know clinical shorthand ("fio", "ogt", "carevue", "dc'd", "Z.n.", "Thoraxdrainage"),
so this script collects the words clinical text uses from sources without PHI or with gold PHI:

- English: the Synthea notes (``data/synthea``, synthetic), MTSamples and PubMedQA abstracts
  (``../shared/data``, no patient identifiers), and the non-PHI words of the *dev* part of
  physionet_deid_dev (never its unread part: ``eval.deid.select_part``);
- German: the non-PHI words of the dev part of GraSCCo.

A word is kept when it occurs in at least ``MIN_DOCS`` documents; in mixed-case text it must occur
in lower case (a word seen only capitalised is likely a proper noun) or as a short all-capital
abbreviation; words of gold PHI spans are never kept. The output is committed, so a clone without
``../shared`` has it; rebuild only when the sources change.

It also writes ``eponyms_in_use.<lang>.txt``: the words that clinical text without PHI puts where
the eponym veto looks ("Weitlaner retractor", "Utrata forceps", "Tessio catheter") and that no name
list holds. The veto drops an unknown word in such a context only when it names a person or is on
this list (``finetune.phi_recognizers.context_vetoed``), so a place or a relative in the same context
("Family says Obaixville test was cancelled") stays masked. Sources: English from corpora without
patient identifiers (Synthea, MTSamples, PubMedQA), German from the dev part of GraSCCo with its gold
PHI skipped (the only German source).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from finetune.phi_text import LETTER
from finetune.phi_vocabulary import load_vocabulary, reload_vocabulary
from finetune.split import unread_patients
from rag.config import load_settings
from rag.corpus import read_jsonl_objects

RESOURCES = Path(__file__).resolve().parent / "resources"
MIN_DOCS = 2
WORD = re.compile(rf"[{LETTER}][{LETTER}]*(?:['’\-][{LETTER}]+)*")
#: Left out of the eponym list: English has text without PHI, and ``eval.deid_holdout``'s folds must stay unseen.
EPONYMS_SKIP = {"physionet_deid_dev"}
SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)$")


def _case_style(text: str) -> str:
    letters = [c for c in text[:4000] if c.isalpha()]
    if not letters:
        return "mixed"
    upper = sum(c.isupper() for c in letters) / len(letters)
    return "upper" if upper > 0.6 else "lower" if upper < 0.02 else "mixed"


def document_words(text: str, phi: Iterable[tuple[int, int]] = ()) -> set[str]:
    """The lower-cased words a document vouches for (see the module docstring)."""
    masked = sorted(phi)
    style = _case_style(text)
    out: set[str] = set()
    for m in WORD.finditer(text):
        if any(s < m.end() and m.start() < e for s, e in masked):
            continue
        word = m.group()
        if len(word) < 2:
            continue
        if style == "mixed" and not (word.islower() or (word.isupper() and len(word) <= 6)):
            if not SENTENCE_START.search(text[max(0, m.start() - 3): m.start()]):
                continue  # capitalised mid-sentence: maybe a name or a place
            if word[1:].islower():
                continue  # sentence-initial capital says nothing either way
        out.add(word.lower())
    return out


def _rows(path: Path) -> Iterable[dict]:
    problems: list = []
    for _, row in read_jsonl_objects(path, problems):
        yield row


def collect(sources: list[tuple[str, Path, str]], leave_out: Mapping[str, set[str]]) -> tuple[Counter, dict[str, int]]:
    """Document frequency of each vouched-for word, and the number of documents per source."""
    df: Counter[str] = Counter()
    docs: dict[str, int] = defaultdict(int)
    phi_words: set[str] = set()
    for name, path, field in sources:
        for row in _readable_rows(name, path, leave_out):
            text = row.get(field) or ""
            spans = [(int(p["start"]), int(p["end"])) for p in row.get("phi") or []]
            phi_words |= {w.lower() for s, e in spans for w in WORD.findall(text[s:e])}
            df.update(document_words(text, spans))
            docs[name] += 1
    for word in phi_words:
        df.pop(word, None)
    return df, dict(docs)


def _left_out(name: str, path: Path, also: Mapping[str, set[str]]) -> set[str]:
    """The patients of an annotated set whose words never enter: its unread third, and ``also``."""
    rows = list(_rows(path))
    if not rows or "phi" not in rows[0]:
        return set()
    return unread_patients(str(r.get("patient_id") or r.get("doc_id")) for r in rows) | set(also.get(name, ()))


def _readable_rows(name: str, path: Path, also: Mapping[str, set[str]]) -> Iterable[dict]:
    """The rows of a source whose words may enter a list (all but :func:`_left_out`'s patients)."""
    left_out = _left_out(name, path, also)
    return (row for row in _rows(path) if str(row.get("patient_id") or row.get("doc_id")) not in left_out)


def _sources(data_dir: Path, language: str) -> list[tuple[str, Path, str]]:
    """(name, file, text field) of each source of a language."""
    if language == "en":
        repo = Path(__file__).resolve().parents[1]
        return [("synthea", repo / "data" / "synthea" / "notes.jsonl", "text"),
                ("mtsamples", data_dir / "mtsamples" / "documents.jsonl", "text"),
                ("pubmedqa_retrieval", data_dir / "pubmedqa_retrieval" / "corpus.jsonl", "text"),
                ("physionet_deid_dev", data_dir / "physionet_deid_dev" / "notes.jsonl", "text")]
    return [("grascco_phi", data_dir / "grascco_phi" / "documents.jsonl", "text")]


def build(data_dir: Path, language: str, leave_out: Mapping[str, set[str]] | None = None
          ) -> tuple[list[str], dict[str, int]]:
    """The kept words and the documents read per source. ``leave_out`` names more patients per
    annotated set to skip (``eval.deid_holdout`` measures false alarms on patients the list never saw)."""
    sources = _sources(data_dir, language)
    missing = [str(p) for _, p, _ in sources if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"sources missing: {missing} (set CRAG_DATA_DIR to the shared data folder)")
    df, docs = collect(sources, leave_out or {})
    words = sorted(w for w, n in df.items() if n >= MIN_DOCS)
    return words, docs


def eponyms_in_use(sources: list[tuple[str, Path, str]], language: str) -> tuple[list[str], dict[str, int]]:
    """Unlisted words of the allow-list layer's name spans in an eponym context (see the module docstring)."""
    from finetune.phi_recognizers import eponym_context, name_parts, view_for  # Presidio: only when building
    from finetune.phi_types import PhiType
    from finetune.phi_unknown_rules import unknown_words

    vocab = load_vocabulary(language)
    words: set[str] = set()
    docs: dict[str, int] = defaultdict(int)
    for name, path, field in sources:
        for row in _readable_rows(name, path, {}):
            text = row.get(field) or ""
            gold = [(int(p["start"]), int(p["end"])) for p in row.get("phi") or []]
            docs[name] += 1
            for span in unknown_words(view_for(text, language)):
                if span.label is not PhiType.NAME or not eponym_context(span, text) \
                        or any(s < span.end and span.start < e for s, e in gold):
                    continue
                parts = name_parts(text[span.start: span.end])
                if not any(vocab.is_name(p) for p in parts):
                    words |= {p.lower() for p in parts if "-" not in p}
    return sorted(words), dict(docs)


def _counts(docs: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in docs.items())


def _write_list(out: Path, words: list[str], docs: Mapping[str, int], header: str) -> None:
    out.write_text(header + "\n".join(words) + "\n", encoding="utf-8")
    print(f"{out}: {len(words)} words from {sum(docs.values())} documents")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.build_vocabulary", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="shared data folder (default: CRAG_DATA_DIR)")
    parser.add_argument("--out-dir", default=str(RESOURCES))
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir) if args.data_dir else load_settings().data_dir
    for language in ("en", "de"):
        try:
            words, docs = build(data_dir, language)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _write_list(Path(args.out_dir) / f"clinical_vocabulary.{language}.txt", words, docs,
                    f"# Clinical words of the allow-list layer ({language}); "
                    f"built by python -m finetune.build_vocabulary\n"
                    f"# sources (documents): {_counts(docs)}; dev parts only;\n"
                    f"# kept: in >= {MIN_DOCS} documents, lower case or a short abbreviation, never a gold PHI word\n")
    reload_vocabulary()  # the eponym pass reads the clinical lists just written
    for language in ("en", "de"):
        sources = [s for s in _sources(data_dir, language) if s[0] not in EPONYMS_SKIP]
        words, docs = eponyms_in_use(sources, language)
        _write_list(Path(args.out_dir) / f"eponyms_in_use.{language}.txt", words, docs,
                    f"# Eponyms in use ({language}): unlisted words before a device or disease noun, outside any PHI;\n"
                    f"# built by python -m finetune.build_vocabulary; sources (documents): {_counts(docs)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
