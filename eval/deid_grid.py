"""Context grids: stress-pool values in invented sentences, to see which contexts a detector misses.

The stress variants (``eval.deid_stress``) change the values of a set's PHI but keep its contexts, so
rules written from the dev part's misses learn the dev part's contexts, and the unread part, whose
misses nobody reads, is the only check on new ones. A grid adds contexts that belong to no annotated
set: sentences written for this harness (``resources/deid_grid_templates.json``), each with one slot,
filled with values drawn the way the stress variants draw them (same pools, cases, typos). Misses
are shown per sentence, with the values that were missed: the values are synthetic, the sentences
invented, so nothing here is PHI. The 'tune' sentences are the ones rules may be written from; the
'held_out' ones are for scoring a round of rules once.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from eval.deid import span_found
from eval.deid_stress import _Draw, build_pools, training_pools
from eval.report import write_report
from finetune.phi_types import PhiType

TEMPLATES = Path(__file__).parent / "resources" / "deid_grid_templates.json"
SLOTS = {"place": "{P}", "date": "{D}"}
#: The originals a value is drawn for, weighted like the PhysioNet dev part's gold (places: any town;
#: dates: mostly m/d). Bare years are left out: alone in a sentence they read as clock times ("at 2015").
ORIGINALS = {"place": ["Springfield"],
             "date": ["7/18"] * 39 + ["8/2"] * 10 + ["10/16"] * 7 + ["10/3"] * 3 + ["may"] * 2 + ["10/13/82"] * 2
             + ["11th"]}


@dataclass
class TemplateResult:
    template: str
    tried: int = 0
    missed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return 1 - len(self.missed) / self.tried if self.tried else float("nan")


def load_templates(kind: str, part: str, path: Path = TEMPLATES) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        templates = data[kind][part]
    except KeyError:
        raise ValueError(f"{path}: no {part!r} sentences for {kind!r}") from None
    slot = SLOTS[kind]
    bad = [t for t in templates if t.count(slot) != 1]
    if bad:
        raise ValueError(f"{path}: {kind}/{part} sentences need exactly one {slot}: {bad[:3]}")
    return templates


def covered(spans, start: int, end: int, text: str) -> bool:
    """The value found, by eval.deid's rule."""
    masked = [False] * len(text)
    for span in spans:
        masked[span.start:span.end] = [True] * (span.end - span.start)
    return span_found(masked, [c.isalnum() for c in text], start, end)


def fill(template: str, kind: str, draw: _Draw) -> tuple[str, int, int]:
    """The sentence with a drawn value in its slot, and where the value stands; a sentence written
    in capitals gets a capital value."""
    slot = SLOTS[kind]
    original = draw.rng.choice(ORIGINALS[kind])
    value = " ".join(draw.place([original])) if kind == "place" else draw.date(original)
    if template.replace(slot, "").isupper():
        value = value.upper()
    text = template.replace(slot, value)
    start = text.index(value)
    return text, start, start + len(value)


def run_grid(detector, kind: str, templates: list[str], per_template: int, seed: int,
             language: str = "en") -> list[TemplateResult]:
    """Fill every sentence ``per_template`` times and record the values the detector leaves."""
    pools = build_pools()
    rng = random.Random(seed)
    results = []
    for template in templates:
        result = TemplateResult(template)
        for _ in range(per_template):
            text, start, end = fill(template, kind, _Draw(pools, rng, language))
            result.tried += 1
            if not covered(detector.detect(text, language), start, end, text):
                result.missed.append(text[start:end])
        results.append(result)
    return results


def write_training_set(out: Path, per_template: int, seed: int, sentences_per_text: int = 8,
                       language: str = "en", path: Path = TEMPLATES) -> int:
    """The 'tune' sentences of every kind, filled with training-pool values (never the stress pools,
    never a held-out sentence), as annotated JSONL for ``finetune.phi_tagger``: texts of
    ``sentences_per_text`` shuffled sentences, so the tagger sees each context among others as in
    a note. Returns the number of texts."""
    rng = random.Random(seed)
    pools = training_pools()
    filled: list[tuple[str, int, int, str]] = []
    for kind in sorted(SLOTS):
        label = PhiType.LOCATION.value if kind == "place" else PhiType.DATE.value
        for template in load_templates(kind, "tune", path):
            for _ in range(per_template):
                filled.append((*fill(template, kind, _Draw(pools, rng, language)), label))
    rng.shuffle(filled)
    out.parent.mkdir(parents=True, exist_ok=True)
    texts = 0
    with out.open("w", encoding="utf-8") as handle:
        for first in range(0, len(filled), sentences_per_text):
            text, phi = "", []
            for sentence, start, end, label in filled[first:first + sentences_per_text]:
                if text:
                    text += " "
                phi.append({"start": len(text) + start, "end": len(text) + end, "label": label})
                text += sentence
            handle.write(json.dumps({"doc_id": f"grid-{texts}", "text": text, "language": language, "phi": phi},
                                    ensure_ascii=False) + "\n")
            texts += 1
    return texts


def main(argv: list[str] | None = None) -> int:
    """Score the detector on a grid of invented sentences filled with stress-pool values."""
    parser = argparse.ArgumentParser(prog="python -m eval.deid_grid", description=main.__doc__)
    parser.add_argument("--kind", choices=sorted(SLOTS), default="place")
    parser.add_argument("--part", choices=["tune", "held_out"], default="tune")
    parser.add_argument("--per-template", type=int, default=40)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="default: var/eval/deid_grid/<kind>-<part>")
    parser.add_argument("--training-out", type=Path, default=None,
                        help="instead of scoring: write the 'tune' sentences of every kind, filled with "
                             "training-pool values, as annotated JSONL for finetune.phi_tagger")
    args = parser.parse_args(argv)
    if args.training_out:
        texts = write_training_set(args.training_out, args.per_template, args.seed)
        print(f"{texts} annotated texts (tune sentences, {args.per_template} values each) -> {args.training_out}")
        return 0
    try:
        templates = load_templates(args.kind, args.part)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from finetune.phi_detector import PhiDetector

    out = args.out or Path("var/eval/deid_grid") / f"{args.kind}-{args.part}"
    results = run_grid(PhiDetector(), args.kind, templates, args.per_template, args.seed)
    tried = sum(r.tried for r in results)
    missed = sum(len(r.missed) for r in results)
    rows = [{"sentence": r.template, "tried": r.tried, "missed": len(r.missed), "recall": r.recall,
             "missed values": ", ".join(r.missed[:6])} for r in sorted(results, key=lambda r: r.recall)]
    summary = {"kind": args.kind, "part": args.part, "seed": args.seed, "per_template": args.per_template,
               "tried": tried, "missed": missed, "recall": 1 - missed / tried, "sentences": rows}
    table = write_report(out, "grid", summary, rows, ["sentence", "tried", "missed", "recall", "missed values"],
                         title=f"{args.kind} grid ({args.part}): recall {summary['recall']:.3f} "
                               f"({missed} of {tried} missed)",
                         chart={args.kind: {f"{args.part} sentences": (summary["recall"], float("nan"), float("nan"))}},
                         metric_name="recall", chart_title=f"{args.kind} grid, seed {args.seed}",
                         inputs={"templates": TEMPLATES}, parameters=vars(args))
    print(table)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
