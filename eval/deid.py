"""Measure de-identification against gold PHI spans: recall/precision per type, over-masking, residual PHI.

    python -m eval.deid --data ../shared/data/physionet_deid_dev/notes.jsonl [--out DIR]

Input: any JSONL with ``{doc_id, patient_id?, text, phi: [{start, end, label}], language?}``. Gold
labels are mapped onto our PHI types in ``finetune.phi_types`` (the one place for label sets).

Metrics (docs/design.md §7), counted on alphanumeric characters so spaces and punctuation at span edges
("ROSSETTI. ") neither help nor hurt:
- recall per type = gold spans found / gold spans; a gold span is found when predicted spans (any
  type) cover >= 90 % of its characters;
- precision = predicted spans that are PHI / predicted spans; a predicted span is PHI when >= 50 %
  of its characters lie inside any annotated span (also excluded ones: a title the corpus marks is
  not a false alarm);
- non-PHI masked = characters outside every annotated span that were masked / all such characters;
- residual PHI = counted gold strings (>= 3 characters) still present, as whole words, in the
  pseudonymized text (the surrogate step's output, not just the detector's), outside the
  surrogates themselves (a date shifted onto another date of the same note is not a leak).
Writes ``deid_metrics.json``, ``deid_metrics.md``, ``deid_recall.png`` and ``manifest.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

import rag  # noqa: F401  (offline environment first)
from eval.deid_detectors import DETECTORS, Detector, DetectorUnavailable, make_detector
from eval.deid_gold import GoldDoc, load_gold
from eval.deid_shapes import value_shape
from eval.deid_stress import build_pools, stress_variants
from eval.report import sha256_file, write_json
from finetune.phi_detector import tagger_folder
from finetune.phi_types import PhiType, excluded_reason
from finetune.split import UNREAD_SEED, unread_patients
from rag.config import load_settings
from rag.corpus import CorpusError

COVERAGE_FOUND = 0.9
PRECISION_INSIDE = 0.5
#: Only for measuring: the surrogates of an evaluation run are thrown away, so a fixed, public key
#: keeps runs reproducible. Real runs must use load_key() with a secret key file.
EVAL_KEY = b"eval.deid: public evaluation key, never for real data"


def _alnum_mask(text: str) -> list[bool]:
    return [c.isalnum() for c in text]


@dataclass
class Tally:
    gold: Counter = field(default_factory=Counter)
    found: Counter = field(default_factory=Counter)
    excluded: Counter = field(default_factory=Counter)
    predicted: Counter = field(default_factory=Counter)
    predicted_ok: Counter = field(default_factory=Counter)
    residual: Counter = field(default_factory=Counter)
    residual_checked: Counter = field(default_factory=Counter)
    shape_gold: Counter = field(default_factory=Counter)
    shape_found: Counter = field(default_factory=Counter)
    nonphi_chars: int = 0
    nonphi_masked: int = 0
    phi_chars: int = 0
    phi_masked: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    residuals: list[dict[str, Any]] = field(default_factory=list)


def span_found(masked: Sequence[bool], alnum: Sequence[bool], start: int, end: int) -> bool:
    """A gold span counts as found when the predictions cover COVERAGE_FOUND of its letters and
    digits (of all its characters when it has none)."""
    chars = [i for i in range(start, end) if alnum[i]] or list(range(start, end))
    return sum(masked[i] for i in chars) / len(chars) >= COVERAGE_FOUND


def score_document(gd: GoldDoc, predicted: list, output_text: str, tally: Tally, keep_examples: bool,
                   replaced: list[tuple[int, int]] | None = None) -> None:
    """Add one document to the tally; ``replaced`` are the surrogate regions of ``output_text``."""
    text = gd.document.text
    alnum = _alnum_mask(text)
    masked = [False] * len(text)
    for span in predicted:
        for i in range(span.start, span.end):
            masked[i] = True
    annotated = [False] * len(text)
    for g in gd.gold:
        for i in range(g.start, g.end):
            annotated[i] = True
    for g in gd.gold:
        if g.kind is None:
            tally.excluded[g.label] += 1
            continue
        tally.gold[g.kind] += 1
        shape = (g.kind.value, value_shape(g.kind, text[g.start:g.end]))
        tally.shape_gold[shape] += 1
        if span_found(masked, alnum, g.start, g.end):
            tally.found[g.kind] += 1
            tally.shape_found[shape] += 1
        elif keep_examples:
            tally.misses.append({"doc_id": gd.document.doc_id, "label": g.label, "type": g.kind.value,
                                 "text": text[g.start:g.end], "context": text[max(0, g.start - 30): g.end + 30]})
        value = text[g.start:g.end].strip()
        if sum(c.isalnum() for c in value) >= 3:
            tally.residual_checked[g.kind] += 1
            leaks = [m for m in re.finditer(r"(?<![\w])" + re.escape(value) + r"(?![\w])", output_text)
                     if not any(a <= m.start() and m.end() <= b for a, b in replaced or ())]
            if leaks:
                tally.residual[g.kind] += 1
                if keep_examples:
                    tally.residuals.append({"doc_id": gd.document.doc_id, "type": g.kind.value, "text": value})
    for span in predicted:
        chars = [i for i in range(span.start, span.end) if alnum[i]] or list(range(span.start, span.end))
        inside = sum(annotated[i] for i in chars) / len(chars)
        tally.predicted[span.label] += 1
        if inside >= PRECISION_INSIDE:
            tally.predicted_ok[span.label] += 1
        elif keep_examples:
            tally.false_alarms.append({"doc_id": gd.document.doc_id, "type": span.label.value,
                                       "text": text[span.start:span.end], "source": span.source,
                                       "context": text[max(0, span.start - 30): span.end + 30]})
    for i, is_alnum in enumerate(alnum):
        if not is_alnum:
            continue
        if annotated[i]:
            tally.phi_chars += 1
            tally.phi_masked += masked[i]
        else:
            tally.nonphi_chars += 1
            tally.nonphi_masked += masked[i]


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def summarize(tally: Tally) -> dict[str, Any]:
    types = [t for t in PhiType if tally.gold[t] or tally.predicted[t]]
    per_type = {}
    for t in types:
        per_type[t.value] = {
            "gold": tally.gold[t], "found": tally.found[t], "recall": _ratio(tally.found[t], tally.gold[t]),
            "predicted": tally.predicted[t], "predicted_phi": tally.predicted_ok[t],
            "precision": _ratio(tally.predicted_ok[t], tally.predicted[t]),
            "residual_in_output": tally.residual[t], "residual_checked": tally.residual_checked[t],
        }
    gold, found = sum(tally.gold.values()), sum(tally.found.values())
    pred, ok = sum(tally.predicted.values()), sum(tally.predicted_ok.values())
    return {
        "overall": {"gold": gold, "found": found, "recall": _ratio(found, gold), "predicted": pred,
                    "precision": _ratio(ok, pred),
                    "nonphi_masked": _ratio(tally.nonphi_masked, tally.nonphi_chars),
                    "nonphi_chars": tally.nonphi_chars, "nonphi_chars_masked": tally.nonphi_masked,
                    "phi_char_recall": _ratio(tally.phi_masked, tally.phi_chars),
                    "residual_in_output": sum(tally.residual.values()),
                    "residual_checked": sum(tally.residual_checked.values())},
        "per_type": per_type,
        "by_shape": sorted(({"type": kind, "shape": shape, "gold": n, "found": tally.shape_found[(kind, shape)],
                             "missed": n - tally.shape_found[(kind, shape)]}
                            for (kind, shape), n in tally.shape_gold.items()),
                           key=lambda row: (row["type"], -row["missed"], -row["gold"])),
        "excluded_gold": {label: {"count": n, "reason": excluded_reason(label)} for label, n in tally.excluded.items()},
    }


def markdown_table(summary: dict[str, Any], title: str) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = [f"### {title}", "",
             "| type | gold | found | recall | predicted | precision | residual in output |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in summary["per_type"].items():
        lines.append(f"| {name} | {row['gold']} | {row['found']} | {pct(row['recall'])} | {row['predicted']} | "
                     f"{pct(row['precision'])} | {row['residual_in_output']}/{row['residual_checked']} |")
    o = summary["overall"]
    lines.append(f"| **all** | {o['gold']} | {o['found']} | **{pct(o['recall'])}** | {o['predicted']} | "
                 f"**{pct(o['precision'])}** | {o['residual_in_output']}/{o['residual_checked']} |")
    lines += ["", f"Non-PHI characters masked: {o['nonphi_chars_masked']}/{o['nonphi_chars']} "
                  f"({100 * (o['nonphi_masked'] or 0):.2f} %).",
              "Recall: gold span found when predictions cover >= 90 % of its alphanumeric characters. "
              "Precision: predicted span counted as PHI when >= 50 % of its characters are annotated. "
              "Residual: gold strings (>= 3 characters) still in the pseudonymized text."]
    if summary["excluded_gold"]:
        excluded = ", ".join(f"{k} {v['count']} ({v['reason']})" for k, v in summary["excluded_gold"].items())
        lines.append(f"Not counted: {excluded}.")
    return "\n".join(lines + shape_table(summary)) + "\n"


def shape_table(summary: dict[str, Any]) -> list[str]:
    """Misses by the form of the value (``eval.deid_shapes``): no text, so the unread part gets it too."""
    missed = [row for row in summary.get("by_shape", []) if row["missed"]]
    if not missed:
        return []
    lines = ["", "Missed, by the form of the value (digits, names and words replaced by their shape):", "",
             "| type | value shape | gold | missed |", "|---|---|---:|---:|"]
    lines += [f"| {r['type']} | {r['shape']} | {r['gold']} | {r['missed']} |" for r in missed]
    return lines


def plot(summary: dict[str, Any], path: Path, title: str, stress: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary["per_type"] if summary["per_type"][n]["gold"]] + ["all"]

    def values(source: dict[str, Any], key: str) -> list[float]:
        rows = {**source["per_type"], "all": source["overall"]}
        return [(rows.get(n) or {}).get(key) or 0 for n in names]

    bars = [("recall", values(summary, "recall")), ("precision", values(summary, "precision"))]
    if stress is not None:
        bars += [("recall, stress", values(stress, "recall")), ("precision, stress", values(stress, "precision"))]
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 1.1), 3.8))
    x = range(len(names))
    width = 0.8 / len(bars)
    for k, (label, heights) in enumerate(bars):
        ax.bar([i - 0.4 + width * (k + 0.5) for i in x], heights, width=width, label=label)
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = ("all", "dev", "unread")


def select_part(docs: list[GoldDoc], part: str) -> list[GoldDoc]:
    """The development or the unread part of a set, split by patient (``finetune.split.unread_patients``)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if part == "all":
        return docs
    unread = unread_patients(g.document.patient_id for g in docs)
    return [g for g in docs if (g.document.patient_id in unread) == (part == "unread")]


def evaluate_docs(docs: list[GoldDoc], detector: Detector, *, language: str | None = None,
                  keep_examples: bool = False, batch_size: int = 32, progress: str | None = None) -> dict[str, Any]:
    """Run a detector over annotated documents and score it (see the module docstring)."""
    tally = Tally()
    started = time.perf_counter()
    languages: Counter[str] = Counter()
    with tqdm(total=len(docs), desc=progress or detector.name, unit="doc", disable=progress is None) as bar:
        for i in range(0, len(docs), batch_size):
            batch = docs[i: i + batch_size]
            for gd, result in zip(batch, detector.detect([g.document for g in batch], language)):
                languages[result.language] += 1
                score_document(gd, result.spans, result.output_text, tally, keep_examples, result.replaced)
            bar.update(len(batch))
    elapsed = time.perf_counter() - started
    summary = summarize(tally)
    characters = sum(len(g.document.text) for g in docs)
    summary["run"] = {"detector": detector.name, "documents": len(docs), "characters": characters,
                      "languages": dict(languages), "seconds": round(elapsed, 2),
                      "docs_per_second": round(len(docs) / elapsed, 2) if elapsed else None,
                      "models": detector.model_versions}
    if keep_examples:
        summary["misses"] = tally.misses
        summary["false_alarms"] = tally.false_alarms
        summary["residual_examples"] = tally.residuals
    return summary


def evaluate(data: Path, *, key: bytes = EVAL_KEY, language: str | None = None, scheme: str | None = None,
             limit: int | None = None, keep_examples: bool = False, batch_size: int = 32, part: str = "all",
             stress: int = 0, seed: int = 0, detector: str = "ours", progress: bool = False,
             tagger: str | Path | None = None) -> dict[str, Any]:
    """Scores on a set (or its dev/unread part); with ``stress`` > 0 also on that many surrogate
    re-injected variants of every document (``eval.deid_stress``) and the difference."""
    docs = select_part(load_gold(data, scheme), part)[:limit]
    engine = make_detector(detector, key, batch_size, tagger)
    summary = evaluate_docs(docs, engine, language=language, keep_examples=keep_examples, batch_size=batch_size,
                            progress="original" if progress else None)
    summary["run"]["part"] = part
    if stress <= 0:
        return summary

    pools = build_pools()
    stressed = stress_variants(docs, stress, seed, pools)
    stress_summary = evaluate_docs(stressed, engine, language=language, keep_examples=keep_examples,
                                   batch_size=batch_size, progress="stress" if progress else None)
    stress_summary["run"].update(part=part, variants=stress, seed=seed, pools=pools.summary())
    return {**summary, "stress": stress_summary}


def comparison_table(summary: dict[str, Any]) -> str:
    """Original vs stress variants, per type: what the detector knows vs what it generalizes to."""
    stress = summary["stress"]
    lines = ["| type | gold (orig / stress) | recall orig | recall stress | diff | precision orig | precision stress |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    names = list(dict.fromkeys([*summary["per_type"], *stress["per_type"]]))
    rows = [(n, summary["per_type"].get(n, {}), stress["per_type"].get(n, {})) for n in names]
    rows.append(("**all**", summary["overall"], stress["overall"]))
    for name, a, b in rows:
        if not a.get("gold") and not b.get("gold"):
            continue
        ra, rb = a.get("recall"), b.get("recall")
        diff = "–" if ra is None or rb is None else f"{rb - ra:+.3f}"
        lines.append(f"| {name} | {a.get('gold', 0)} / {b.get('gold', 0)} | {fmt(ra)} | {fmt(rb)} | {diff} | "
                     f"{fmt(a.get('precision'))} | {fmt(b.get('precision'))} |")
    lines.append("")
    lines.append(f"Non-PHI characters masked: original {100 * (summary['overall']['nonphi_masked'] or 0):.2f} %, "
                 f"stress {100 * (stress['overall']['nonphi_masked'] or 0):.2f} %. Stress: "
                 f"{stress['run']['variants']} surrogate re-injected variants per document (seed {stress['run']['seed']}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.deid", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True,
                        help="JSONL with gold 'phi' spans, or presidio-research's synthetic JSON list")
    parser.add_argument("--out", default=None, help="output folder (default: var/eval/deid/<data name>[-part][-detector])")
    parser.add_argument("--language", choices=["en", "de"], default=None,
                        help="force a language (default: per document, given or detected)")
    parser.add_argument("--scheme", choices=["physionet", "grascco", "presidio", "own"], default=None,
                        help="gold label set (default: looked up in all known sets)")
    parser.add_argument("--part", choices=PARTS, default="all",
                        help="'dev': the patients rules may be written against; 'unread': the seeded third nobody "
                             "reads (no --show-misses); default all")
    parser.add_argument("--stress", type=int, default=0, metavar="N",
                        help="also score N surrogate re-injected variants per document (eval.deid_stress)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stress variants")
    parser.add_argument("--detector", choices=list(DETECTORS), default="ours",
                        help="'ours' (finetune.pseudonymize) or 'philter' (philter-lite, for comparison)")
    parser.add_argument("--tagger", default=None,
                        help="a finetune.phi_tagger folder added to our rules (default: the phi_tagger setting)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--show-misses", action="store_true",
                        help="also write missed gold spans and false alarms (contains PHI strings!)")
    args = parser.parse_args(argv)
    if args.show_misses and args.part != "dev":
        parser.error("--show-misses needs --part dev: the unread part is scored, never read")
    data = Path(args.data)
    name = data.parent.name if data.name in ("notes.jsonl", "documents.jsonl") else data.stem

    settings = load_settings()
    tagger = tagger_folder(args.tagger or None) if args.detector == "ours" else None  # the one PhiDetector uses
    suffix = ("" if args.part == "all" else f"-{args.part}") + ("" if args.detector == "ours" else f"-{args.detector}") \
        + ("-tagger" if tagger else "")
    out = Path(args.out) if args.out else settings.home / "eval" / "deid" / f"{name}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = evaluate(data, language=args.language, scheme=args.scheme, limit=args.limit,
                           keep_examples=args.show_misses, part=args.part, stress=args.stress, seed=args.seed,
                           detector=args.detector, progress=True, tagger=args.tagger)
    except (CorpusError, FileNotFoundError, DetectorUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    part = "" if args.part == "all" else f", {args.part} part"
    title = f"De-identification on {name}{part} ({summary['run']['documents']} documents, {summary['run']['detector']})"
    write_json(summary, out / "deid_metrics.json")
    table = markdown_table(summary, title)
    if "stress" in summary:
        table += "\n" + markdown_table(summary["stress"], f"Stress variants of {name}{part}") + "\n"
        table += "### Original vs stress\n\n" + comparison_table(summary)
    (out / "deid_metrics.md").write_text(table, encoding="utf-8")
    plot(summary, out / "deid_recall.png", title, summary.get("stress"))
    manifest = {
        "stage": "eval.deid", "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(data), "sha256": sha256_file(data),
                  "documents": summary["run"]["documents"]},
        "parameters": {"coverage_found": COVERAGE_FOUND, "precision_inside": PRECISION_INSIDE,
                       "language": args.language or "per document", "scheme": args.scheme or "auto",
                       "part": args.part, "unread_seed": UNREAD_SEED, "stress_variants": args.stress,
                       "stress_seed": args.seed, "detector": args.detector,
                       "tagger": tagger,
                       "limit": args.limit, "key": "fixed public evaluation key (outputs discarded)"},
        "models": summary["run"]["models"], "timing_seconds": summary["run"]["seconds"],
        "stress_pools": summary.get("stress", {}).get("run", {}).get("pools"),
        "outputs": ["deid_metrics.json", "deid_metrics.md", "deid_recall.png"],
    }
    write_json(manifest, out / "manifest.json")
    print(table)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
