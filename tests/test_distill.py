"""finetune.distill: the hybrid teacher grades the right pairs, the loss matches its definition and
trains a tiny model through finetune.train."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.distill import HybridTeacher, distilled_loss, lexical_matrix
from finetune.pairs import Pair
from finetune.train import TrainConfig, train
from tests.tiny_models import DEFAULT_CORPUS, build_tiny_st

PROMPTS = {"query": "query: ", "passage": "passage: "}


def _pairs() -> list[Pair]:
    drugs = ["heparin", "insulin", "vancomycin", "propofol", "lasix", "zosyn", "fentanyl", "warfarin"]
    return [Pair(query=f"{d} dose", positive=f"patient {i} on {d} drip, titrated overnight",
                 doc_id=f"d{i}", patient_id=f"p{i}", chunk_id=f"d{i}#0000", source="qa")
            for i, d in enumerate(drugs)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = DEFAULT_CORPUS + [p.query + " " + p.positive for p in _pairs()]
    return build_tiny_st(tmp_path_factory.mktemp("distill-base") / "m", corpus=texts, dim=32, prompts=PROMPTS)


def test_lexical_matrix_scores_only_shared_stemmed_words() -> None:
    m = lexical_matrix(["vancomycin troughs", "the and of"], ["vancomycin trough 15", "heparin drip", "trough"])
    assert m.shape == (2, 3)
    assert m[0, 0] > m[0, 2] > 0 and m[0, 1] == 0  # both words (stemmed) beat one; none scores 0
    assert not m[1].any()  # stop words only: no lexical evidence at all


def test_teacher_fuses_min_max_scores_per_question_within_the_batch() -> None:
    lexical = np.array([[4.0, 0.0, 2.0], [0.0, 0.0, 0.0], [1.0, 3.0, 5.0]], dtype=np.float32)
    dense = np.array([[0.9, 0.7, 0.8], [0.5, 0.9, 0.7], [0.6, 0.6, 0.6]], dtype=np.float32)
    t = HybridTeacher(lexical, dense, lexical_share=0.5, temperature=0.1)
    fused = t.fused(np.array([0, 1, 2]))
    assert np.allclose(fused[0], [1.0, 0.0, 0.5])  # both agree: min-max 1 / 0 / 0.5
    assert np.allclose(fused[1], [0.0, 0.5, 0.25])  # no BM25 evidence: the dense half alone
    assert np.allclose(fused[2], [0.0, 0.25, 0.5])  # equal cosines carry nothing
    sub = t.fused(np.array([2, 0]))  # a batch of rows 2 and 0: its own 2 x 2 block, renormalised
    assert np.allclose(sub, [[0.5, 0.0], [0.0, 1.0]])  # row 2: BM25 decides, its cosines tie
    p = t.probabilities(torch.tensor([0, 1, 2])).numpy()
    assert np.allclose(p.sum(axis=1), 1.0) and p[0].argmax() == 0 and p[1].argmax() == 1


def test_teacher_needs_a_share_and_a_temperature_that_mean_something(tiny_base: Path) -> None:
    from sentence_transformers import SentenceTransformer

    base = SentenceTransformer(str(tiny_base), device="cpu")
    with pytest.raises(ValueError, match="lexical_share"):
        HybridTeacher.build(_pairs(), base, "query: ", "passage: ", lexical_share=1.5)
    with pytest.raises(ValueError, match="temperature"):
        HybridTeacher.build(_pairs(), base, "query: ", "passage: ", temperature=0.0)
    t = HybridTeacher.build(_pairs(), base, "query: ", "passage: ")
    assert t.lexical.shape == t.dense.shape == (8, 8)
    assert (t.lexical.argmax(axis=1) == np.arange(8)).all()  # each drug question shares its drug


def test_distilled_loss_is_info_nce_plus_weighted_kl(tiny_base: Path) -> None:
    import torch.nn.functional as F
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_base), device="cpu")
    teacher = HybridTeacher(np.random.default_rng(0).random((4, 4), dtype=np.float32),
                            np.random.default_rng(1).random((4, 4), dtype=np.float32))
    loss = distilled_loss(model, teacher, weight=0.5, scale=20.0, mini_batch_size=3)
    q, d = torch.randn(4, 8), torch.randn(4, 8)
    rows = torch.tensor([2, 0, 3, 1])
    got = loss.calculate_loss([[q], [d]], rows)
    logits = 20.0 * F.normalize(q) @ F.normalize(d).T
    want = (F.cross_entropy(logits, torch.arange(4), reduction="sum")
            + 0.5 * F.kl_div(F.log_softmax(logits, 1), teacher.probabilities(rows), reduction="sum")) / 4
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="label"):
        loss.calculate_loss([[q], [d]], None)
    with pytest.raises(ValueError, match="negative"):
        loss.calculate_loss([[q], [d], [d]], rows)


def test_training_with_the_teacher_runs_and_is_recorded(tiny_base: Path, settings) -> None:
    cfg = TrainConfig(base=str(tiny_base), name="tiny-distilled", max_steps=4, batch_size=8, mini_batch_size=4,
                      learning_rate=3e-3, warmup_ratio=0.0, max_seq_length=32, num_negatives=0,
                      distill_weight=1.0)
    result = train(_pairs(), cfg, settings, progress=False)
    assert result.config.distill_weight == 1.0 and (result.path / "crag_embedder.json").is_file()
    assert "KL to a hybrid teacher" in (result.path / "README.md").read_text()  # the card says how it was made
    losses = [h["loss"] for h in result.loss_history if "loss" in h]
    assert losses and all(np.isfinite(losses))
    with pytest.raises(ValueError, match="cannot be combined"):
        train(_pairs(), TrainConfig(base=str(tiny_base), name="x", max_steps=1, num_negatives=1, distill_weight=1.0),
              settings, progress=False)


def test_pipeline_stage_key_names_distillation_only_when_it_is_on() -> None:
    from types import SimpleNamespace

    from finetune.pipeline import _train_config
    from finetune.presets import CPU_DEMO

    off = _train_config(SimpleNamespace(preset=CPU_DEMO))
    assert not any(k.startswith("distill_") for k in off)  # keys of runs made before distillation hold
    on = _train_config(SimpleNamespace(preset=CPU_DEMO.with_overrides(train_distill_weight=1.0)))
    assert on["distill_weight"] == 1.0 and on["distill_lexical_share"] == 0.5
    assert {k: v for k, v in on.items() if not k.startswith("distill_")} == off
