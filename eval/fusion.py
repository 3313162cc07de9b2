"""Choose the hybrid retriever's dense/BM25 weights per scope on a dev set: ``python -m eval.fusion``.

Why a grid over the dense share that includes 0 and 1: those two ends rank like BM25 alone and the
dense model alone (the other list only fills the tail), so the weight chosen can never be below
either component on the set it is chosen on. Each candidate is scored by ``eval.ir.evaluate``, the
same path (chunks, scope inside the query, documents by their best chunk) that reports the results,
and among weights within ``MIN_GAIN`` of the best the one nearest plain RRF (0.5) wins: on a dev
set of a hundred questions smaller differences are noise, and plain RRF is the choice that assumes least.
The same margin decides whether to fuse at all: where no mixed weight beats the better component by
``MIN_GAIN``, that component alone is chosen (dense share 1 or 0). Why: in a cell dev cannot resolve
(German questions over English notes in patient scope: 70 questions, gains of 0.007-0.010), plain
RRF fell below the dense model alone on the test split under two of three keys, while the component
alone ties it by construction.

    python -m eval.fusion --qa-split dev --embedder me5-small
    python -m eval.fusion --qa-split dev --embedder var/models/domain --write   # fusion.json into the model folder
    python -m eval.fusion --qa-split dev --qa-language de --embedder var/models/domain --write   # German questions
    python -m eval.fusion --corpus C.jsonl --queries Q.jsonl --qrels R.tsv --embedder PATH

The dev split must not be the set results are reported on: with ``--qa-split dev`` the weights are
chosen on questions about the dev patients of ``physionet_deid_dev``, and the test split reports.
With ``--qa-language de`` the same split's questions in German (``qa.de.jsonl``, translated by
``finetune.translate --questions``) choose the weights German questions get; ``--write`` adds them
to the model's fusion under ``languages`` and keeps its other weights.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.ir import evaluate
from eval.report import markdown_table, write_json, write_markdown_table
from finetune.split import write_qa_split
from rag.beir import BeirSet, load_beir, load_named_set
from rag.config import REPO_ROOT, Settings, load_settings
from rag.embedders import get_embedder
from rag.fusion import Fusion, FusionWeights, fusion_for, write_fusion

log = logging.getLogger(__name__)

QA_FILE = REPO_ROOT / "data" / "qa" / "physionet_deid_dev" / "qa.jsonl"
#: The same questions per language: English as generated, German translated (finetune.translate --questions).
QA_FILES = {"en": QA_FILE, "de": QA_FILE.with_name("qa.de.jsonl")}
QA_CORPUS = "physionet_deid_dev"
QA_FRACTIONS = (0.7, 0.1, 0.2)  # the cpu-demo preset's split, so "dev" names the same patients
GRID = tuple(round(i / 10, 1) for i in range(11))  # the dense share; BM25 gets the rest
#: MAP@100 differences below this are noise on a dev set of ~100 questions: within it, the share
#: nearest plain RRF wins (as long as it is not below either component), and a fusion that does not
#: beat its better component by this much is not chosen.
MIN_GAIN = 0.01


def qa_split_set(split: str, out: Path, settings: Settings, language: str = "en") -> BeirSet:
    """The committed QA pairs of one patient split of physionet_deid_dev as a retrieval set, with the
    questions in ``language``."""
    suffix = "" if language == "en" else f"_{language}"
    beir, _ = write_qa_split(QA_FILES[language], QA_CORPUS, split, out / f"qa_{split}{suffix}_beir",
                             fractions=QA_FRACTIONS, settings=settings)
    return beir


def tune(beir: BeirSet, embedder: str, *, settings: Settings, out: Path, scopes: Sequence[str] = ("cross", "patient"),
         grid: Sequence[float] = GRID, progress: bool = True) -> dict[str, Any]:
    """MAP@100 of the hybrid for every dense share in ``grid`` and scope; the best share per scope."""
    curve: dict[str, dict[float, float]] = {s: {} for s in scopes}
    for share in grid:
        weights = FusionWeights(dense=share, bm25=round(1 - share, 6))
        fusion = Fusion(weights, weights, source=f"candidate {share:.1f}")
        for scope in scopes:
            res = evaluate(beir, f"cand={embedder},hybrid:cand", scope=scope,
                           settings=settings, out_dir=out / "ir", progress=progress,
                           base="cand", n_resamples=200, n_permutations=200, fusion=fusion)
            curve[scope][share] = res["aggregate"][scope]["hybrid:cand"]["map@100"]["mean"]
    chosen = {s: choose(curve[s]) for s in scopes}
    return {"curve": {s: {f"{w:.1f}": round(v, 4) for w, v in c.items()} for s, c in curve.items()},
            "chosen": chosen, "set": beir.name, "queries": len(beir.queries), "embedder": embedder}


def choose(curve: dict[float, float], min_gain: float = MIN_GAIN) -> float:
    """The better component alone (the grid end that scores higher; dense on a tie) unless some share
    beats it by ``min_gain``; otherwise the share nearest 0.5 among those within ``min_gain`` of the
    best and not below either component."""
    best = max(curve.values())
    ends = (min(curve), max(curve))
    better_end = max(ends, key=lambda w: (curve[w], w))
    floor = curve[better_end]
    if best < floor + min_gain:
        return better_end
    good = [w for w, v in curve.items() if v >= best - min_gain and v >= floor]
    return min(good, key=lambda w: (abs(w - 0.5), -curve[w]))


def fusion_from(result: dict[str, Any]) -> Fusion:
    """The weights :func:`tune` chose, as a :class:`Fusion` that names the set it was chosen on."""
    def weights(scope: str) -> FusionWeights:
        share = result["chosen"].get(scope, 0.5)
        return FusionWeights(dense=share, bm25=round(1 - share, 6))

    return Fusion(weights("cross"), weights("patient"),
                  source=f"eval.fusion on {result['set']} ({result['queries']} queries)")


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for scope, points in result["curve"].items():
        xs = [float(w) for w in points]
        ax.plot(xs, list(points.values()), marker="o", label=f"{scope} (chosen {result['chosen'][scope]:.1f})")
    ax.set_xlabel("dense share of the fusion (0 = BM25 order, 1 = dense order)")
    ax.set_ylabel("MAP@100")
    ax.set_title(f"Hybrid fusion on {result['set']}, {result['embedder']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.fusion", description=__doc__.split("\n")[0])
    src = parser.add_argument_group("dev set (one of)")
    src.add_argument("--qa-split", choices=["dev", "test"], help="committed QA pairs of this physionet_deid_dev split")
    parser.add_argument("--qa-language", choices=sorted(QA_FILES), default="en",
                        help="the questions' language with --qa-split; other than en, the weights chosen are "
                             "those for questions in that language")
    src.add_argument("--set", dest="set_name", help="a named set (rag.beir.NAMED_SETS)")
    src.add_argument("--corpus")
    src.add_argument("--queries")
    src.add_argument("--qrels")
    parser.add_argument("--embedder", default="me5-small", help="registry name or model folder")
    parser.add_argument("--scope", default="both", choices=["cross", "patient", "both"])
    parser.add_argument("--write", action="store_true", help="write fusion.json into the embedder's model folder")
    parser.add_argument("--out", help="output folder (default <home>/eval/fusion/<set>)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings()
    language = args.qa_language if args.qa_split else "en"
    name = (f"{args.qa_split}{'' if language == 'en' else '-' + language}" if args.qa_split else args.set_name) or "set"
    out = Path(args.out) if args.out else Path(settings.home) / "eval" / "fusion" / name
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.qa_split:
            beir = qa_split_set(args.qa_split, out, settings, language)
        elif args.set_name:
            beir = load_named_set(args.set_name, settings)
        elif args.corpus and args.queries and args.qrels:
            beir = load_beir(args.corpus, args.queries, args.qrels)
        else:
            parser.error("give --qa-split, --set or all of --corpus, --queries and --qrels")
        scopes = ("cross", "patient") if args.scope == "both" else (args.scope,)
        result = tune(beir, args.embedder, settings=settings, out=out, scopes=scopes, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    fusion = fusion_from(result)
    if language != "en":  # weights for questions in this language, next to the embedder's own
        fusion = fusion_for(get_embedder(args.embedder, settings=settings)).with_language(language, fusion)
    result["fusion"] = fusion.to_json()
    write_json(result, out / "fusion_results.json")
    rows = [{"dense share": w, **{s: result["curve"][s][w] for s in scopes}} for w in result["curve"][scopes[0]]]
    columns = ["dense share", *scopes]
    write_markdown_table(rows, columns, out / "fusion_results.md",
                         title=f"Hybrid fusion: MAP@100 by dense share on {result['set']} ({result['embedder']})",
                         notes=[f"chosen: {fusion.describe()}"])
    _plot(result, out / "fusion.png")
    print(markdown_table(rows, columns))
    print(f"chosen: {fusion.describe()}")
    if args.write:
        embedder = get_embedder(args.embedder, settings=settings)
        if embedder.path is None or not Path(args.embedder).expanduser().is_dir():
            print(f"error: --write needs a model folder; for a registry embedder add to rag.fusion.TUNED:\n"
                  f"    {embedder.name!r}: Fusion.from_json({json.dumps(fusion.to_json())}),", file=sys.stderr)
            return 1
        print(f"wrote {write_fusion(embedder.path, fusion)}")
    print(f"wrote {out / 'fusion_results.json'}, {out / 'fusion_results.md'}, {out / 'fusion.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
