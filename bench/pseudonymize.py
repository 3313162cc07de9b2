"""Pseudonymization throughput: documents per second per process for ~3,000-character notes, EN and DE.

    .venv/bin/python bench/pseudonymize.py [--docs 60] [--batch-size 16] [--workers 2]

English notes are PhysioNet deid notes joined to ~3,000 characters, German ones GraSCCo letters cut
to ~3,000 characters (both from ../shared/data). One process runs ``Pseudonymizer.pseudonymize_many``
(detection with spaCy ``nlp.pipe`` over NER only, surrogates) after a warm-up batch; model loading is
reported separately. ``--workers N`` also times ``pseudonymize_file`` with N processes (wall clock,
model loading included). Writes bench/out/pseudonymize.json, .md and .png. Timings on a shared
machine are contended: compare runs made side by side only.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.config import load_settings  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
TARGET_CHARS = 3000
KEY = b"bench-only key, not for real data 0123456789"


def english_notes(data_dir: Path, count: int) -> list[str]:
    notes, current = [], ""
    for line in (data_dir / "physionet_deid_dev" / "notes.jsonl").open(encoding="utf-8"):
        current += json.loads(line)["text"] + "\n"
        if len(current) >= TARGET_CHARS:
            notes.append(current[:TARGET_CHARS])
            current = ""
            if len(notes) == count:
                break
    return notes


def german_notes(data_dir: Path, count: int) -> list[str]:
    notes = []
    letters = [json.loads(line)["text"] for line in (data_dir / "grascco_phi" / "documents.jsonl").open(encoding="utf-8")]
    i = 0
    while len(notes) < count:
        text = letters[i % len(letters)]
        start = (i // len(letters)) * TARGET_CHARS
        chunk = (text + "\n" + letters[(i + 1) % len(letters)])[start: start + TARGET_CHARS]
        if len(chunk) >= TARGET_CHARS * 0.9:
            notes.append(chunk)
        i += 1
    return notes


def time_one_process(engine, texts: list[str], language: str, batch_size: int) -> dict:
    from rag.corpus import Document

    docs = [Document(doc_id=f"{language}{i}", patient_id=f"P{i % 7}", text=t) for i, t in enumerate(texts)]
    engine.pseudonymize_many(docs[:batch_size], language)  # warm-up
    started = time.perf_counter()
    spans = 0
    for i in range(0, len(docs), batch_size):
        spans += sum(len(r.spans) for r in engine.pseudonymize_many(docs[i: i + batch_size], language))
    elapsed = time.perf_counter() - started
    chars = sum(len(t) for t in texts)
    return {"language": language, "documents": len(docs), "mean_chars": round(chars / len(docs)),
            "seconds": round(elapsed, 2), "docs_per_s": round(len(docs) / elapsed, 2),
            "chars_per_s": round(chars / elapsed), "spans": spans}


def time_workers(texts_by_lang: dict[str, list[str]], workers: int, batch_size: int) -> dict:
    from finetune.pseudonymize import pseudonymize_file

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        with src.open("w", encoding="utf-8") as fh:
            for lang, texts in texts_by_lang.items():
                for i, text in enumerate(texts):
                    fh.write(json.dumps({"doc_id": f"{lang}{i}", "patient_id": f"P{i % 7}", "text": text,
                                         "language": lang}, ensure_ascii=False) + "\n")
        started = time.perf_counter()
        report = pseudonymize_file(src, Path(tmp) / "out.jsonl", KEY, workers=workers, batch_size=batch_size,
                                   progress=False)
        elapsed = time.perf_counter() - started
    total = report["documents_done_this_run"]
    return {"workers": workers, "documents": total, "wall_seconds_incl_model_loading": round(elapsed, 2),
            "docs_per_s_total": round(total / elapsed, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=60, help="documents per language")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="also time pseudonymize_file with N processes")
    args = ap.parse_args()
    data_dir = Path(load_settings().data_dir)
    texts = {"en": english_notes(data_dir, args.docs), "de": german_notes(data_dir, args.docs)}

    from finetune.pseudonymize import Pseudonymizer

    started = time.perf_counter()
    engine = Pseudonymizer(KEY, batch_size=args.batch_size)
    load_s = time.perf_counter() - started
    rows = [time_one_process(engine, texts[lang], lang, args.batch_size) for lang in ("en", "de")]
    result = {"model_loading_s": round(load_s, 2), "per_process": rows, "models": engine.model_versions,
              "batch_size": args.batch_size, "note": "one process, 2-core machine shared with other jobs"}
    if args.workers > 1:
        result["workers"] = time_workers(texts, args.workers, args.batch_size)
    OUT.mkdir(exist_ok=True)
    (OUT / "pseudonymize.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["| language | documents | mean chars | docs/s per process | chars/s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['language']} | {r['documents']} | {r['mean_chars']} | {r['docs_per_s']} | {r['chars_per_s']} |"
              for r in rows]
    if "workers" in result:
        w = result["workers"]
        lines.append(f"\n{w['workers']} processes via pseudonymize_file: {w['docs_per_s_total']} docs/s in total "
                     f"(wall clock incl. model loading, {w['documents']} documents).")
    table = "\n".join(lines) + f"\n\nModel loading: {result['model_loading_s']} s per process.\n"
    (OUT / "pseudonymize.md").write_text(table, encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.bar([r["language"] for r in rows], [r["docs_per_s"] for r in rows])
    ax.axhline(5, color="gray", linestyle="--", label="target 5 docs/s (EN)")
    ax.set_ylabel("documents / s / process")
    ax.set_title("Pseudonymization, ~3,000-char notes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "pseudonymize.png", dpi=110)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
