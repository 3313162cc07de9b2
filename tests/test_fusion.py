"""Hybrid fusion weights: per scope, read from the model folder, chosen on a dev set never below a component."""
from __future__ import annotations

import json
import shutil

import pytest

from eval.fusion import GRID, choose, fusion_from, tune
from rag.embedders import get_embedder
from rag.fusion import EQUAL, FUSION_FILE, Fusion, FusionWeights, fusion_for, write_fusion
from rag.retrieve import BM25Retriever, DenseRetriever, HybridRetriever, Scope, make_retriever
from tests.conftest import small_synthea
from tests.doubles import synced_index

QUESTIONS = ["metformin medications", "acute bronchitis cough", "blood pressure hypertension plan"]


@pytest.fixture(scope="module")
def index(tmp_path_factory, synthea, tiny_embedder):
    from rag.config import load_settings

    settings = load_settings(home=tmp_path_factory.mktemp("fusion-home"))
    corpus = small_synthea(synthea, patients=4, per_patient=10)
    return synced_index(corpus.name, tiny_embedder, settings, corpus.documents)


def _ids(hits):
    return [h.chunk_id for h in hits]


def test_a_one_sided_fusion_ranks_like_that_component(index):
    dense, bm25 = DenseRetriever(index), BM25Retriever(index)
    only_dense = Fusion(FusionWeights(1.0, 0.0), FusionWeights(1.0, 0.0))
    only_bm25 = Fusion(FusionWeights(0.0, 1.0), FusionWeights(0.0, 1.0))
    for q in QUESTIONS:
        for scope in (Scope.all(), Scope.patient(index.stored().metas[0]["patient_id"])):
            d, b = dense.retrieve(q, scope, 5), bm25.retrieve(q, scope, 5)
            assert _ids(HybridRetriever(dense, bm25, fusion=only_dense).retrieve(q, scope, 5)) == _ids(d)
            if len(b) == 5:
                assert _ids(HybridRetriever(dense, bm25, fusion=only_bm25).retrieve(q, scope, 5)) == _ids(b)


def test_the_scope_picks_its_weights(index):
    dense, bm25 = DenseRetriever(index), BM25Retriever(index)
    fusion = Fusion(cross=FusionWeights(1.0, 0.0), patient=FusionWeights(0.0, 1.0))
    hybrid = HybridRetriever(dense, bm25, fusion=fusion)
    q = QUESTIONS[0]
    assert _ids(hybrid.retrieve(q, Scope.all(), 5)) == _ids(dense.retrieve(q, Scope.all(), 5))
    patient = Scope.patient(index.stored().metas[0]["patient_id"])
    b = bm25.retrieve(q, patient, 5)
    assert _ids(hybrid.retrieve(q, patient, 5))[: len(b)] == _ids(b)


def test_equal_weights_are_plain_rrf_and_weights_are_validated():
    assert EQUAL.cross == EQUAL.patient == FusionWeights(0.5, 0.5)
    with pytest.raises(ValueError):
        FusionWeights(0.0, 0.0)
    with pytest.raises(ValueError):
        FusionWeights(-1.0, 1.0)


def test_a_model_folder_carries_its_fusion(tmp_path, tiny_model_dir, settings):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    assert fusion_for(get_embedder(str(folder), settings=settings)) == EQUAL  # not tuned: plain RRF
    tuned = Fusion(FusionWeights(0.3, 0.7), FusionWeights(0.8, 0.2), source="test")
    write_fusion(folder, tuned)
    embedder = get_embedder(str(folder), settings=settings)
    assert fusion_for(embedder) == tuned
    (folder / FUSION_FILE).write_text(json.dumps({"cross": {"dense": 1}}))
    with pytest.raises(ValueError, match="not a fusion file"):
        fusion_for(embedder)


def test_make_retriever_uses_the_tuned_fusion(tmp_path, tiny_model_dir, settings, synthea):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tuned = Fusion(FusionWeights(0.2, 0.8), FusionWeights(0.9, 0.1), source="test")
    write_fusion(folder, tuned)
    embedder = get_embedder(str(folder), settings=settings)
    idx = synced_index("f", embedder, settings, small_synthea(synthea, patients=2, per_patient=4).documents)
    assert make_retriever("hybrid", idx).fusion == tuned
    assert make_retriever("hybrid", idx, fusion=EQUAL).fusion == EQUAL


def test_tuning_never_chooses_below_a_component(tmp_path, settings, tiny_model_dir, tiny_set):
    result = tune(tiny_set, str(tiny_model_dir), settings=settings, out=tmp_path / "fusion", grid=(0.0, 0.5, 1.0),
                  progress=False)
    for scope in ("cross", "patient"):
        curve = result["curve"][scope]
        chosen = f"{result['chosen'][scope]:.1f}"
        assert curve[chosen] >= max(curve["0.0"], curve["1.0"])
    fusion = fusion_from(result)
    assert fusion.cross.dense == result["chosen"]["cross"] and "tiny-synthea" in fusion.source
    assert set(GRID) >= {0.0, 1.0}


def test_choose_prefers_plain_rrf_within_noise_but_never_goes_below_a_component():
    flat = {0.0: 0.30, 0.3: 0.409, 0.5: 0.400, 1.0: 0.38}
    assert choose(flat) == 0.5  # 0.009 better at 0.3 is noise
    dense_wins = {0.0: 0.30, 0.5: 0.400, 0.8: 0.404, 1.0: 0.405}
    assert choose(dense_wins) in (0.8, 1.0)  # 0.5 would be below dense alone
    clear = {0.0: 0.20, 0.2: 0.45, 0.5: 0.40, 1.0: 0.30}
    assert choose(clear) == 0.2


def test_choose_takes_the_better_component_alone_when_no_fusion_beats_it_beyond_noise():
    # the German patient-scope dev curve of one run: RRF 0.5 was 0.007 above dense alone
    german_patient = {0.0: 0.317, 0.2: 0.334, 0.5: 0.351, 0.8: 0.345, 1.0: 0.344}
    assert choose(german_patient) == 1.0
    bm25_better = {0.0: 0.40, 0.3: 0.405, 0.5: 0.39, 1.0: 0.30}
    assert choose(bm25_better) == 0.0
    tie = {0.0: 0.30, 0.5: 0.29, 1.0: 0.30}
    assert choose(tie) == 1.0  # dense on a tie
    assert choose({0.0: 0.30, 0.5: 0.312, 1.0: 0.30}) == 0.5  # beyond the margin: fuse


def test_german_questions_get_their_own_weights(index):
    dense, bm25 = DenseRetriever(index), BM25Retriever(index)
    english = Fusion(FusionWeights(0.0, 1.0), FusionWeights(0.0, 1.0), source="en dev")
    fusion = english.with_language("de", Fusion(FusionWeights(1.0, 0.0), FusionWeights(1.0, 0.0), source="de dev"))
    hybrid = HybridRetriever(dense, bm25, fusion=fusion)
    german = "Welche Medikamente bekommt die Patientin gegen den Blutdruck?"
    assert _ids(hybrid.retrieve(german, Scope.all(), 5)) == _ids(dense.retrieve(german, Scope.all(), 5))
    english_q = "which medications does the patient take for blood pressure"
    b = bm25.retrieve(english_q, Scope.all(), 5)
    assert _ids(hybrid.retrieve(english_q, Scope.all(), 5))[: len(b)] == _ids(b)
    assert fusion.for_scope(True, "fr") == english.cross  # a language without weights gets the main ones
    assert Fusion.from_json(json.loads(json.dumps(fusion.to_json()))) == fusion
    assert "de questions: dense:bm25 1.00:0.00" in fusion.describe()
    assert "languages" not in english.to_json()  # files written before languages existed still read the same
