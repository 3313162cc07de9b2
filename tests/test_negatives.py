"""Hard-negative filtering: nothing from the anchor's own patient or document survives."""
from __future__ import annotations

import pytest

from finetune.negatives import MiningReport, fill_missing, filter_negatives, mine_negatives, passage_owners
from finetune.pairs import Pair, chunk_corpus, inverse_cloze_pairs
from rag.chunking import ChunkingConfig


def _pairs() -> list[Pair]:
    return [
        Pair("q-a", "A1 text", "dA1", "pA", "dA1#0", "qa"),
        Pair("q-a2", "A2 text", "dA2", "pA", "dA2#0", "qa"),
        Pair("q-b", "B1 text", "dB1", "pB", "dB1#0", "qa"),
        Pair("q-c", "C1 text", "dC1", "pC", "dC1#0", "qa"),
    ]


def test_filter_drops_same_patient_same_document_and_unknown() -> None:
    pairs = _pairs()
    owners = passage_owners(pairs)
    owners["A1 other chunk"].add(("dA1", "pA"))
    owners["shared template"].update({("dB1", "pB"), ("dA2", "pA")})  # a text both patients have
    report = MiningReport()
    cands = ["A1 other chunk", "A2 text", "shared template", "mystery text", "B1 text", "C1 text"]
    kept = filter_negatives(pairs[0], cands, owners, keep=2, report=report)
    assert kept == ["B1 text", "C1 text"]
    assert report.dropped_same_document == 1 and report.dropped_same_patient == 2 and report.dropped_unknown == 1
    assert filter_negatives(pairs[0], cands, owners, keep=1) == ["B1 text"]


def test_fill_missing_uses_other_patients_only() -> None:
    pairs = fill_missing(_pairs(), 2, seed=3)
    for p in pairs:
        assert len(p.negatives) == 2
        others = {q.positive for q in _pairs() if q.patient_id != p.patient_id}
        assert set(p.negatives) <= others
    with pytest.raises(ValueError, match="two patients"):
        fill_missing([Pair("q", "x", "d", "p", "c", "qa"), Pair("q2", "y", "d2", "p", "c2", "qa")], 1)


def test_mine_with_tiny_model_respects_patients(synthea, tiny_embedder) -> None:
    from tests.conftest import small_synthea

    corpus = small_synthea(synthea, patients=3, per_patient=6)
    chunks = chunk_corpus(corpus, tiny_embedder.token_offsets, ChunkingConfig(max_tokens=64, overlap_tokens=0))
    pairs = inverse_cloze_pairs(chunks, per_chunk=1, seed=0)
    all_chunks = [c for cs in chunks.values() for c in cs]
    mined, report = mine_negatives(pairs, tiny_embedder, all_chunks, mine=8, keep=2, relative_margin=None)
    assert len(mined) == len(pairs) and report.pairs == len(pairs)
    owners = passage_owners(pairs, all_chunks)
    assert report.kept > 0
    for p in mined:
        assert len(p.negatives) <= 2
        for n in p.negatives:
            assert all(pid != p.patient_id and doc != p.doc_id for doc, pid in owners[n])
    assert report.params["query_prompt"] == tiny_embedder.query_prefix
    assert pairs[0].negatives == []  # inputs untouched


def test_mining_uses_vectors_computed_elsewhere(synthea, tiny_embedder) -> None:
    """The engine computes the vectors (Ray workers, or this process in the same batches); the search
    and selection stay sentence-transformers' own, which must take them from its cache, not re-embed."""
    from tests.conftest import small_synthea

    corpus = small_synthea(synthea, patients=3, per_patient=6)
    chunks = chunk_corpus(corpus, tiny_embedder.token_offsets, ChunkingConfig(max_tokens=64, overlap_tokens=0))
    pairs = inverse_cloze_pairs(chunks, per_chunk=1, seed=0)
    all_chunks = [c for cs in chunks.values() for c in cs]
    calls = []

    def vectors(texts, kind):
        calls.append((kind, len(texts)))
        return tiny_embedder.embed_queries(texts) if kind == "query" else tiny_embedder.embed_passages(texts)

    mined, report = mine_negatives(pairs, tiny_embedder, all_chunks, mine=8, keep=2, relative_margin=None,
                                   vectors=vectors)
    assert [k for k, _ in calls] == ["query", "passage"] and report.params["vectors"] == "precomputed"
    reference, _ = mine_negatives(pairs, tiny_embedder, all_chunks, mine=8, keep=2, relative_margin=None)
    assert [p.negatives for p in mined] == [p.negatives for p in reference]


def test_margin_zero_searches_the_whole_corpus_below_the_positive(synthea, tiny_embedder,
                                                                  monkeypatch) -> None:
    """e5 models score passages in a narrow band, so a 5% margin inside the top 50 finds almost nothing
    (35 of the 913 cpu-demo pairs got a negative); margin 0 over every passage keeps the candidates
    the base ranks no higher than the positive (913 of 913 there). ``range_max=None`` must reach
    sentence-transformers as the whole corpus: its own None means 10 x the negatives asked for."""
    import numpy as np
    import sentence_transformers.util as st_util

    from tests.conftest import small_synthea

    seen = []
    original = st_util.mine_hard_negatives

    def recording(*args, **kwargs):
        seen.append((kwargs["range_max"], len(kwargs["corpus"])))
        return original(*args, **kwargs)

    monkeypatch.setattr(st_util, "mine_hard_negatives", recording)
    corpus = small_synthea(synthea, patients=3, per_patient=6)
    chunks = chunk_corpus(corpus, tiny_embedder.token_offsets, ChunkingConfig(max_tokens=64, overlap_tokens=0))
    pairs = inverse_cloze_pairs(chunks, per_chunk=1, seed=0)
    all_chunks = [c for cs in chunks.values() for c in cs]
    mined, report = mine_negatives(pairs, tiny_embedder, all_chunks, mine=len(all_chunks), keep=1,
                                   relative_margin=0.0, range_max=None)  # every candidate, then the filters
    assert [r for r, _ in seen] == [n - 1 for _, n in seen]  # every other passage is a candidate
    assert report.kept > 0 and report.params["range_max"] is None
    for p in (p for p in mined if p.negatives):
        q = tiny_embedder.embed_queries([p.query])[0]
        pos, neg = tiny_embedder.embed_passages([p.positive, p.negatives[0]])
        assert float(np.dot(q, neg)) <= float(np.dot(q, pos)) + 1e-6


def test_mining_options_enter_the_stage_key_only_when_changed() -> None:
    """Runs made before margin and range were options keep their mine-stage key (and their models)."""
    from types import SimpleNamespace

    from finetune.pipeline import _mine_params
    from finetune.presets import CPU_DEMO

    settings = SimpleNamespace(chunk_tokens=256, chunk_overlap_tokens=32)
    before = _mine_params(SimpleNamespace(preset=CPU_DEMO, settings=settings))
    assert "margin" not in before and "range" not in before
    changed = _mine_params(SimpleNamespace(preset=CPU_DEMO.with_overrides(mine_margin=0.0, mine_range=None),
                                           settings=settings))
    assert changed == {**before, "margin": 0.0, "range": None}
