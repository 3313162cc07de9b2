"""The Ray engine (extra [scale]) on a local Ray with 2 CPUs: pseudonymize, synthesize (embedded
llama.cpp, and the loopback double for the corpus-order filters) and embed an index in patient
partitions give the single-process outputs; a rerun skips finished partitions; a partition whose
``.done`` marker is gone (killed before it was written) is run again.

One Ray for the module (started by the first test that needs it, shut down after the last)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import finetune.engine
import rag.index
from finetune.engine import (
    LocalEngine,
    RayEngine,
    add_engine_arguments,
    engine_from_args,
    group_of,
    partition_of,
    plan_parts,
)
from finetune.engine import main as engine_main
from finetune.pipeline import BUILD_STAGES, run_pipeline
from finetune.pseudonymize import main as pseudonymize_main
from finetune.pseudonymize import pseudonymize_file
from finetune.ray_stages import synthesize_partitioned
from finetune.synthesize import OutputFiles, synthesize_file
from rag.corpus import Document, write_jsonl
from rag.index import ChunkIndex, build_index
from tests.conftest import small_synthea
from tests.openai_double import OpenAIDouble
from tests.test_pipeline import tiny_preset, write_inputs

pytest.importorskip("ray")

KEY = b"0123456789abcdef0123456789abcdef-test-only"
PARTITIONS = 3


@pytest.fixture(scope="module")
def ray_engine():
    engine = RayEngine(num_cpus=2, partitions=PARTITIONS).start()
    yield engine
    engine.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "pseudo.key"
    path.write_bytes(KEY + b"\n")
    return path


def _markers(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("part-*.done"))}


def test_partitions_are_stable_and_keep_a_patient_together(tmp_path: Path) -> None:
    assert partition_of("patient-1", 64) == partition_of("patient-1", 64)  # not Python's salted hash
    assert group_of("", "d7") == "doc:d7" and group_of("P1", "d7") == "P1"
    items = [(f"d{i}", f"P{i % 5}", "x") for i in range(40)]
    parts = plan_parts(items, 4, tmp_path)
    where = {i: p.index for p in parts for i in p.item_ids}
    assert all(len({where[d] for d, g, _ in items if g == patient}) == 1 for patient in {g for _, g, _ in items})
    assert [i for p in parts for i in p.item_ids if p.index == parts[0].index] == list(parts[0].item_ids)
    assert parts[0].fingerprint({"a": 1}) != parts[0].fingerprint({"a": 2})
    assert not LocalEngine().distributed
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    engine = engine_from_args(parser.parse_args(["--engine", "ray", "--ray-address", "ray://head:10001",
                                                 "--partitions", "8"]))
    assert isinstance(engine, RayEngine) and engine.address == "ray://head:10001" and engine.partitions == 8
    assert isinstance(engine_from_args(parser.parse_args([])), LocalEngine)  # local stays the default


def test_pseudonymize_on_ray_is_byte_identical_and_resumable(tmp_path: Path, synthea, key_file: Path,
                                                             ray_engine: RayEngine) -> None:
    corpus = small_synthea(synthea, patients=4, per_patient=3)
    src = tmp_path / "docs.jsonl"
    write_jsonl(corpus.documents, src)
    local = tmp_path / "local" / "pseudo.jsonl"
    first = pseudonymize_file(src, local, KEY, progress=False)
    out = tmp_path / "ray" / "pseudo.jsonl"
    # the CLI with the key file, as an operator runs it (the module's Ray is reused, not restarted)
    assert pseudonymize_main(["--in", str(src), "--out", str(out), "--key-file", str(key_file), "--engine", "ray",
                              "--partitions", str(PARTITIONS), "--no-progress"]) == 0
    assert out.read_bytes() == local.read_bytes()
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text(encoding="utf-8"))
    engine = manifest["engine"]
    assert engine["name"] == "ray" and engine["parts"] >= 2 and engine["ran"] == engine["parts"]
    assert manifest["phi_counts_total"] == first["phi_counts_total"]
    assert manifest["documents_done_this_run"] == len(corpus.documents)
    assert set(first) <= set(manifest)  # the same manifest, plus the engine's record
    parts = out.parent / "parts" / "pseudo"
    done = _markers(parts)
    assert len(done) == engine["parts"]
    assert not list((tmp_path / "ray").rglob("in.jsonl"))  # a partition's PHI input never lands by the output

    # finished partitions are skipped: the final file again from the parts, no task runs
    out.unlink()
    again = pseudonymize_file(src, out, KEY, progress=False, engine=ray_engine)
    assert again["engine"]["skipped_finished"] == engine["parts"] and again["engine"]["ran"] == 0
    assert _markers(parts) == done and out.read_bytes() == local.read_bytes()

    # a partition killed before its marker was written is run again, and only that one
    victim = sorted(parts.glob("part-*.done"))[0]
    victim.unlink()
    out.unlink()
    redo = pseudonymize_file(src, out, KEY, progress=False, engine=ray_engine)
    assert redo["engine"]["ran"] == 1 and redo["engine"]["skipped_finished"] == engine["parts"] - 1
    assert victim.is_file() and out.read_bytes() == local.read_bytes()

    # nothing pending: no partition is even looked at
    idle = pseudonymize_file(src, out, KEY, progress=False, engine=ray_engine)
    assert idle["documents_done_this_run"] == 0 and idle["engine"]["nothing_pending"] == engine["parts"]
    assert out.read_bytes() == local.read_bytes()


# what the double answers to every call: one good item whose evidence is in every note, and one
# invented quote; the same question for every document exercises the corpus-order duplicate filter
REPLY = json.dumps({"items": [
    {"question_type": "medication", "evidence": "Started ceftriaxone 2 g daily for pneumonia.",
     "question": "Which antibiotic and dose were started for the pneumonia?", "answer": "Ceftriaxone 2 g daily."},
    {"question_type": "finding", "evidence": "The biopsy showed a glioblastoma.",
     "question": "What did the brain biopsy show in this patient?", "answer": "A glioblastoma."},
]})
TOPICS = ["Heparin drip at 900 units per hour, PTT 62.", "Foley catheter draining clear yellow urine.",
          "Atrial fibrillation with a rate of 140.", "Creatinine rose from 1.1 to 2.4 mg/dl after contrast.",
          "Diltiazem drip titrated to a heart rate below 100.", "Nephrology consulted, IV fluids at 100 ml per hour."]


def test_synthesize_filters_in_corpus_order_across_partitions(tmp_path: Path, settings,
                                                              ray_engine: RayEngine) -> None:
    docs = [Document(f"n{i}", f"p{i % 4}", f"Note {i}: {topic} Started ceftriaxone 2 g daily for pneumonia.",
                     language="en") for i, topic in enumerate(TOPICS)]
    src = tmp_path / "notes.jsonl"
    write_jsonl(docs, src)
    s = settings.replace(llm_max_retries=1, llm_timeout_s=10.0)
    with OpenAIDouble(text=REPLY) as double:
        url = double.base_url
        common = dict(per_doc=2, endpoints=[url], model="double", settings=s, progress=False)
        local = synthesize_file(src, tmp_path / "local" / "qa.jsonl", concurrency=1, **common)
        ray = synthesize_partitioned(ray_engine, src, tmp_path / "ray" / "qa.jsonl", concurrency=2, **common)
    a = OutputFiles.for_output(tmp_path / "local" / "qa.jsonl")
    b = OutputFiles.for_output(tmp_path / "ray" / "qa.jsonl")
    assert b.qa.read_bytes() == a.qa.read_bytes() and b.rejected.read_bytes() == a.rejected.read_bytes()
    assert ray["totals"] == local["totals"] and ray["totals"]["drop_reasons"]["duplicate"] >= 2
    assert ray["generator"]["endpoints"] == [url] and ray["engine"]["parts"] >= 2
    assert ray["this_run"]["calls"] == local["this_run"]["calls"]  # replayed, counted like the local run


@pytest.mark.slow
def test_synthesize_with_embedded_llama_cpp_on_ray_is_byte_identical(tmp_path: Path, synthea, settings,
                                                                      ray_engine: RayEngine) -> None:
    # the three shortest notes of three patients: one call each, greedy, one slot per server
    by_patient: dict[str, Document] = {}
    for doc in sorted(synthea.documents[:400], key=lambda d: len(d.text)):
        by_patient.setdefault(doc.patient_id, doc)
    docs = list(by_patient.values())[:3]
    src = tmp_path / "docs.jsonl"
    write_jsonl(docs, src)
    s = settings.replace(llm_threads=1, llm_ctx=2048)
    common = dict(per_doc=1, per_call=1, generator="smollm2", concurrency=1, temperature=0.0, settings=s,
                  progress=False)
    local = synthesize_file(src, tmp_path / "local" / "qa.jsonl", **common)
    out = tmp_path / "ray" / "qa.jsonl"
    ray = synthesize_partitioned(ray_engine, src, out, **common)
    a, b = OutputFiles.for_output(tmp_path / "local" / "qa.jsonl"), OutputFiles.for_output(out)
    assert local["this_run"]["completion_tokens"] > 0 and local["totals"]["candidates"] >= 1
    assert b.qa.read_bytes() == a.qa.read_bytes() and b.rejected.read_bytes() == a.rejected.read_bytes()
    assert ray["generator"]["model"] == local["generator"]["model"] == "smollm2-135m-instruct"
    assert ray["engine"]["ran"] == ray["engine"]["parts"] >= 2

    # the final files lost, the partitions finished: the filter pass alone rebuilds them (no generation)
    done = _markers(out.parent / "parts" / "qa")
    for path in (b.qa, b.rejected, b.progress, b.manifest):
        path.unlink(missing_ok=True)
    again = synthesize_partitioned(ray_engine, src, out, **common)
    assert again["engine"]["ran"] == 0 and again["engine"]["skipped_finished"] == ray["engine"]["parts"]
    assert _markers(out.parent / "parts" / "qa") == done
    assert b.qa.read_bytes() == a.qa.read_bytes() and b.rejected.read_bytes() == a.rejected.read_bytes()


def test_embed_on_ray_writes_the_same_index(tmp_path: Path, synthea, settings, tiny_model_dir: Path,
                                           ray_engine: RayEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = small_synthea(synthea, patients=4, per_patient=3)
    path = tmp_path / "small.jsonl"
    write_jsonl(corpus.documents, path)
    for module in (rag.index, finetune.engine):  # several batches, so several partitions, on a small corpus
        monkeypatch.setattr(module, "EMBED_BATCH", 8)
    local_index, local_report = build_index(str(path), str(tiny_model_dir), settings.replace(home=tmp_path / "local"),
                                            progress=False)
    monkeypatch.setenv("CRAG_HOME", str(tmp_path / "ray"))
    assert engine_main(["embed", "--corpus", str(path), "--embedder", str(tiny_model_dir), "--engine", "ray",
                        "--partitions", str(PARTITIONS), "--quiet"]) == 0
    ray_index = ChunkIndex(local_index.corpus_name, local_index.embedder, settings.replace(home=tmp_path / "ray"))
    assert ray_index.name == local_index.name and ray_index.count() == local_report.chunks_total

    def stored(index: ChunkIndex) -> tuple[list[str], list[str], list[dict], np.ndarray]:
        got = index.collection.get(include=["documents", "metadatas", "embeddings"])
        order = np.argsort(got["ids"])
        return ([got["ids"][i] for i in order], [got["documents"][i] for i in order],
                [got["metadatas"][i] for i in order], np.asarray(got["embeddings"], dtype=np.float32)[order])

    ids, texts, metas, vectors = stored(ray_index)
    local_ids, local_texts, local_metas, local_vectors = stored(local_index)
    assert (ids, texts, metas) == (local_ids, local_texts, local_metas)
    assert vectors.tobytes() == local_vectors.tobytes()  # the local run's batches on its thread count
    manifest = ray_index.manifest()
    assert manifest["counts"] == local_index.manifest()["counts"] and manifest["engine"]["parts"]["ran"] >= 2
    assert not (tmp_path / "ray" / "engine" / "embed" / ray_index.name).exists()  # parts removed once stored
    # a rerun finds every document in the store: nothing to embed, no partition to run
    assert engine_main(["embed", "--corpus", str(path), "--embedder", str(tiny_model_dir), "--engine", "ray",
                        "--partitions", str(PARTITIONS), "--quiet"]) == 0
    assert ray_index.manifest()["last_sync"]["chunks_embedded"] == 0


def test_the_pipeline_on_ray_builds_the_same_model_files(tmp_path: Path, settings, key_file: Path,
                                                         ray_engine) -> None:
    """``finetune.pipeline --engine ray`` = ``--engine local``, on the pipeline test's tiny preset with
    pseudonymization on: every build stage's output and the trained model's files are byte-identical."""
    docs, qa = write_inputs(tmp_path)
    preset = dataclasses.replace(tiny_preset(tmp_path, docs, qa), pseudonymize=True)
    models = {}
    for name, engine in (("local", None), ("ray", ray_engine)):
        home = settings.replace(home=tmp_path / f"home-{name}")
        run_pipeline(preset, home, root=tmp_path / f"run-{name}", key_file=key_file, progress=False,
                     registry=BUILD_STAGES, engine=engine)
        folder = home.home / "models" / preset.train.name
        models[name] = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                        if p.is_file() and p.suffix in (".safetensors", ".json", ".txt") and p.name != "crag_embedder.json"}
    assert models["local"] and models["local"].keys() == models["ray"].keys()
    assert [k for k in models["local"] if models["local"][k] != models["ray"][k]] == []
    for stage in ("pseudonymize", "mine"):
        local = sorted((tmp_path / "run-local" / stage).glob("*.jsonl"))
        assert local and [p.read_bytes() for p in local] == \
            [(tmp_path / "run-ray" / stage / p.name).read_bytes() for p in local], stage
