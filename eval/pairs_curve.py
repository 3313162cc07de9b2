"""Dev MAP@100 against the number of training QA pairs: ``python -m eval.pairs_curve`` (issue 20).

Whether more generated questions make a better embedder is a measurement, not an assumption: a
run that added 481 weaker questions scored below the base (docs/results.md, recipe variants). This
trains the ``cpu-demo`` recipe once per size, each time on the preset's own QA files plus the
first N rows of ``--extra`` (a synthesis output; its rows are in patient-interleaved order when it
was made with ``--interleave-patients``, so a prefix covers many patients), and reads what the train
stage measured on the dev split: MAP@100 of the fine-tuned model alone (a = 1) and of the weight
the recipe chooses (WiSE-FT, within 5% of the base on the guards). Dev only: the test split is for
the recipe that wins here.

    python -m eval.pairs_curve --extra data/qa/physionet_deid_dev/qa.train.anchored.jsonl \\
        --sizes 0,500,all --key-file KEY --out var/eval/pairs_curve

Each size is its own pipeline run folder under ``<out>/runs/<size>`` (resumable: a finished size
is not trained again) and its own model, ``<preset's model name>-pairs<size>`` in the trained-models
folder: the curve never overwrites the ``domain`` model the app serves. Writes ``results.json``, ``results.md`` and ``pairs_curve.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.report import write_json, write_markdown_table
from finetune.pipeline import PipelineError, run_pipeline
from finetune.presets import get_preset
from finetune.qa_schema import read_qa
from rag.config import Settings, load_settings
from rag.corpus import CorpusError
from rag.manifest import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ["extra rows", "training pairs", "dev MAP@100 base", "dev MAP@100 a=1", "chosen a",
           "dev MAP@100 chosen", "train s"]


def parse_sizes(text: str, available: int) -> list[int]:
    """``"0,500,all"`` -> [0, 500, available]; sizes above ``available`` are an error, not clipped."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        n = available if part == "all" else int(part)
        if n < 0 or n > available:
            raise ValueError(f"size {part!r}: the extra file has {available} rows")
        sizes.append(n)
    return sorted(set(sizes))


def prefix_file(extra: Path, rows: Sequence[str], n: int, folder: Path) -> Path:
    """The first ``n`` rows of ``extra`` as a file of their own (with the source's manifest beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{extra.stem}.first{n}.jsonl"
    atomic_write_text(path, "".join(line + "\n" for line in rows[:n]))
    source_manifest = extra.parent / "manifest.json"
    if source_manifest.is_file():
        atomic_write_text(folder / "manifest.json", source_manifest.read_text(encoding="utf-8"))
    return path


def point(size: int, run_dir: Path) -> dict[str, Any]:
    """One row of the curve from a finished run's train-stage manifest."""
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text(encoding="utf-8"))
    result = manifest["result"]
    by_weight = {float(k): v for k, v in (result.get("dev_map_by_interpolation") or {}).items()}
    chosen = float(result.get("interpolation", 1.0))
    return {"extra rows": size, "training pairs": result.get("pairs"), "dev MAP@100 base": by_weight.get(0.0),
            "dev MAP@100 a=1": by_weight.get(1.0), "chosen a": chosen, "dev MAP@100 chosen": by_weight.get(chosen),
            "train s": round(float((manifest.get("pipeline") or {}).get("seconds") or 0.0), 1),
            "dev_map_by_interpolation": result.get("dev_map_by_interpolation"), "run": str(run_dir)}


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["training pairs"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["dev MAP@100 a=1"] for r in rows], marker="o", label="fine-tuned alone (a = 1)")
    ax.plot(xs, [r["dev MAP@100 chosen"] for r in rows], marker="s", label="chosen WiSE-FT weight")
    if rows and rows[0]["dev MAP@100 base"] is not None:
        ax.axhline(rows[0]["dev MAP@100 base"], ls="--", color="grey", label="base (a = 0)")
    ax.set_xlabel("training QA pairs")
    ax.set_ylabel("dev MAP@100 (cross-patient, chunks)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(extra: Path, sizes_text: str, out: Path, *, preset_name: str, key_file: Path | None,
        settings: Settings, progress: bool = True) -> list[dict[str, Any]]:
    read_qa(extra, required=("doc_id", "question"))  # a bad row names file and line before any training
    lines = [line for line in extra.read_text(encoding="utf-8").splitlines() if line.strip()]
    sizes = parse_sizes(sizes_text, len(lines))
    preset = get_preset(preset_name)
    rows = []
    for n in sizes:
        files = tuple(preset.qa_files)
        if n == len(lines):
            files += (str(extra.resolve()),)
        elif n:
            files += (str(prefix_file(extra, lines, n, out / "extra" / str(n))),)
        run_dir = out / "runs" / str(n)
        log.info("size %d: %d QA files -> %s", n, len(files), run_dir)
        sized = preset.with_overrides(qa_files=files, train_name=f"{preset.train.name}-pairs{n}")
        run_pipeline(sized, settings, root=run_dir, key_file=key_file,
                     stages=["pseudonymize", "synthesize", "split", "mine", "train"], progress=progress)
        rows.append(point(n, run_dir))
        write_json({"extra": str(extra), "preset": preset_name, "rows": rows}, out / "results.json")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.pairs_curve", description=__doc__.split("\n")[0])
    parser.add_argument("--extra", type=Path, required=True, help="QA rows (qa.jsonl) added to the preset's QA files")
    parser.add_argument("--sizes", default="0,all", help="comma list of row counts of --extra, 'all' for every row")
    parser.add_argument("--preset", default="cpu-demo")
    parser.add_argument("--key-file", type=Path, default=None, help="pseudonymization key (default CRAG_PRIVACY_KEY_FILE)")
    parser.add_argument("--out", type=Path, default=None, help="default <home>/eval/pairs_curve")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings()
    out = args.out or Path(settings.home) / "eval" / "pairs_curve"
    try:
        rows = run(args.extra, args.sizes, out, preset_name=args.preset, key_file=args.key_file, settings=settings,
                   progress=not args.quiet)
    except (FileNotFoundError, ValueError, PipelineError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = write_markdown_table(rows, COLUMNS, out / "results.md", title=f"Dev MAP@100 by training pairs ({args.preset})",
                                 notes=[f"Extra rows: the first N of {args.extra}; dev = the preset's dev split."])
    plot(rows, out / "pairs_curve.png")
    print(table)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
