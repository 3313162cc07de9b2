"""The whole study in one command: build a domain embedder, then measure it.

    python -m eval.pipeline --preset cpu-demo [--stages ...] [--force evaluate]

Runs the build stages of ``finetune.pipeline`` (pseudonymize, synthesize, split, mine, train; see
there), then ``fuse`` (hybrid weights per scope chosen on the dev split, and per question language
where the preset has translated questions) and ``evaluate``: ``eval.ir`` on the held-out test split
(both scopes, baselines, hybrid; English and each translation) and on sets our generator did not
make (synthea-conditions, pubmedqa), plus a summary against the targets
(``evaluate/summary.{json,md}``, ``summary_map100.png``). One run folder and
one chain of stage keys serve both commands: a model built by ``finetune.pipeline`` is evaluated
here without being rebuilt.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.fusion import GRID as FUSION_GRID
from eval.fusion import fusion_from
from eval.fusion import tune as tune_fusion
from eval.ir import evaluate
from eval.report import bar_chart, sha256_file, write_json, write_markdown_table
from finetune.pipeline import (
    BUILD_STAGES,
    PipelineError,
    Preset,
    Run,
    Stage,
    add_run_arguments,
    corpus_slug,
    guard_sample,
    run_from_arguments,
    subsample,
)
from finetune.pipeline import STAGES as BUILD_STAGE_NAMES
from finetune.split import write_qa_split
from rag.beir import BeirSet, load_beir, load_named_set
from rag.embedders import trained_models_dir
from rag.fusion import write_fusion

log = logging.getLogger("eval.pipeline")


def translated_split(run: Run, language: str, split: str, out_dir: Path) -> BeirSet | None:
    """One patient split of the preset's questions in ``language`` (same patients as the English
    split, from the run's ``splits.json``), or None when the preset has no such file."""
    path = run.preset.question_translations.get(language)
    if not path or not Path(path).is_file():
        log.warning("no %s questions (%s) - %s questions are not evaluated", language, path, language)
        return None
    beir, _ = write_qa_split(path, run.preset.qa_corpus, split, out_dir, assignment=run.dir("split") / "splits.json",
                             settings=run.settings)
    return dataclasses.replace(beir, name=f"{corpus_slug(run.preset.qa_corpus)}-{split}-{language}")


def _evaluate(run: Run) -> tuple[list[Path], dict]:
    preset = run.preset
    out_dir = run.dir("evaluate")
    models = [m if m != "domain" else f"domain={preset.train.name}" for m in preset.eval_models]
    sets = {}
    for key, folder in (("test", "test_beir"), ("test-cloze", "test_cloze")):
        d = run.dir("split") / folder
        sets[key] = load_beir(d / "corpus.jsonl", d / "queries.jsonl", d / "qrels.tsv",
                              name=f"{corpus_slug(preset.qa_corpus)}-{key}")
    for language in preset.question_translations:
        translated = translated_split(run, language, "test", out_dir / f"test_{language}_beir")
        if translated is not None:
            sets[f"test-{language}"] = translated
    results = {}
    for key, test in sets.items():
        if not test.queries:
            log.warning("%s: no queries (no QA pairs of held-out patients?) - not evaluated", key)
            continue
        results[key] = evaluate(test, models, scope=preset.eval_scope, settings=run.settings,
                                out_dir=out_dir / key, progress=run.progress, base=preset.train.base)
    for name in preset.general_sets:
        beir = general_sample(load_named_set(name, run.settings), preset, name)
        general = [m if m != "domain" else f"domain={preset.train.name}" for m in preset.general_models]
        results[name] = evaluate(beir, general, scope="both", settings=run.settings,
                                 out_dir=out_dir / name, progress=run.progress, base=preset.train.base)
    summary = summarize(results, base=preset.train.base)
    _write_summary(summary, out_dir)
    return [out_dir / "summary.json", out_dir / "summary.md"], {"summary": summary}


def general_sample(beir: Any, preset: Preset, set_name: str) -> Any:
    """The part of the general set ``set_name`` that the evaluate stage reports: its queries less the
    guard's (a seeded sample of ``general_query_limit`` of them when set), over ``general_max_docs``."""
    guard = guard_sample(beir, preset) if set_name in preset.guard_sets else None
    return subsample(beir, preset.general_query_limit, preset.general_max_docs, seed=preset.split_seed,
                     exclude=[q.query_id for q in guard.queries] if guard else ())



# --------------------------------------------------------------------------------------------
# Summary against the targets


def summarize(results: dict[str, dict], base: str = "me5-small") -> dict[str, Any]:
    """MAP@100 per set, model and scope, and the target checks (domain vs base, minilm, BM25).

    ``results`` maps a set name to what ``eval.ir.evaluate`` returned (``aggregate[scope][model]``).
    """
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    cis: dict[str, dict[str, dict[str, list[float]]]] = {}
    for set_name, res in results.items():
        for scope, models in (res.get("aggregate") or {}).items():
            for model, metrics in models.items():
                entry = metrics.get("map@100") or {}
                table.setdefault(set_name, {}).setdefault(model, {})[scope] = entry.get("mean")
                cis.setdefault(set_name, {}).setdefault(model, {})[scope] = entry.get("ci95")
    checks: dict[str, Any] = {}
    for set_name in [s for s in table if s == "test" or s.startswith("test-")]:
        test = table.get(set_name, {})
        if not test:
            continue

        def get(model: str, scope: str) -> float | None:
            return test.get(model, {}).get(scope)

        for scope in ("cross", "patient"):
            hybrid, parts = get("hybrid:domain", scope), [get("bm25", scope), get("domain", scope)]
            if hybrid is not None and None not in parts:
                checks[f"{set_name}: {scope} hybrid:domain >= max(bm25, domain)"] = hybrid >= max(parts)

        dom_c, base_c = get("domain", "cross"), get(base, "cross")
        if dom_c is not None and base_c:
            checks[f"{set_name}: cross domain/base"] = round(dom_c / base_c, 3)
            checks[f"{set_name}: cross ratio >= 1.5"] = dom_c >= 1.5 * base_c
            checks[f"{set_name}: cross above minilm and bm25"] = all(dom_c > (get(m, "cross") or 0)
                                                                     for m in ("minilm", "bm25"))
        dom_p = get("domain", "patient")
        if dom_p is not None:
            checks[f"{set_name}: patient above all three"] = all(dom_p > (get(m, "patient") or 0)
                                                                 for m in (base, "minilm", "bm25"))
        for scope in ("cross", "patient"):
            ranked = sorted(((v.get(scope) or 0.0, m) for m, v in test.items()), reverse=True)
            if ranked:
                checks[f"{set_name}: best {scope}"] = ranked[0][1]
    for set_name in ("synthea-conditions", "pubmedqa"):
        cols = table.get(set_name, {})
        for scope in ("cross", "patient"):
            d, b = cols.get("domain", {}).get(scope), cols.get(base, {}).get(scope)
            if d is not None and b:
                checks[f"{set_name} ({scope}): MAP loss vs base"] = round(1 - d / b, 4)
                checks[f"{set_name} ({scope}): loss <= 5%"] = d >= 0.95 * b
    return {"map@100": table, "ci95": cis, "checks": checks,
            "formula": "AP@100 = (1/min(R,100)) * sum over relevant ranks k<=100 of precision@k; MAP = mean over queries"}


def _write_summary(summary: dict, out_dir: Path) -> None:
    write_json(summary, out_dir / "summary.json")
    rows = []
    for set_name, models in summary["map@100"].items():
        for model, scopes in models.items():
            rows.append({"set": set_name, "model": model,
                         **{f"MAP@100 {s}": (round(v, 4) if v is not None else None) for s, v in scopes.items()}})
    cols = ["set", "model", "MAP@100 cross", "MAP@100 patient"]
    checks = [f"- {k}: {v}" for k, v in summary["checks"].items()]
    write_markdown_table(rows, cols, out_dir / "summary.md", title="Fine-tuning pipeline: MAP@100",
                         notes=["", "Targets", "", *checks, "", summary["formula"]])
    chart_set = "test" if "test" in summary["map@100"] else "test-cloze"
    test = summary["map@100"].get(chart_set, {})
    ci = summary.get("ci95", {}).get(chart_set, {})
    data: dict[str, dict[str, tuple[float, float, float]]] = {}
    for scope in ("cross", "patient"):
        for m, v in test.items():
            if v.get(scope) is not None:
                lo, hi = (ci.get(m, {}).get(scope) or [v[scope], v[scope]])
                data.setdefault(scope, {})[m] = (v[scope], lo, hi)
    if any(data.values()):
        bar_chart({k: v for k, v in data.items() if v}, out_dir / "summary_map100.png", metric_name="MAP@100",
                  title=f"Held-out patients ({chart_set}): MAP@100 with 95% bootstrap CI")


def _translations(run: Run) -> dict[str, str | None]:
    """The translated question files with their content hashes (a new translation reruns the stage)."""
    return {lang: sha256_file(Path(path)) if Path(path).is_file() else None
            for lang, path in sorted(run.preset.question_translations.items())}


def _evaluate_params(run: Run) -> dict[str, Any]:
    p = run.preset
    return {"models": p.eval_models, "scope": p.eval_scope, "translations": _translations(run), "general": p.general_sets,
            "general_models": p.general_models, "limit": p.general_query_limit, "max_docs": p.general_max_docs,
            "guards": p.guard_sets, "guard_queries": p.guard_queries, "guard_docs": p.guard_max_docs}


def _fuse(run: Run) -> tuple[list[Path], dict]:
    """Hybrid weights for the trained model, chosen on the dev split (never the test split that reports)."""
    preset = run.preset
    folder = trained_models_dir(run.settings) / preset.train.name
    d = run.dir("split") / "dev_beir"
    dev = load_beir(d / "corpus.jsonl", d / "queries.jsonl", d / "qrels.tsv", name=f"{corpus_slug(preset.qa_corpus)}-dev")
    if not dev.queries:
        log.warning("dev_beir: no queries - the trained model keeps equal fusion weights")
        return [], {"fusion": None}
    result = tune_fusion(dev, str(folder), settings=run.settings, out=run.dir("fuse"), progress=run.progress)
    fusion = fusion_from(result)
    curves = {"en": result["curve"]}
    for language in preset.question_translations:
        translated = translated_split(run, language, "dev", run.dir("fuse") / f"dev_{language}_beir")
        if translated is None or not translated.queries:
            continue
        result = tune_fusion(translated, str(folder), settings=run.settings, out=run.dir("fuse") / language,
                             progress=run.progress)
        fusion = fusion.with_language(language, fusion_from(result))
        curves[language] = result["curve"]
    return [write_fusion(folder, fusion)], {"fusion": fusion.to_json(), "curve": curves}


STAGES = (*BUILD_STAGE_NAMES, "fuse", "evaluate")
ALL_STAGES: dict[str, Stage] = {**BUILD_STAGES, "fuse": Stage("fuse", _fuse, lambda run: {
                                    "grid": list(FUSION_GRID), "translations": _translations(run)}),
                                "evaluate": Stage("evaluate", _evaluate, _evaluate_params)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.pipeline", description=__doc__.split("\n")[0])
    add_run_arguments(parser, STAGES)
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        manifest = run_from_arguments(args, ALL_STAGES, "eval.pipeline")
    except (PipelineError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = Path(manifest["root"]) / "evaluate" / "summary.md"
    if summary.is_file():
        print(summary.read_text(encoding="utf-8"))
    print(f"total {manifest['seconds']:.0f} s; stages: {json.dumps(manifest['timings'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
