"""False alarms on notes the allow-list never saw, measured on the dev part alone.

The allow-list layer's collected words (``finetune.build_vocabulary``) include every word the dev
part's notes use twice, so on dev its false alarms are those of a vocabulary that has read the
notes. The unread part shows the real rate (precision 0.82 there against 0.88-0.90 on dev), but its
false alarms are never shown. This harness shows them without opening the unread part: the dev
patients are split into folds (by patient, seeded); for each fold the word list is built again
without that fold's notes, and the fold is scored with it. Its false alarms are the kind a
hospital's unseen notes raise (new product names, shorthand, misspellings), and may be read.

    python -m eval.deid_holdout --data ../shared/data/physionet_deid_dev/notes.jsonl [--folds 3] [--stress 3]

Rules still come from the full dev part, so recall here is not a generalization figure; precision is.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import rag  # noqa: F401  (offline environment first)
from eval.deid import EVAL_KEY, evaluate_docs, select_part
from eval.deid_detectors import make_detector
from eval.deid_gold import GoldDoc, load_gold
from eval.deid_stress import build_pools, stress_variants
from eval.report import write_report
from rag.config import load_settings

#: The source name ``finetune.build_vocabulary`` gives each annotated set.
SOURCES = {"physionet_deid_dev": "en", "grascco_phi": "de"}


def _patient(gd: GoldDoc) -> str:
    """A document's patient; a document without one is its own (as ``finetune.build_vocabulary`` counts)."""
    return str(gd.document.patient_id or gd.document.doc_id)


def patient_folds(docs: list[GoldDoc], folds: int, seed: int) -> list[set[str]]:
    """The dev part's patients in ``folds`` seeded groups."""
    patients = sorted({_patient(g) for g in docs})
    random.Random(seed).shuffle(patients)
    return [set(patients[k::folds]) for k in range(folds)]


def run_holdout(data: Path, data_dir: Path, *, folds: int = 3, seed: int = 5, stress: int = 0,
                stress_seed: int = 0) -> dict[str, Any]:
    """Score each fold with a word list built without it; pooled and per-fold figures, false alarms."""
    from finetune.build_vocabulary import build
    from finetune.phi_vocabulary import use_collected_words

    source = data.parent.name
    if source not in SOURCES:
        raise ValueError(f"{data}: not an annotated set the word list reads ({', '.join(SOURCES)})")
    language = SOURCES[source]
    docs = select_part(load_gold(data, None), "dev")
    rows, alarms = [], []
    pools = build_pools() if stress else None
    try:
        for k, held in enumerate(patient_folds(docs, folds, seed)):
            words, _ = build(data_dir, language, leave_out={source: held})
            use_collected_words(language, set(words))
            part = [g for g in docs if _patient(g) in held]
            engine = make_detector("ours", EVAL_KEY, 32, None)
            orig = evaluate_docs(part, engine, keep_examples=True, progress=f"fold {k + 1} of {folds}")
            row = {"fold": k + 1, "patients": len(held), "documents": len(part), "predicted": orig["overall"]["predicted"],
                   "false alarms": len(orig["false_alarms"]), "precision": orig["overall"]["precision"],
                   "recall": orig["overall"]["recall"]}
            if stress:
                st = evaluate_docs(stress_variants(part, stress, stress_seed, pools), engine)
                row.update({"stress recall": st["overall"]["recall"], "stress precision": st["overall"]["precision"]})
            rows.append(row)
            alarms += [{**a, "fold": k + 1} for a in orig["false_alarms"]]
    finally:
        use_collected_words(language, None)
    predicted = sum(r["predicted"] for r in rows)
    pooled = {"predicted": predicted, "false alarms": len(alarms),
              "precision": round(1 - len(alarms) / predicted, 4) if predicted else None}
    return {"data": str(data), "folds": folds, "seed": seed, "stress": stress, "pooled": pooled, "per_fold": rows,
            "false_alarms": alarms}


def main(argv: list[str] | None = None) -> int:
    """Precision of the de-identifier on dev patients whose words the allow-list was built without."""
    parser = argparse.ArgumentParser(prog="python -m eval.deid_holdout", description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True, help="physionet_deid_dev/notes.jsonl or grascco_phi/documents.jsonl")
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default: CRAG_DATA_DIR)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--stress", type=int, default=0, help="also score N stress variants per note")
    parser.add_argument("--out", type=Path, default=None, help="default: var/eval/deid_holdout/<set>")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or load_settings().data_dir
    try:
        result = run_holdout(args.data, data_dir, folds=args.folds, seed=args.seed, stress=args.stress)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("var/eval/deid_holdout") / args.data.parent.name
    columns = [c for c in ("fold", "patients", "documents", "predicted", "false alarms", "precision", "recall",
                           "stress recall", "stress precision") if c in result["per_fold"][0]]
    pooled = result["pooled"]
    table = write_report(out, "holdout", result, result["per_fold"], columns,
                         title=f"word list built without each fold: precision {pooled['precision']} "
                               f"({pooled['false alarms']} false alarms of {pooled['predicted']} spans)",
                         chart={f"fold {r['fold']}": {"precision": (r["precision"], float("nan"), float("nan"))}
                                for r in result["per_fold"]},
                         metric_name="precision", chart_title=f"{args.data.parent.name}: word list without the fold",
                         inputs={"data": args.data}, parameters=vars(args))
    print(table)
    print(f"written to {out} (false alarms with context in holdout.json: dev notes only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
