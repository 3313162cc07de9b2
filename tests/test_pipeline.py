"""The pipeline end to end on a tiny corpus and a tiny model (finetune.pipeline's build stages and
eval.pipeline's evaluate): every stage runs, writes a complete manifest, training sees only training
patients, and a rerun skips what is done."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from eval.pipeline import ALL_STAGES, STAGES, general_sample
from finetune.pipeline import PipelineError, guard_sample, run_pipeline, subsample
from finetune.presets import CPU_DEMO
from tests.doubles import read_rows, write_rows
from tests.tiny_models import DEFAULT_CORPUS, build_tiny_st

FINDINGS = ["heparin drip", "insulin sliding scale", "lasix diuresis", "propofol sedation", "vancomycin trough",
            "blood cultures", "chest x-ray", "foley catheter", "tube feeds", "pressure ulcer", "atrial fibrillation",
            "potassium repletion"]


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    docs, qa = [], []
    for p in range(10):
        for n in range(3):
            f1, f2 = FINDINGS[(p + n) % len(FINDINGS)], FINDINGS[(p * 3 + n + 5) % len(FINDINGS)]
            doc_id = f"P{p:02d}-N{n}"
            text = (f"Nursing note {n} for the night. Patient on {f1} since admission. Plan to continue {f2}. "
                    f"Vital signs stable overnight. Family updated at bedside.")
            docs.append({"doc_id": doc_id, "patient_id": f"P{p:02d}", "text": text})
            qa.append({"qa_id": f"q{p}-{n}", "doc_id": doc_id, "patient_id": f"P{p:02d}",
                       "question": f"Which patient is on {f1}?", "answer": f1, "evidence": f"Patient on {f1}",
                       "question_type": "medication", "language": "en"})
    described = [{"doc_id": f"M{i}", "patient_id": f"M{i}", "extra": {"descriptions": [f"Consult for {f}."]},
                  "text": f"Consultation note. Reason: {f}. Examined and discussed with the family."}
                 for i, f in enumerate(FINDINGS)]
    write_rows(tmp / "described.jsonl", described)
    docs_path, qa_path = tmp / "docs.jsonl", tmp / "qa" / "qa.jsonl"
    qa_path.parent.mkdir(parents=True)
    write_rows(docs_path, docs)
    write_rows(qa_path, qa)
    german = [{**row, "qa_id": row["qa_id"] + "@de", "question": f"Welcher Patient bekommt {row['answer']}?",
               "language": "de"} for row in qa]
    write_rows(qa_path.with_name("qa.de.jsonl"), german)
    (qa_path.parent / "manifest.json").write_text(json.dumps({"stage": "test fixture"}))
    return docs_path, qa_path


def tiny_preset(tmp_path: Path, docs: Path, qa: Path):
    """The cpu-demo recipe shrunk to seconds: a tiny base model, 2 training steps, a 6-query dev set."""
    texts = DEFAULT_CORPUS + [row["text"] for row in read_rows(docs)]
    base = build_tiny_st(tmp_path / "tiny", corpus=texts, dim=32, prompts={"query": "query: ", "passage": "passage: "})
    return dataclasses.replace(
        CPU_DEMO, name="tiny", qa_corpus=str(docs), pseudonymize=False, qa_files=(str(qa),),
        question_translations={"de": str(qa.with_name("qa.de.jsonl"))},
        split_fractions=(0.6, 0.2, 0.2), ict_per_chunk=1, mine=4, keep_negatives=1, dev_queries=6,
        description_corpora={str(tmp_path / "described.jsonl"): 8},
        train=dataclasses.replace(CPU_DEMO.train, base=str(base), name="tiny-domain", max_steps=2, batch_size=6,
                                  mini_batch_size=6, max_seq_length=48, learning_rate=1e-3,
                                  interpolate_choices=[0.5]),
        eval_models=("domain", str(base), "bm25", "hybrid:domain"), eval_scope="both", general_sets=(),
        guard_sets=("synthea-conditions",), guard_queries=6, guard_max_docs=30)  # the demo corpus ships


def test_pipeline_runs_end_to_end_and_resumes(tmp_path: Path, settings) -> None:
    docs, qa = write_inputs(tmp_path)
    preset = tiny_preset(tmp_path, docs, qa)
    root = tmp_path / "run"
    early = run_pipeline(preset, settings, root=root, stages=STAGES[:3], progress=False)  # the build stages alone
    assert list(early["timings"]) == list(STAGES[:3])  # later stages are neither run nor required
    manifest = run_pipeline(preset, settings, root=root, progress=False, registry=ALL_STAGES)
    assert [s for s in STAGES if not manifest["timings"][s]["skipped"]] == list(STAGES[3:])
    peaks = [manifest["timings"][s]["peak_rss_mb_so_far"] for s in STAGES[3:]]
    assert peaks[0] > 0 and peaks == sorted(peaks)  # a running maximum: the stage where it jumps is the one
    for stage in STAGES:
        m = json.loads((root / stage / "manifest.json").read_text())
        assert m["pipeline"]["complete"], stage
    # training saw only training patients
    splits = json.loads((root / "split" / "splits.json").read_text())["patients"]
    pairs = read_rows(root / "mine" / "pairs.jsonl")
    own = [p for p in pairs if p["source"] != "description"]  # the other corpus has no test patients
    assert own and {splits[p["patient_id"]] for p in own} == {"train"}
    assert {p["source"] for p in pairs} == {"qa", "ict", "description"}
    described = [p for p in pairs if p["source"] == "description"]
    assert len(described) == 8 and all(p["query"].startswith("Consult for ") for p in described)
    summary = json.loads((root / "evaluate" / "summary.json").read_text())
    assert set(summary["map@100"]["test"]) >= {"domain", "bm25", "hybrid:domain"}
    assert set(summary["map@100"]["test-cloze"]) >= {"domain", "bm25"}
    cloze = read_rows(root / "split" / "test_cloze" / "queries.jsonl")
    corpus = {row["doc_id"]: row["text"] for row in read_rows(root / "split" / "test_cloze" / "corpus.jsonl")}
    assert cloze and all(q["text"] not in corpus[q["extra"]["doc_id"]] for q in cloze)  # the sentence is cut out
    assert {splits[q["patient_id"]] for q in cloze} == {"test"}
    assert (root / "evaluate" / "summary.md").is_file() and (root / "evaluate" / "test" / "results.json").is_file()
    card = (settings.home / "models" / "tiny-domain" / "README.md").read_text()
    assert "WiSE-FT): 0.50 x base + 0.50 x fine-tuned" in card and "guard sets" in card
    trained = json.loads((root / "train" / "manifest.json").read_text())["result"]
    guard = trained["guard_map_by_interpolation"]  # the base (0) is scored as the tolerance's reference
    assert set(guard) == {"0", "0.5"}
    assert set(guard["0"]) == {"guard-synthea-conditions", "guard-synthea-conditions:patient"}
    assert trained["interpolation"] == 0.5  # the only choice: kept within the tolerance or as the least loss
    assert trained["dev_map_scoring"].startswith("chunks at the inference length")  # scored as eval.ir scores
    # the fuse stage chose the hybrid's weights on the dev split and left them with the model
    fusion = json.loads((settings.home / "models" / "tiny-domain" / "fusion.json").read_text())
    assert {"cross", "patient"} <= set(fusion) and "-dev" in fusion["source"]
    assert "-dev" in fusion["languages"]["de"]["source"]  # German questions: weights of their own, on dev
    de_queries = read_rows(root / "evaluate" / "test_de_beir" / "queries.jsonl")
    assert de_queries and {splits[q["patient_id"]] for q in de_queries} == {"test"}  # the English test patients
    assert set(summary["map@100"]["test-de"]) >= {"domain", "bm25", "hybrid:domain"}
    assert "test-de: cross hybrid:domain >= max(bm25, domain)" in summary["checks"]
    hybrid_info = json.loads((root / "evaluate" / "test" / "results.json").read_text())["models"]["hybrid:domain"]
    assert "weighted reciprocal rank fusion" in hybrid_info["description"] and "-dev" in hybrid_info["description"]

    again = run_pipeline(preset, settings, root=root, progress=False, registry=ALL_STAGES)
    assert all(again["timings"][s]["skipped"] for s in STAGES)
    changed = preset.with_overrides(eval_scope="cross")  # only the evaluation depends on it
    third = run_pipeline(changed, settings, root=root, progress=False, registry=ALL_STAGES)
    assert [s for s in STAGES if not third["timings"][s]["skipped"]] == ["evaluate"]
    assert preset.with_overrides(train_max_steps=3).train.max_steps == 3


def test_pipeline_refuses_a_later_stage_before_earlier_ones(tmp_path: Path, settings) -> None:
    with pytest.raises(PipelineError, match="not complete"):
        run_pipeline(CPU_DEMO, settings, root=tmp_path / "r", stages=["train"], progress=False)


def test_subsample_keeps_relevant_documents_and_is_seeded(synthea) -> None:
    from rag.beir import load_named_set

    full = load_named_set("synthea-conditions")
    small = subsample(full, 20, 150, seed=1)
    assert len(small.queries) == 20 and len(small.corpus) == 150
    ids = {d.doc_id for d in small.corpus.documents}
    assert all(set(small.qrels[q.query_id]) <= ids for q in small.queries)
    again = subsample(full, 20, 150, seed=1)
    assert [q.query_id for q in again.queries] == [q.query_id for q in small.queries]
    assert subsample(full, None, None) is full


def test_guard_slice_never_holds_a_reported_query(synthea) -> None:
    from rag.beir import load_named_set

    full = load_named_set("synthea-conditions")
    reported, guard = general_sample(full, CPU_DEMO, "synthea-conditions"), guard_sample(full, CPU_DEMO)
    assert len(guard.queries) == CPU_DEMO.guard_queries and len(guard.corpus) >= CPU_DEMO.guard_max_docs
    assert not {q.query_id for q in reported.queries} & {q.query_id for q in guard.queries}
    # everything else is reported, over the whole corpus
    assert len(reported.queries) + len(guard.queries) == len(full.queries)
    assert len(reported.corpus) == len(full.corpus)
    unguarded = general_sample(full, CPU_DEMO.with_overrides(guard_sets=()), "synthea-conditions")
    assert unguarded is full
    ids = {d.doc_id for d in guard.corpus.documents}
    assert all(set(guard.qrels[q.query_id]) <= ids for q in guard.queries)


def test_a_changed_learned_layer_reruns_pseudonymize_and_rebuilds_its_output(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """CRAG_PHI_TAGGER joins the pseudonymize stage's key only when set (older runs keep theirs), and
    the output an earlier detector wrote is rebuilt rather than resumed."""
    from types import SimpleNamespace

    from finetune.pipeline import _drop_other_detector_output, _pseudonymize_params
    from finetune.pseudonymize import manifest_path

    run = SimpleNamespace(corpora=lambda: {"docs": None}, preset=SimpleNamespace(pseudonymize=True), key_file="k")
    monkeypatch.delenv("CRAG_PHI_TAGGER", raising=False)
    assert "phi_tagger" not in _pseudonymize_params(run)
    dst = tmp_path / "docs.jsonl"
    write_rows(dst, [{"doc_id": "a", "text": "x"}])
    manifest_path(dst).write_text(json.dumps({"parameters": {"phi_tagger": None}}), encoding="utf-8")
    _drop_other_detector_output(dst)
    assert dst.is_file()  # same detector: resumed as before

    monkeypatch.setenv("CRAG_PHI_TAGGER", str(tmp_path / "tagger"))
    assert _pseudonymize_params(run)["phi_tagger"] == str(tmp_path / "tagger")
    _drop_other_detector_output(dst)
    assert not dst.exists() and not manifest_path(dst).exists()
