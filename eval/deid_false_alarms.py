"""Spans a detector raises in text that holds no patient's PHI: false alarms on text nobody tuned on.

    python -m eval.deid_false_alarms                                  # MTSamples, 2,357 transcriptions
    python -m eval.deid_false_alarms --tagger var/models/phi-tagger   # with the learned layer

Why: precision on an annotated set is measured on notes whose words the allow-list has read, so it
flatters the rules; a learned layer can only be judged on text it never saw. MTSamples'
transcriptions were de-identified before publication, so what a detector masks there is mostly
over-masking. A few real towns and hospitals remain in them ("lived in Seattle"), so the count is an
upper bound on false alarms, to compare two detector versions on the same text, not a precision.
The report holds counts by type and by the layer that raised a span, never the text.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from eval.report import write_report
from rag.corpus import CorpusError, load_corpus


def count_spans(detector, docs, language: str = "en", progress: bool = True) -> dict:
    """Spans per type and per source, characters masked and documents per second."""
    from tqdm import tqdm

    by_type: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    masked = characters = 0
    started = time.perf_counter()
    for doc in tqdm(docs, desc="false alarms", unit="doc", disable=not progress):
        spans = detector.detect(doc.text, language)
        covered = [False] * len(doc.text)
        for span in spans:
            by_type[span.label.value] += 1
            by_source[span.source] += 1
            covered[span.start:span.end] = [True] * (span.end - span.start)
        masked += sum(c for c, ch in zip(covered, doc.text) if not ch.isspace())
        characters += sum(not ch.isspace() for ch in doc.text)
    seconds = time.perf_counter() - started
    return {"documents": len(docs), "spans": sum(by_type.values()), "by_type": dict(by_type.most_common()),
            "by_source": dict(by_source.most_common()), "characters_masked": masked / max(characters, 1),
            "docs_per_second": len(docs) / seconds if seconds else float("nan")}


def main(argv: list[str] | None = None) -> int:
    """Count the spans our detector raises in a corpus without PHI annotations."""
    parser = argparse.ArgumentParser(prog="python -m eval.deid_false_alarms", description=main.__doc__)
    parser.add_argument("--data", default="mtsamples", help="a corpus name or a .jsonl/.csv file (default: mtsamples)")
    parser.add_argument("--language", default="en")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--tagger", default=None, help="a finetune.phi_tagger folder added to the rules")
    parser.add_argument("--out", type=Path, default=None, help="default: var/eval/deid_false_alarms/<data>[-tagger]")
    args = parser.parse_args(argv)
    try:
        docs = load_corpus(args.data, limit=args.limit).documents
    except (CorpusError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from finetune.phi_detector import PhiDetector

    detector = PhiDetector(tagger=args.tagger or "")
    summary = {"data": args.data, "tagger": detector.tagger.version if detector.tagger else None,
               **count_spans(detector, docs, args.language)}
    name = Path(args.data).stem + ("-tagger" if args.tagger else "")
    out = args.out or Path("var/eval/deid_false_alarms") / name
    rows = ([{"what": f"type {k}", "spans": v} for k, v in summary["by_type"].items()]
            + [{"what": f"source {k}", "spans": v} for k, v in summary["by_source"].items()])
    per_doc = {k: (v / max(len(docs), 1), float("nan"), float("nan")) for k, v in summary["by_type"].items()}
    table = write_report(out, "false_alarms", summary, rows, ["what", "spans"],
                         title=f"{summary['spans']:,} spans in {len(docs):,} documents of {args.data} "
                               f"({summary['characters_masked']:.2%} of characters masked)",
                         chart={"spans per document": per_doc}, metric_name="spans per document",
                         chart_title=f"spans raised in {args.data}", inputs={"data": args.data},
                         parameters=vars(args))
    print(table)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
