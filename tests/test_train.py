"""finetune.train on tiny models: the loss falls, the model saves and reloads by name, batches keep
patients apart, word embeddings stay frozen; the GPU preset runs on a tiny XLM-R of e5-large's kind."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finetune.dev_sets import ChunkedSet, DevSet
from finetune.interpolation import choose_interpolation, interpolate_with_base
from finetune.pairs import Pair
from finetune.train import TrainConfig, main, resumable_checkpoint, train
from finetune.train_sampler import _patient_batches, _WeightedDraw, make_patient_sampler
from tests.tiny_models import DEFAULT_CORPUS, build_tiny_st, build_xlmr_st

PROMPTS = {"query": "query: ", "passage": "passage: "}


def _toy_pairs(n_patients: int = 12, per_patient: int = 3) -> list[Pair]:
    """Queries that share a keyword with their passage only: learnable in a few steps."""
    drugs = ["heparin", "insulin", "metformin", "aspirin", "lasix", "propofol", "vancomycin", "zosyn",
             "atropine", "lithium", "morphine", "fentanyl", "warfarin", "digoxin", "labetalol", "nitro"]
    pairs = []
    for p in range(n_patients):
        for j in range(per_patient):
            drug = drugs[(p * per_patient + j) % len(drugs)]
            pairs.append(Pair(query=f"was {drug} given", positive=f"pt started on {drug} drip overnight note {p}-{j}",
                              doc_id=f"d{p}-{j}", patient_id=f"p{p}", chunk_id=f"d{p}-{j}#0000", source="qa"))
    return pairs


def _mean_info_nce(model, pairs: list[Pair]) -> float:
    q = model.encode(["query: " + p.query for p in pairs], normalize_embeddings=True)
    d = model.encode(["passage: " + p.positive for p in pairs], normalize_embeddings=True)
    s = 20.0 * q @ d.T
    s = s - s.max(axis=1, keepdims=True)
    return float(-np.mean(np.diag(s) - np.log(np.exp(s).sum(axis=1))))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = DEFAULT_CORPUS + [p.query + " " + p.positive for p in _toy_pairs()]
    return build_tiny_st(tmp_path_factory.mktemp("tiny-base") / "m", corpus=texts, dim=32, prompts=PROMPTS)


def test_patient_batches_hold_one_pair_per_patient() -> None:
    groups = ["a"] * 30 + ["b"] * 5 + [f"s{i}" for i in range(20)]
    batches, dropped = _patient_batches(groups, 8, 1, seed=1, min_batch=2)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) and len(seen) + dropped == len(groups)
    for b in batches:
        assert max(Counter(groups[i] for i in b).values()) == 1 and len(b) <= 8
    assert _patient_batches(groups, 8, 1, seed=1, min_batch=2) == (batches, dropped)  # deterministic
    two, _ = _patient_batches(groups, 8, 2, seed=1, min_batch=2)
    assert all(max(Counter(groups[i] for i in b).values()) <= 2 for b in two)


def _draws_with_random_choices(weights: list[int], k: int, rng) -> list[int]:
    """The draw the sampler used before its Fenwick tree: random.choices over what is left."""
    idx, w, out = list(range(len(weights))), list(weights), []
    for _ in range(min(k, len(w))):
        j = rng.choices(range(len(idx)), weights=w)[0]
        out.append(idx.pop(j))
        w.pop(j)
    return out


def test_weighted_draw_matches_random_choices_draw_for_draw() -> None:
    """Same seed, same positions: the cpu-demo batches (and its reported model) did not change."""
    import random


    gen = random.Random(7)
    for case in range(200):
        weights = [gen.randint(1, 9) for _ in range(gen.randint(1, 70))]
        k = gen.randint(1, len(weights))
        a, b = random.Random(case), random.Random(case)
        draw = _WeightedDraw(weights)
        assert [draw.draw(a) for _ in range(k)] == _draws_with_random_choices(weights, k, b), case
        assert a.random() == b.random()  # the same number of random() calls


def test_sampler_is_picklable_and_checks_length() -> None:
    import pickle

    from datasets import Dataset

    factory = make_patient_sampler(["a", "b", "c", "a", "d"])
    pickle.dumps(factory)  # the trainer pickles its arguments with every checkpoint
    ds = Dataset.from_dict({"anchor": list("vwxyz"), "positive": list("12345")})
    sampler = factory(ds, 2, False, None, None, 0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 and sampler.dropped == 1  # the lone tail pair is skipped
    assert all(len({"abcad"[i] for i in b}) == len(b) for b in batches)
    with pytest.raises(ValueError, match="patient ids"):
        factory(Dataset.from_dict({"anchor": ["x"], "positive": ["1"]}), 2, False, None, None, 0)


def test_training_lowers_loss_saves_and_registry_finds_it(tiny_base: Path, settings) -> None:
    from sentence_transformers import SentenceTransformer

    from rag.embedders import (
        available_embedders,
        clear_cache,
        describe_embedders,
        get_embedder,
    )

    pairs = _toy_pairs()
    before_model = SentenceTransformer(str(tiny_base), device="cpu")
    before = _mean_info_nce(before_model, pairs)
    emb_before = before_model[0].auto_model.get_input_embeddings().weight.detach().clone()
    dev = DevSet({f"q{i}": p.query for i, p in enumerate(pairs[:8])}, {p.doc_id: p.positive for p in pairs},
                 {f"q{i}": {p.doc_id} for i, p in enumerate(pairs[:8])})
    cfg = TrainConfig(base=str(tiny_base), name="tiny-domain", max_steps=12, batch_size=12, mini_batch_size=6,
                      learning_rate=3e-3, warmup_ratio=0.0, max_seq_length=32, num_negatives=1, eval_steps=12)
    result = train(pairs, cfg, settings, dev=dev, progress=False)
    folder = settings.home / "models" / "tiny-domain"
    assert result.path == folder and (folder / "crag_embedder.json").is_file() and (folder / "README.md").is_file()
    assert result.trainable_parameters < result.total_parameters  # word embeddings frozen
    assert result.dev_before and result.dev_after and "map@100" in result.dev_after
    assert result.best_checkpoint is not None

    clear_cache()
    emb = get_embedder("tiny-domain", settings)  # by name, from <home>/models
    assert emb.name == "tiny-domain" and "fine-tuned from" in emb.label
    assert (emb.query_prefix, emb.passage_prefix) == ("query: ", "passage: ")
    after = _mean_info_nce(emb.model, pairs)
    assert after < before - 0.05, (before, after)
    frozen = emb.model[0].auto_model.get_input_embeddings().weight.detach()
    assert np.allclose(frozen.numpy(), emb_before.numpy())
    assert "tiny-domain" in available_embedders(settings)
    assert any(r["name"] == "tiny-domain" and r["available"] for r in describe_embedders(settings))
    meta = json.loads((folder / "crag_embedder.json").read_text())
    assert meta["patients"] == 12 and meta["pair_sources"] == {"qa": len(pairs)}
    # the registry's vectors are the saved model's vectors, prefix included
    v = emb.embed_queries(["was heparin given"])
    w = emb.model.encode(["query: was heparin given"], normalize_embeddings=True)
    assert np.allclose(v, w, atol=1e-5)


def test_app_starts_with_the_trained_domain_model_unless_one_is_chosen(tiny_base: Path, settings, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The acceptance rule 'the best measured retriever is the app's default': hybrid over the
    pipeline's model once it exists, the shipped me5-small before; a chosen embedder always wins."""
    import app
    from rag.embedders import DOMAIN_MODEL

    monkeypatch.delenv("CRAG_EMBEDDER", raising=False)
    monkeypatch.delenv("CRAG_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no clinical-rag.toml here
    assert app.default_embedder(settings) == "me5-small"
    cfg = TrainConfig(base=str(tiny_base), name=DOMAIN_MODEL, max_steps=1, batch_size=6, mini_batch_size=6,
                      max_seq_length=32, num_negatives=0)
    train(_toy_pairs(6, 1), cfg, settings, progress=False)
    assert app.default_embedder(settings) == DOMAIN_MODEL
    monkeypatch.setenv("CRAG_EMBEDDER", "me5-small")
    assert app.default_embedder(settings) == "me5-small"
    monkeypatch.delenv("CRAG_EMBEDDER")
    (tmp_path / "clinical-rag.toml").write_text('embedder = "minilm"\n')
    assert app.default_embedder(settings.replace(embedder="minilm")) == "minilm"


def test_gpu_preset_recipe_runs_on_tiny_xlmr(tmp_path: Path, settings) -> None:
    """The e5-large GPU configuration, shrunk only in size (steps, batch, dims), on the same architecture."""
    import torch

    from finetune.presets import GPU_E5_LARGE
    from rag.embedders import clear_cache, get_embedder

    pairs = _toy_pairs(8, 2)
    folder = build_xlmr_st(tmp_path / "xlmr", DEFAULT_CORPUS + [p.query + " " + p.positive for p in pairs],
                           prompts=PROMPTS)
    gpu = GPU_E5_LARGE.train
    assert gpu.base == "e5-large" and not gpu.freeze_embeddings and gpu.matryoshka_dims and gpu.bf16
    cfg = dataclasses.replace(gpu, base=str(folder), name="tiny-xlmr-domain", max_steps=3, batch_size=8,
                              mini_batch_size=4, max_seq_length=32, bf16=gpu.bf16 and torch.cuda.is_available())
    result = train(pairs, cfg, settings, progress=False)
    assert result.trainable_parameters == result.total_parameters  # full fine-tuning, as on the GPU
    clear_cache()
    emb = get_embedder("tiny-xlmr-domain", settings)
    assert type(emb.model[0].auto_model).__name__ == "XLMRobertaModel"
    assert emb.embed_passages(["pt on heparin"]).shape == (1, 32)


def test_resumable_checkpoint_matches_optimisation_settings(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import torch


    args = SimpleNamespace(learning_rate=1e-4, per_device_train_batch_size=32, seed=0, weight_decay=0.01)
    assert resumable_checkpoint(tmp_path, args) is None
    for step, lr in ((5, 1e-4), (10, 1e-4), (15, 5e-5)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        torch.save(SimpleNamespace(**{**vars(args), "learning_rate": lr}), ckpt / "training_args.bin")
        (ckpt / "trainer_state.json").write_text("{}")
    assert resumable_checkpoint(tmp_path, args) == tmp_path / "checkpoint-10"  # latest with the same settings


def test_interpolation_is_chosen_on_dev_and_leaves_the_model_unchanged(tiny_base: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer


    base = SentenceTransformer(str(tiny_base), device="cpu")
    tuned = SentenceTransformer(str(tiny_base), device="cpu")
    with torch.no_grad():
        for p in tuned[0].auto_model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in tuned[0].auto_model.state_dict().items()}
    probe = next(k for k, v in before.items() if v.is_floating_point())
    base_value = base[0].auto_model.state_dict()[probe]

    def score(model) -> float:  # a dev score that peaks at alpha = 0.5
        alpha = float((model[0].auto_model.state_dict()[probe] - base_value).mean())
        return -abs(alpha - 0.5)

    alpha, scores, guards = choose_interpolation(tuned, base, [0.0, 0.5, 1.0], score)
    assert alpha == 0.5 and set(scores) == {"0", "0.5", "1"} and scores["0.5"] == pytest.approx(0.0, abs=1e-5)
    assert guards == {}
    assert all(torch.equal(before[k], v) for k, v in tuned[0].auto_model.state_dict().items())

    def general(model) -> dict[str, float]:  # general retrieval that falls as the weight moves to the tuned model
        alpha = float((model[0].auto_model.state_dict()[probe] - base_value).mean())
        return {"g": 1.0, "g:patient": 1.0 - 0.2 * alpha}  # only one scope falls: it alone must bound

    alpha, scores, guards = choose_interpolation(tuned, base, [0.0, 0.5, 1.0], score, [general], 0.15)
    assert alpha == 0.5 and guards["0.5"]["g:patient"] == pytest.approx(0.9, abs=1e-4)  # -10% is within 15%
    alpha, _, _ = choose_interpolation(tuned, base, [0.0, 0.5, 1.0], score, [general], 0.05)
    assert alpha == 0.0  # the dev winner loses 10% of general retrieval: the base is kept
    alpha, scores, guards = choose_interpolation(tuned, base, [0.5, 1.0], score, [general], 0.05)
    assert alpha == 0.5 and set(scores) == {"0.5", "1"} and set(guards) == {"0", "0.5", "1"}  # least loss
    assert all(torch.equal(before[k], v) for k, v in tuned[0].auto_model.state_dict().items())
    interpolate_with_base(tuned, base, 0.0)
    assert torch.allclose(tuned[0].auto_model.state_dict()[probe], base_value)
    with pytest.raises(ValueError, match="within"):
        interpolate_with_base(tuned, base, 1.5)


def test_chunked_set_ranks_documents_by_their_best_chunk_in_both_scopes() -> None:
    import numpy as np


    vectors = {"query: q1": [1.0, 0.0], "query: q2": [0.0, 1.0], "passage: a": [0.0, 1.0],
               "passage: b": [0.6, 0.8], "passage: c": [0.8, 0.6], "passage: e": [0.9, 0.4359]}

    class Fixed:  # an embedder with known vectors: only the ranking arithmetic is under test
        max_seq_length = 128

        def encode(self, texts, **_):
            assert self.max_seq_length == 512  # scored at the inference length, not the training one
            return np.array([vectors[t] for t in texts], dtype=np.float32)

    passages = [("d1", "a"), ("d1", "b"), ("d2", "c"), ("d3", "e")]
    relevant = {"q1": {"d1"}, "q2": {"d1"}}
    guard = ChunkedSet("g", {"q1": "q1", "q2": "q2"}, passages, relevant)
    model = Fixed()
    # q1: d3 (0.9), d2 (0.8), then d1 (best chunk b, 0.6) -> AP 1/3; q2: d1 (chunk a, 1.0) first -> AP 1
    assert guard.scores(model, "query: ", "passage: ", 512) == {"g": pytest.approx(2 / 3, abs=1e-5)}
    assert model.max_seq_length == 128
    # patient scope: q1 belongs to patient A (d1, d2), so d3 of patient B is not ranked: AP 1/2
    scoped = ChunkedSet("g", {"q1": "q1", "q2": "q2"}, passages, relevant, {"q1": "A", "q2": "A"},
                      {"d1": "A", "d2": "A", "d3": "B"})
    got = scoped.scores(model, "query: ", "passage: ", 512)
    assert got == {"g": pytest.approx(2 / 3, abs=1e-5), "g:patient": pytest.approx(0.75, abs=1e-5)}


def test_cli_chooses_the_weight_on_dev_scored_like_eval_ir(tiny_base: Path, tmp_path: Path) -> None:
    from finetune.pairs import write_pairs

    pairs = _toy_pairs()
    write_pairs(pairs, tmp_path / "pairs.jsonl")
    dev = tmp_path / "dev"
    dev.mkdir()
    held_out = _toy_pairs(n_patients=4, per_patient=2)
    (dev / "corpus.jsonl").write_text("".join(
        json.dumps({"doc_id": f"x{p.doc_id}", "patient_id": f"x{p.patient_id}", "text": p.positive}) + "\n"
        for p in held_out))
    (dev / "queries.jsonl").write_text("".join(
        json.dumps({"query_id": f"q{i}", "text": p.query, "patient_id": f"x{p.patient_id}"}) + "\n"
        for i, p in enumerate(held_out)))
    (dev / "qrels.tsv").write_text("query_id\tdoc_id\tgrade\n" + "".join(
        f"q{i}\tx{p.doc_id}\t1\n" for i, p in enumerate(held_out)))
    (tmp_path / "cfg.json").write_text(json.dumps({"interpolate_choices": [0.0, 1.0]}))
    out = tmp_path / "model"
    assert main(["--pairs", str(tmp_path / "pairs.jsonl"), "--dev-dir", str(dev), "--config", str(tmp_path / "cfg.json"),
                 "--base", str(tiny_base), "--name", "tiny-cli", "--max-steps", "4", "--batch-size", "12",
                 "--mini-batch-size", "6", "--max-seq-length", "32", "--eval-steps", "4", "--out", str(out)]) == 0
    result = json.loads((out / "manifest.json").read_text())["result"]
    assert result["dev_map_scoring"].startswith("chunks at the inference length")
    assert set(result["dev_map_by_interpolation"]) == {"0", "1"}
    assert result["interpolation"] in (0.0, 1.0)


def test_loss_variants_train_and_leave_default_runs_alone(tiny_base: Path, tmp_path: Path) -> None:
    """GTE's loss (all four directions) and hardness weighting reach the cached loss and train; both are
    off by default, without changing the train-stage key of runs made before they existed."""
    from types import SimpleNamespace

    from sentence_transformers import SentenceTransformer

    from finetune.pairs import write_pairs
    from finetune.pipeline import _train_config
    from finetune.presets import CPU_DEMO
    from finetune.train import LOSS_DIRECTIONS, _build_loss

    with pytest.raises(ValueError, match="loss_directions"):
        TrainConfig(loss_directions=["doc_to_doc"])  # the query -> passage term is what retrieval needs
    with pytest.raises(ValueError, match="loss_directions"):
        TrainConfig(loss_directions=["query_to_doc", "sideways"])
    with pytest.raises(ValueError, match="hardness_strength"):
        TrainConfig(hardness_strength=-1.0)
    with pytest.raises(ValueError, match="distilled"):
        TrainConfig(loss_directions=list(LOSS_DIRECTIONS), distill_weight=1.0)
    with pytest.raises(ValueError, match="distilled"):
        TrainConfig(hardness_strength=9.0, distill_weight=1.0)
    cfg = TrainConfig.from_json({"loss_directions": list(LOSS_DIRECTIONS), "hardness_strength": 9.0})
    assert cfg.loss_directions == LOSS_DIRECTIONS
    model = SentenceTransformer(str(tiny_base), device="cpu")
    loss = _build_loss(model, cfg)
    assert (loss.directions, loss.hardness_mode, loss.hardness_strength) == (LOSS_DIRECTIONS, "in_batch_negatives", 9.0)
    plain = _build_loss(model, TrainConfig())
    assert (plain.directions, plain.hardness_mode) == (("query_to_doc",), None)

    pairs = _toy_pairs()
    write_pairs(pairs, tmp_path / "pairs.jsonl")
    out = tmp_path / "model"
    assert main(["--pairs", str(tmp_path / "pairs.jsonl"), "--base", str(tiny_base), "--name", "tiny-gte",
                 "--max-steps", "12", "--batch-size", "12", "--mini-batch-size", "6", "--max-seq-length", "32",
                 "--learning-rate", "3e-3", "--warmup-ratio", "0", "--num-negatives", "0",
                 "--loss-directions", ",".join(LOSS_DIRECTIONS), "--hardness-strength", "9", "--out", str(out)]) == 0
    recorded = json.loads((out / "manifest.json").read_text())["parameters"]
    assert (recorded["loss_directions"], recorded["hardness_strength"]) == (list(LOSS_DIRECTIONS), 9.0)
    before = _mean_info_nce(model, pairs)
    after = _mean_info_nce(SentenceTransformer(str(out), device="cpu"), pairs)
    assert after < before - 0.05, (before, after)

    off = _train_config(SimpleNamespace(preset=CPU_DEMO))
    assert "loss_directions" not in off and "hardness_strength" not in off
    on = _train_config(SimpleNamespace(preset=CPU_DEMO.with_overrides(train_loss_directions=list(LOSS_DIRECTIONS),
                                                                      train_hardness_strength=9.0)))
    assert on.pop("loss_directions") == LOSS_DIRECTIONS and on.pop("hardness_strength") == 9.0 and on == off
