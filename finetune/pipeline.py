"""From shared data to a domain embedder: ``python -m finetune.pipeline --preset cpu-demo``.

Stages, each in its own folder under ``<home>/pipeline/<preset>/`` with a ``manifest.json``:

1. ``pseudonymize`` - the QA corpus and any extra training corpora through ``finetune.pseudonymize``
   (key from ``--key-file`` or ``CRAG_PRIVACY_KEY_FILE``; that module is itself resumable per document);
2. ``synthesize``  - QA pairs: the preset's committed QA file (copied with its manifest) or
   ``finetune.synthesize`` on the pseudonymized QA corpus;
3. ``split``       - ``finetune.split``: train/dev/test disjoint by patient, plus the dev and test
   splits as BEIR-like sets (``finetune.split.write_qa_split``; the test corpus is the held-out
   patients' original records, which is what the app would index) and, because CPU synthesis may
   yield few QA pairs, a generator-free held-out proxy: inverse cloze with the query sentence cut out
   of its document (``finetune.pairs.cloze_test_documents``);
4. ``mine``        - training pairs (``finetune.pairs``: QA of training patients + inverse cloze on
   training documents) with hard negatives (``finetune.negatives``);
5. ``train``       - ``finetune.train`` -> ``<home>/models/<name>``, usable by name everywhere.

The evaluation of the result is a further stage of the same run, in the layer that judges:
``python -m eval.pipeline --preset cpu-demo`` runs these stages and then ``evaluate``
(``eval.ir`` on the test split and on sets our generator did not make).

``--engine ray`` runs pseudonymize and synthesize as Ray tasks over patient partitions, and the
embedding of the mining step as Ray tasks over its batches, with the same outputs
(``finetune.engine``, docs/scale.md); split and train run here either way (training scales with
``torchrun``, ``finetune.distributed``).

A stage is skipped when its manifest says it completed with the same parameters and inputs (a
hash chained through the earlier stages) and its outputs exist; change the preset and exactly the
affected stages rerun. Interrupted stages restart (pseudonymization keeps finished documents, so
little is lost).

What the model saw: only training-split patients of the QA corpus (their documents, QA pairs and
inverse-cloze sentences) plus the preset's extra corpora; never a dev or test patient, never the
synthea or pubmedqa evaluation sets.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune import synthesize
from finetune.dev_sets import ChunkedSet, DevSet
from finetune.engine import (
    Engine,
    EngineError,
    LocalEngine,
    add_engine_arguments,
    digest,
    embed_on,
    engine_from_args,
)
from finetune.negatives import mine_negatives
from finetune.pairs import (
    chunk_corpus,
    cloze_test_documents,
    description_pairs,
    inverse_cloze_pairs,
    qa_pairs,
    read_pairs,
    write_pairs,
)
from finetune.phi_detector import tagger_folder
from finetune.presets import PRESETS, Preset, get_preset
from finetune.pseudonymize import load_key, manifest_path, pseudonymize_file, tagger_change
from finetune.qa_schema import read_qa
from finetune.ray_stages import synthesize_partitioned
from finetune.split import (
    load_assignment,
    split_by_patient,
    write_qa_split,
    write_split,
)
from finetune.train import train
from rag.beir import BeirSet, Query, load_beir, load_named_set, write_beir
from rag.chunking import ChunkingConfig
from rag.config import Settings, load_settings
from rag.corpus import Corpus, load_corpus, load_jsonl, write_jsonl
from rag.embedders import get_embedder, trained_models_dir
from rag.index import EMBED_BATCH
from rag.manifest import atomic_write_text, run_manifest, write_json

log = logging.getLogger("finetune.pipeline")

STAGES = ("pseudonymize", "synthesize", "split", "mine", "train")


class PipelineError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Stage bookkeeping


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stage_complete(folder: Path, key: str, outputs: Sequence[Path]) -> bool:
    """True when ``folder/manifest.json`` records a completed run with this key and outputs exist."""
    manifest = _read_json(folder / "manifest.json") or {}
    done = manifest.get("pipeline") or {}
    return bool(done.get("complete")) and done.get("key") == key and all(Path(p).exists() for p in outputs)


def peak_rss_mb() -> float:
    """The highest resident memory so far of this process or any finished child, in MB.

    Monotonic over a run, so recorded after each stage it shows which stage first reached the peak.
    """
    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(kib / 1024, 1)


def mark_complete(folder: Path, key: str, outputs: Sequence[Path], seconds: float, extra: dict[str, Any]) -> dict:
    """Merge the pipeline record into the stage's manifest (a stage module may have written one)."""
    manifest = _read_json(folder / "manifest.json") or run_manifest()
    manifest.update(extra)
    manifest["pipeline"] = {"complete": True, "key": key, "outputs": [str(p) for p in outputs],
                            "seconds": round(seconds, 1),
                            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(manifest, folder / "manifest.json")
    return manifest


def corpus_slug(name: str) -> str:
    """File-name form of a corpus given by name or path."""
    return Path(name).stem if ("/" in name or name.endswith((".jsonl", ".csv"))) else name


class Run:
    """The folders and shared state of one pipeline run."""

    def __init__(self, preset: Preset, settings: Settings, root: Path, key_file: Path | None,
                 progress: bool = True, engine: Engine | None = None) -> None:
        self.preset = preset
        self.settings = settings
        self.root = root
        self.key_file = key_file
        self.progress = progress
        self.engine = engine or LocalEngine()
        self.keys: dict[str, str] = {}
        self.timings: dict[str, dict[str, Any]] = {}

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def pseudonymized(self, name: str) -> Any:
        """The pseudonymize stage's output for corpus ``name``, with the source corpus' patient structure
        (a corpus without patients stays one patient per document)."""
        structure = load_corpus(name, self.settings, limit=1).patient_structure
        return load_jsonl(self.dir("pseudonymize") / f"{corpus_slug(name)}.jsonl", name=name,
                          one_patient_per_document=structure == "one-per-document")

    def corpora(self) -> dict[str, int | None]:
        """Every corpus the run pseudonymizes, with its document limit (the larger where two ask)."""
        out: dict[str, int | None] = {self.preset.qa_corpus: None}
        for name, limit in (*self.preset.extra_corpora.items(), *self.preset.description_corpora.items()):
            if name in out:
                out[name] = None if out[name] is None or limit is None else max(out[name], limit)
            else:
                out[name] = limit
        return out


# --------------------------------------------------------------------------------------------
# Stages


def _pseudonymize(run: Run) -> tuple[list[Path], dict]:
    out_dir = run.dir("pseudonymize")
    source_dir = out_dir / "source"
    outputs, info = [], {}
    key = None
    if run.preset.pseudonymize:
        key = load_key(run.key_file)
    for name, limit in run.corpora().items():
        corpus = load_corpus(name, run.settings, limit=limit)
        src = source_dir / f"{corpus_slug(name)}.jsonl"
        write_jsonl(corpus.documents, src)
        dst = out_dir / f"{corpus_slug(name)}.jsonl"
        if key is not None:
            _drop_other_detector_output(dst)
            manifest = pseudonymize_file(src, dst, key, workers=run.preset.pseudonymize_workers,
                                         progress=run.progress, engine=run.engine)
            info[name] = {"documents": len(corpus), "counts": manifest.get("counts"),
                          "manifest": str(dst.parent / Path(manifest.get("manifest_name", "")).name)
                          if manifest.get("manifest_name") else None}
        else:
            shutil.copyfile(src, dst)
            info[name] = {"documents": len(corpus), "pseudonymized": False}
        outputs.append(dst)
    return outputs, {"corpora": info, "engine": run.engine.name}


def _drop_other_detector_output(dst: Path) -> None:
    """The stage reruns when the learned-layer setting changed: the earlier output was written by
    another detector, so it is rebuilt, not resumed (pseudonymize_file refuses to mix the two)."""
    change = tagger_change(dst)
    if change:
        log.info("%s was written with phi_tagger=%r: rebuilding it with %r", dst, *change)
        dst.unlink()
        manifest_path(dst).unlink()


def _synthesize(run: Run) -> tuple[list[Path], dict]:
    out_dir = run.dir("synthesize")
    out = out_dir / "qa.jsonl"
    preset = run.preset
    if preset.qa_files:
        sources = [Path(f) for f in preset.qa_files]
        missing = [str(f) for f in sources if not f.is_file()]
        if missing:
            raise PipelineError(f"preset {preset.name!r} reuses the QA files {missing}, which do not exist")
        texts = [src.read_text(encoding="utf-8") for src in sources]
        atomic_write_text(out, "".join(t if not t or t.endswith("\n") else t + "\n" for t in texts))
        files = [{"qa_file": str(src), "qa_pairs": sum(1 for line in t.splitlines() if line.strip())}
                 for src, t in zip(sources, texts)]
        manifests = {str(src.parent): _read_json(src.parent / "manifest.json") for src in sources}
        return [out], {"source": "committed", "qa_files": files, "qa_manifests": manifests,
                       "qa_pairs": sum(f["qa_pairs"] for f in files)}

    docs = run.dir("pseudonymize") / f"{corpus_slug(preset.qa_corpus)}.jsonl"
    kwargs: dict[str, Any] = {"per_doc": preset.synthesize_per_doc}
    if preset.generator_gguf:
        kwargs["generator"] = preset.generator_gguf
    if run.engine.distributed:  # generation in patient partitions, the filter pass here (same qa.jsonl)
        manifest = synthesize_partitioned(run.engine, docs, out, progress=run.progress, **kwargs)
    else:
        manifest = synthesize.synthesize_file(docs, out, **kwargs)
    return [out], {"source": "generated", "synthesize_manifest": manifest, "engine": run.engine.name}


def _split(run: Run) -> tuple[list[Path], dict]:
    preset = run.preset
    out_dir = run.dir("split")
    qa_path = run.dir("synthesize") / "qa.jsonl"
    pseudo = run.pseudonymized(preset.qa_corpus)
    rows, lines = read_qa(qa_path)
    t0 = time.perf_counter()
    result = split_by_patient(pseudo, rows, seed=preset.split_seed, fractions=preset.split_fractions,
                              by=preset.split_by, qa_lines=lines, qa_source=str(qa_path))
    write_split(result, out_dir, inputs={"docs": str(run.dir("pseudonymize") / f"{corpus_slug(preset.qa_corpus)}.jsonl"),
                                         "qa": str(qa_path)}, seconds=time.perf_counter() - t0)
    counts = {}
    for split in ("dev", "test"):
        beir, _ = write_qa_split(qa_path, preset.qa_corpus, split, out_dir / f"{split}_beir",
                                 assignment=out_dir / "splits.json", settings=run.settings)
        counts[f"{split}_beir"] = beir.counts()
    for split in ("dev", "test"):
        counts[f"{split}_cloze"] = write_cloze_set(preset, run, split, out_dir / f"{split}_cloze")
    outputs = [out_dir / "splits.json"] + [out_dir / d / "qrels.tsv" for d in
                                           ("test_beir", "dev_beir", "test_cloze", "dev_cloze")]
    return outputs, {"beir_counts": counts}


def write_cloze_set(preset: Preset, run: Run, split: str, out_dir: Path) -> dict[str, Any]:
    """The held-out inverse-cloze set of one split as BEIR files (original records of its patients)."""

    assignment = load_assignment(run.dir("split") / "splits.json")
    corpus = load_corpus(preset.qa_corpus, run.settings)
    chosen = [d for d in corpus.documents if assignment.get(d.patient_id) == split]
    docs, rows = cloze_test_documents(chosen, get_embedder(preset.train.base, run.settings).token_offsets,
                                      seed=preset.split_seed)
    name = f"{corpus_slug(preset.qa_corpus)}-{split}-cloze"
    beir = BeirSet(name, Corpus(name, docs, [], corpus.patient_structure, f"{corpus.source} ({split}, cloze)"),
                   [Query(r["query_id"], r["text"], r["patient_id"], None, {"doc_id": r["doc_id"]}) for r in rows],
                   {r["query_id"]: {r["doc_id"]: 1} for r in rows})
    write_beir(beir, out_dir)
    return beir.counts()


def _mine(run: Run) -> tuple[list[Path], dict]:
    preset = run.preset
    base = get_embedder(preset.train.base, run.settings)
    cfg = ChunkingConfig(run.settings.chunk_tokens, run.settings.chunk_overlap_tokens)
    assignment = load_assignment(run.dir("split") / "splits.json")
    train_patients = {p for p, s in assignment.items() if s == "train"}
    qa_corpus = run.pseudonymized(preset.qa_corpus)
    qa_chunks = chunk_corpus(qa_corpus, base.token_offsets, cfg, patients=train_patients)
    pairs = []
    if preset.use_qa_pairs:
        rows, _ = read_qa(run.dir("split") / "train" / "qa.jsonl", required=("doc_id", "question"))
        pairs += qa_pairs(rows, qa_corpus, qa_chunks, train_patients)
    all_chunks = [c for cs in qa_chunks.values() for c in cs]
    if preset.ict_per_chunk and preset.ict_on_qa_corpus:
        pairs += inverse_cloze_pairs(qa_chunks, per_chunk=preset.ict_per_chunk, seed=preset.split_seed)
    for name in preset.extra_corpora:
        extra = run.pseudonymized(name)
        chunks = chunk_corpus(extra, base.token_offsets, cfg)
        all_chunks += [c for cs in chunks.values() for c in cs]
        if preset.ict_per_chunk:
            pairs += inverse_cloze_pairs(chunks, per_chunk=preset.ict_per_chunk, seed=preset.split_seed)
    for name in preset.description_corpora:  # its document limit applied when it was pseudonymized
        described = run.pseudonymized(name)
        chunks = chunk_corpus(described, base.token_offsets, cfg)
        if name not in preset.extra_corpora:
            all_chunks += [c for cs in chunks.values() for c in cs]
        pairs += description_pairs(described, chunks, seed=preset.split_seed)
    if not pairs:
        raise PipelineError("no training pairs: enable QA pairs or inverse cloze in the preset")
    leaked = {p.patient_id for p in pairs if p.patient_id in assignment and assignment[p.patient_id] != "train"}
    if leaked:
        raise PipelineError(f"pairs of non-training patients reached the training set: {sorted(leaked)[:5]}")
    report = None
    if preset.keep_negatives:
        parts = run.dir("mine") / "parts"

        def vectors(texts: Sequence[str], kind: str) -> np.ndarray:
            """On the run's engine, in the same batches either way: local and Ray mine the same negatives."""
            items = [f"{i:08d}@{digest(t)}" for i, t in enumerate(texts)]
            out, _ = embed_on(run.engine, items, texts, embedder=preset.train.base, fingerprint=base.fingerprint,
                              settings=run.settings, folder=parts / kind, kind=kind, progress=run.progress)
            return out

        pairs, report = mine_negatives(pairs, base, all_chunks, mine=preset.mine, keep=preset.keep_negatives,
                                       relative_margin=preset.mine_margin, range_max=preset.mine_range,
                                       vectors=vectors)
        shutil.rmtree(parts, ignore_errors=True)
    out = run.dir("mine") / "pairs.jsonl"
    write_pairs(pairs, out)
    sources: dict[str, int] = {}
    for p in pairs:
        sources[p.source] = sources.get(p.source, 0) + 1
    return [out], {"pairs": len(pairs), "sources": sources, "training_patients": len(train_patients),
                   "mining": report.to_json() if report else None, "base": base.label}


def _train(run: Run) -> tuple[list[Path], dict]:
    preset = run.preset
    dev = dev_chunks = None
    for folder in ("dev_beir", "dev_cloze"):  # QA questions when there are any, else the cloze proxy
        d = run.dir("split") / folder
        beir = load_beir(d / "corpus.jsonl", d / "queries.jsonl", d / "qrels.tsv", name=folder)
        if beir.queries:
            dev = DevSet.from_beir(beir, name="dev").limited(preset.dev_queries, seed=preset.split_seed)
            dev_chunks = ChunkedSet.like_index(beir, preset.train.base, run.settings, "dev", set(dev.queries))
            break
    guards = [guard_set(name, run) for name in preset.guard_sets]
    pairs = read_pairs(run.dir("mine") / "pairs.jsonl")
    result = train(pairs, preset.train, run.settings, dev=dev, dev_chunks=dev_chunks, guards=guards,
                   progress=run.progress)
    folder = trained_models_dir(run.settings) / preset.train.name
    return [folder / "crag_embedder.json"], {"result": result.to_json(), "model": str(folder)}


def subsample(beir: Any, n_queries: int | None, max_docs: int | None, seed: int = 0,
              exclude: Collection[str] = ()) -> Any:
    """A seeded sample of ``n_queries`` queries over a smaller corpus: their relevant documents plus
    random distractors up to ``max_docs``. An easier set than the full one (fewer distractors), but
    the same for every model, so the domain-vs-base comparison stays fair at a CPU-sized cost.
    Queries in ``exclude`` are never sampled (a guard slice disjoint from the reported one)."""
    if n_queries is None and max_docs is None and not exclude:
        return beir
    rng = random.Random(seed)
    excluded = set(exclude)
    queries = [q for q in beir.queries if q.query_id not in excluded]
    if n_queries is not None and n_queries < len(queries):
        queries = sorted(rng.sample(queries, n_queries), key=lambda q: q.query_id)
    qrels = {q.query_id: beir.qrels.get(q.query_id, {}) for q in queries}
    needed = {d for rels in qrels.values() for d, g in rels.items() if g >= 1}
    docs = beir.corpus.documents
    if max_docs is not None and len(docs) > max_docs:
        others = [d for d in docs if d.doc_id not in needed]
        extra = set(d.doc_id for d in rng.sample(others, max(0, min(len(others), max_docs - len(needed)))))
        docs = [d for d in docs if d.doc_id in needed or d.doc_id in extra]
    name = f"{beir.name}-q{len(queries)}-d{len(docs)}-s{seed}"
    corpus = Corpus(name, docs, [], beir.corpus.patient_structure, f"{beir.corpus.source} (subsample)")
    return BeirSet(name, corpus, queries, qrels, dict(getattr(beir, "files", {}) or {}))


def guard_set(name: str, run: Run) -> Any:
    """The guard slice of a general set, chunked as the index chunks it, for the interpolation choice."""

    beir = guard_sample(load_named_set(name, run.settings), run.preset)
    return ChunkedSet.like_index(beir, run.preset.train.base, run.settings, f"guard-{name}")


def guard_sample(beir: Any, preset: Preset) -> Any:
    """The guard slice of a general set: a seeded sample of ``guard_queries`` queries over
    ``guard_max_docs`` documents. It bounds the interpolation choice, so it is never reported."""
    return subsample(beir, preset.guard_queries, preset.guard_max_docs, seed=preset.split_seed + 1)


@dataclass(frozen=True)
class Stage:
    """One step of a run: what it does, and the parameters whose change makes it (and later ones) rerun."""

    name: str
    run: Callable[[Run], tuple[list[Path], dict]]
    params: Callable[[Run], dict[str, Any]]


def _pseudonymize_params(run: Run) -> dict[str, Any]:
    params = {"corpora": run.corpora(), "pseudonymize": run.preset.pseudonymize, "key_file": str(run.key_file)}
    tagger = tagger_folder()
    if tagger:  # only when set, so runs made before the learned layer existed keep their stage keys
        params["phi_tagger"] = tagger
    return params


def _synthesize_params(run: Run) -> dict[str, Any]:
    p = run.preset
    hashes = [hashlib.sha256(Path(f).read_bytes()).hexdigest() if Path(f).is_file() else None for f in p.qa_files]
    return {"qa_files": list(p.qa_files), "qa_sha256": hashes, "per_doc": p.synthesize_per_doc,
            "generator": p.generator_gguf}


def _train_config(run: Run) -> dict[str, Any]:
    """The training options in the stage key; the distillation ones only when it is on, the loss
    directions and hardness only off their defaults, so runs made before they existed keep their keys
    (and their trained models)."""
    config = dataclasses.asdict(run.preset.train)
    if not config.get("distill_weight"):
        config = {k: v for k, v in config.items() if not k.startswith("distill_")}
    if tuple(config["loss_directions"]) == ("query_to_doc",):
        del config["loss_directions"]
    if not config["hardness_strength"]:
        del config["hardness_strength"]
    return config


#: Margin and range of every run made before they were preset options: left out of the mine stage's key,
#: so those runs keep their keys (frozen on purpose: not the current defaults, which may change).
_MINE_KEY_UNSTATED = (0.05, 50)


def _mine_params(run: Run) -> dict[str, Any]:
    """The mining options in the stage key; margin and range only where they differ from
    ``_MINE_KEY_UNSTATED``."""
    p = run.preset
    params = {"qa": p.use_qa_pairs, "ict": p.ict_per_chunk, "ict_on_qa": p.ict_on_qa_corpus, "mine": p.mine,
              "keep": p.keep_negatives, "base": p.train.base, "vectors": f"batches of {EMBED_BATCH}",
              "chunking": [run.settings.chunk_tokens, run.settings.chunk_overlap_tokens]}
    if (p.mine_margin, p.mine_range) != _MINE_KEY_UNSTATED:
        params.update(margin=p.mine_margin, range=p.mine_range)
    return params


BUILD_STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pseudonymize", _pseudonymize, _pseudonymize_params),
    Stage("synthesize", _synthesize, _synthesize_params),
    Stage("split", _split, lambda run: {"seed": run.preset.split_seed, "fractions": run.preset.split_fractions,
                                        "by": run.preset.split_by}),
    Stage("mine", _mine, _mine_params),
    Stage("train", _train, lambda run: {
        "train": _train_config(run), "dev_queries": run.preset.dev_queries,
        "guards": run.preset.guard_sets, "guard_queries": run.preset.guard_queries,
        "guard_docs": run.preset.guard_max_docs}),
)}


def run_pipeline(preset: Preset, settings: Settings | None = None, *, root: Path | None = None,
                 key_file: Path | None = None, stages: Sequence[str] | None = None, force: Sequence[str] = (),
                 progress: bool = True, registry: Mapping[str, Stage] = BUILD_STAGES,
                 command: str = "finetune.pipeline", engine: Engine | None = None) -> dict[str, Any]:
    """Run (or resume) the stages of ``registry`` in order; returns the run manifest (also written to ``root``).

    ``eval.pipeline`` passes the build stages plus its own ``evaluate``: one run folder, one chain of
    stage keys, whichever layer a stage lives in. ``engine`` (default local) runs pseudonymize and
    synthesize; it is not part of the stage keys, because it does not change what a stage writes."""
    settings = settings or load_settings()
    root = Path(root) if root else Path(settings.home) / "pipeline" / preset.name
    key_file = Path(key_file) if key_file else (settings.privacy_key_file or None)
    run = Run(preset, settings, root, key_file, progress, engine)
    order = list(registry)
    stages = order if stages is None else list(stages)
    unknown = set(stages) - set(order)
    if unknown:
        raise PipelineError(f"unknown stages {sorted(unknown)}; stages are {', '.join(order)}")
    t_all = time.perf_counter()
    previous = ""
    last = max((order.index(s) for s in stages), default=-1)  # later stages are neither run nor checked
    for stage in order[:last + 1]:
        params = {"preset": preset.name, **registry[stage].params(run)}
        key = _hash({"params": params, "upstream": previous})
        previous = key
        folder = run.dir(stage)
        manifest = _read_json(folder / "manifest.json") or {}
        outputs = [Path(p) for p in (manifest.get("pipeline") or {}).get("outputs", [])]
        if stage not in stages:
            if not stage_complete(folder, key, outputs):
                raise PipelineError(f"stage {stage!r} is not complete for these parameters; run it first")
            continue
        if stage not in force and outputs and stage_complete(folder, key, outputs):
            log.info("stage %-12s skipped: complete (%s)", stage, folder / "manifest.json")
            run.timings[stage] = {"skipped": True, "seconds": 0.0}
            continue
        log.info("stage %-12s running -> %s", stage, folder)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        outs, extra = registry[stage].run(run)
        seconds = time.perf_counter() - t0
        mark_complete(folder, key, outs, seconds, {"stage": f"{command}:{stage}", **extra, "parameters": params})
        run.timings[stage] = {"skipped": False, "seconds": round(seconds, 1), "peak_rss_mb_so_far": peak_rss_mb()}
        log.info("stage %-12s done in %.0f s (peak RSS so far %.0f MB)", stage, seconds, peak_rss_mb())
    manifest = run_manifest(stage=command, preset=preset.to_json(), timings=run.timings,
                            seconds=round(time.perf_counter() - t_all, 1), root=str(root))
    write_json(manifest, root / "manifest.json")
    return manifest


def add_run_arguments(parser: argparse.ArgumentParser, stages: Sequence[str]) -> None:
    """The options both pipeline commands take."""
    parser.add_argument("--preset", default="cpu-demo", choices=sorted(PRESETS))
    parser.add_argument("--run-dir", type=Path, help="default <home>/pipeline/<preset>")
    parser.add_argument("--key-file", type=Path, help="pseudonymization key (default CRAG_PRIVACY_KEY_FILE)")
    parser.add_argument("--stages", default=",".join(stages), help="comma-separated subset (earlier ones must be complete)")
    parser.add_argument("--force", default="", help="comma-separated stages to rerun even when complete")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_arguments(parser)


def run_from_arguments(args: argparse.Namespace, registry: Mapping[str, Stage], command: str) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with engine_from_args(args) as engine:
        return run_pipeline(get_preset(args.preset), root=args.run_dir, key_file=args.key_file,
                            stages=[s for s in args.stages.split(",") if s],
                            force=[s for s in args.force.split(",") if s], progress=not args.quiet,
                            registry=registry, command=command, engine=engine)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.pipeline", description=__doc__.split("\n")[0])
    add_run_arguments(parser, STAGES)
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        manifest = run_from_arguments(args, BUILD_STAGES, "finetune.pipeline")
    except (PipelineError, EngineError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    preset = get_preset(args.preset)
    print(f"model: {preset.train.name} (under <home>/models); evaluate it with python -m eval.pipeline --preset "
          f"{preset.name}")
    print(f"total {manifest['seconds']:.0f} s; stages: {json.dumps(manifest['timings'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
