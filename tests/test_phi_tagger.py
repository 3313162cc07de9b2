"""The learned PHI layer (finetune.phi_tagger): training data, training, the spans it adds to the
rules and where it must stay silent. A tiny BERT built here stands in for me5-small's layers: it
learns one context ("remember <name> please", the name in lower case) that no rule knows, so the
test sees the tagger's own spans, not the rules'."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from eval.deid import main as deid_main
from eval.deid_stress import build_pools, training_pools
from eval.deid_stress import main as stress_main
from finetune.phi_detector import PhiDetector
from finetune.phi_tagger import PhiTagger, read_annotated, tagger_version, train_tagger
from finetune.phi_types import PhiType
from rag.corpus import CorpusError
from tests.tiny_models import build_tiny_st

SYLLABLES = ["qor", "vath", "zin", "tal", "mek", "rud", "osh", "lan", "vir", "dak", "pel", "nob"]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3))


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tagger")
    rng = random.Random(0)
    rows = []
    for i in range(60):
        name = _name(rng)
        text = f"the team will remember {name} please and check the drain at noon."
        start = text.index(name)
        rows.append({"text": text, "language": "en", "phi": [{"start": start, "end": start + len(name), "label": "NAME"}]})
        rows.append({"text": "the team will check the drain at noon and flush the line.", "language": "en", "phi": []})
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base = build_tiny_st(root / "base", corpus=[r["text"] for r in rows] + SYLLABLES, dim=32)
    train_tagger(read_annotated([data]), base, root / "tagger", layers=2, epochs=8, lr=3e-3, batch_size=16,
                 progress=False)
    return root / "tagger"


def test_the_tagger_learns_a_context_and_adds_to_the_rules(tagger_dir: Path) -> None:
    tagger = PhiTagger(tagger_dir, threshold=0.5)
    info = json.loads((tagger_dir / "phi_tagger.json").read_text(encoding="utf-8"))
    assert info["languages"] == ["en"] and info["steps"] > 0
    text = "the team will remember dakpelnob please and check the drain at noon."
    assert [(text[s.start:s.end], s.label, s.strong) for s in tagger.spans(text, "en")] == \
        [("dakpelnob", PhiType.NAME, False)]
    detector = PhiDetector(tagger=tagger_dir)
    assert detector.model_versions["tagger"] == tagger_version(tagger_dir)  # what a workers' parent records
    rules_only = PhiDetector(tagger="")
    assert not [s for s in rules_only.detect(text, "en") if text[s.start:s.end] == "dakpelnob"]
    detector.tagger.threshold = 0.5
    assert [s.source for s in detector.detect(text, "en") if text[s.start:s.end] == "dakpelnob"] == ["tagger"]


def test_the_tagger_never_masks_a_safe_word_or_another_language(tagger_dir: Path) -> None:
    tagger = PhiTagger(tagger_dir, threshold=0.5)
    assert not tagger.spans("the team will remember Foley please and check the drain at noon.", "en")
    assert not tagger.spans("the team will remember dakpelnob please and check the drain at noon.", "de")
    assert not tagger.spans("   ", "en")


def test_bfloat16_gives_the_float32_spans_and_is_recorded(tagger_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CPU multiplies bfloat16 natively the tagger runs under autocast; the spans must stay
    those of float32, and a manifest must say which one ran."""
    import numpy as np

    from finetune import phi_tagger

    text = "the team will remember dakpelnob please and check the drain at noon."
    full, half = PhiTagger(tagger_dir, threshold=0.5, bf16=False), PhiTagger(tagger_dir, threshold=0.5, bf16=True)
    assert [(s.start, s.end) for s in half.spans(text, "en")] == [(s.start, s.end) for s in full.spans(text, "en")]
    assert np.allclose(half.probabilities(text)[0], full.probabilities(text)[0], atol=0.05)
    assert half.version.endswith(" bfloat16") and not full.version.endswith("bfloat16")
    assert tagger_version(tagger_dir, bf16=True) == tagger_version(tagger_dir, 0.97, True)
    monkeypatch.setenv("CRAG_PHI_TAGGER_FLOAT32", "1")
    assert phi_tagger.native_bf16() is False and PhiTagger(tagger_dir).bf16 is False


def test_the_default_base_is_the_converted_me5_small() -> None:
    from rag.embedders import model_folder

    folder = model_folder("me5-small")
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def test_annotated_input_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "phi": []}\n{"text": 3}\n{"text": "ab", "phi": [{"start": "a"}]}\n', encoding="utf-8")
    with pytest.raises(CorpusError) as err:
        read_annotated([bad])
    assert "bad.jsonl" in str(err.value) and ":2" in str(err.value) and ":3" in str(err.value)
    with pytest.raises(FileNotFoundError, match="not a PHI tagger folder"):
        PhiTagger(tmp_path)


def test_training_values_never_meet_the_stress_values() -> None:
    stress = build_pools()
    for train in (training_pools(), training_pools(0.5)):  # invented words keep the separation too
        assert not set(train.first) & set(stress.first)
        assert not set(train.last) & set(stress.last)
        assert not set(train.places) & set(stress.places)
        assert not train.hard_last
    plain, mixed = training_pools(), training_pools(0.5)
    invented = {v for kind in ("first", "last", "places") for v in set(getattr(mixed, kind)) - set(getattr(plain, kind))}
    values = set(stress.first + stress.last + stress.hard_last + stress.places + stress.streets)
    assert not {w for v in invented for w in [v, *v.replace("-", " ").split()]} & values  # no stress value of any kind
    new_places = set(mixed.places) - set(plain.places)
    assert set(plain.places) <= set(mixed.places) and len(new_places) == len(plain.places)  # half of them invented
    assert any(not w.isascii() for w in new_places)  # spellings the gazetteer's towns lack
    with pytest.raises(ValueError, match="invented_share"):
        training_pools(1.0)


def test_training_set_writer_and_eval_with_the_tagger(tmp_path: Path, tagger_dir: Path) -> None:
    gold = tmp_path / "gold.jsonl"
    rows = [{"doc_id": f"d{i}", "patient_id": f"P{i}", "text": f"Dr. Marder aware, seen 8/25/1993 ({i}).",
             "phi": [{"start": 4, "end": 10, "label": "HCPName"}, {"start": 23, "end": 32, "label": "Date"}]}
            for i in range(12)]
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "train.jsonl"
    assert stress_main(["--data", str(gold), "--out", str(out), "--variants", "2"]) == 0
    written = read_annotated([out])
    dev = len(written) // 3
    assert 0 < dev < 12 and len(written) == 3 * dev  # the dev part only, plus two variants each
    assert all(len(a.spans) == 2 for a in written)
    copies = tmp_path / "copies.jsonl"
    assert stress_main(["--data", str(gold), "--out", str(copies), "--variants", "2", "--copies-only"]) == 0
    copied = copies.read_text(encoding="utf-8").splitlines()
    assert copied == out.read_text(encoding="utf-8").splitlines()[dev:]  # the same copies, no originals
    assert deid_main(["--data", str(gold), "--tagger", str(tagger_dir), "--out", str(tmp_path / "eval")]) == 0
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parameters"]["tagger"] == str(tagger_dir) and "tagger" in manifest["models"]
    assert deid_main(["--data", str(gold), "--tagger", str(tagger_dir), "--detector", "philter",
                      "--out", str(tmp_path / "x")]) == 2
