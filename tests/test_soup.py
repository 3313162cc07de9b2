"""finetune.soup and ``TrainConfig.soup``: a soup's weights are the mean of its members' (each member
the same model as a single run with that seed), and an interrupted soup retrains only what it lacks."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import finetune.train as train_module
from finetune.pairs import Pair
from finetune.soup import average_weights, load_member, member_fingerprint, save_member
from finetune.train import TrainConfig, train
from tests.tiny_models import DEFAULT_CORPUS, build_tiny_st

PROMPTS = {"query": "query: ", "passage": "passage: "}


def _pairs(n_patients: int = 10) -> list[Pair]:
    drugs = ["heparin", "insulin", "lasix", "propofol", "vancomycin", "zosyn", "morphine", "warfarin", "digoxin", "nitro"]
    return [Pair(query=f"was {drugs[p]} given", positive=f"pt started on {drugs[p]} drip, note of patient {p}",
                 doc_id=f"d{p}", patient_id=f"p{p}", chunk_id=f"d{p}#0000", source="qa") for p in range(n_patients)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = DEFAULT_CORPUS + [p.query + " " + p.positive for p in _pairs()]
    return build_tiny_st(tmp_path_factory.mktemp("soup-base") / "m", corpus=texts, dim=32, prompts=PROMPTS)


def _cfg(base: Path, name: str, **changes) -> TrainConfig:
    cfg = TrainConfig(base=str(base), name=name, max_steps=4, batch_size=8, mini_batch_size=4, learning_rate=3e-3,
                      warmup_ratio=0.0, max_seq_length=32, num_negatives=0)
    return dataclasses.replace(cfg, **changes)


def _weights(folder: Path) -> dict:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")[0].auto_model.state_dict()


def test_average_weights_is_the_mean_and_refuses_other_architectures(tiny_base: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_base), device="cpu")
    own = {k: v.clone() for k, v in model[0].auto_model.state_dict().items()}
    shifted = {k: (v + 3.0 if v.is_floating_point() else v) for k, v in own.items()}
    changed = average_weights(model, [shifted, shifted])
    after = model[0].auto_model.state_dict()
    assert changed == sum(v.is_floating_point() for v in own.values()) > 0
    for k, v in own.items():
        assert torch.allclose(after[k], v + 2.0) if v.is_floating_point() else torch.equal(after[k], v)
    with pytest.raises(ValueError, match="architecture"):
        average_weights(model, [{"other": torch.zeros(1)}])


def test_a_soup_is_the_mean_of_single_runs_with_its_seeds(tiny_base: Path, settings) -> None:
    import torch

    pairs = _pairs()
    singles = [train(pairs, _cfg(tiny_base, f"single-{s}", seed=s), settings, progress=False).path for s in (0, 1)]
    soup = train(pairs, _cfg(tiny_base, "soup", soup=2), settings, progress=False)
    a, b, mixed = _weights(singles[0]), _weights(singles[1]), _weights(soup.path)
    assert any(not torch.allclose(a[k], b[k]) for k in a if a[k].is_floating_point())  # the seeds differ
    for k, v in mixed.items():
        if v.is_floating_point():
            assert torch.allclose(v, (a[k] + b[k]) / 2, atol=1e-5), k
    assert [m["seed"] for m in soup.soup_members] == [0, 1]
    assert "uniform soup of 2 runs" in (soup.path / "README.md").read_text()
    assert not (soup.path.parent / ".soup.work").exists()  # members are removed once the soup is saved


def test_an_interrupted_soup_trains_only_the_missing_member(tiny_base: Path, settings,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    pairs = _pairs()
    real_fit, seeds = train_module._fit, []

    def failing_second(pairs, cfg, *args, **kwargs):
        seeds.append(cfg.seed)
        if cfg.seed == 1:
            raise RuntimeError("the machine went away during the second member")
        return real_fit(pairs, cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "_fit", failing_second)
    with pytest.raises(RuntimeError, match="went away"):
        train(pairs, _cfg(tiny_base, "resumed", soup=2), settings, progress=False)
    work = settings.home / "models" / ".resumed.work"
    assert (work / "member-0" / "member.json").is_file() and not (settings.home / "models" / "resumed").exists()

    def counting(pairs, cfg, *args, **kwargs):
        seeds.append(cfg.seed)
        return real_fit(pairs, cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "_fit", counting)
    resumed = train(pairs, _cfg(tiny_base, "resumed", soup=2), settings, progress=False)
    assert seeds == [0, 1, 1]  # seed 0 came from its saved member
    fresh = train(pairs, _cfg(tiny_base, "fresh", soup=2), settings, progress=False)
    got, want = _weights(resumed.path), _weights(fresh.path)
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want if want[k].is_floating_point())
    assert [m["seed"] for m in resumed.soup_members] == [0, 1]


def test_a_member_of_other_pairs_or_another_recipe_is_not_reused(tiny_base: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_base), device="cpu")
    pairs = _pairs()
    recipe = {"learning_rate": 3e-3, "scale": 20.0}
    key = member_fingerprint(pairs, recipe, seed=0)
    save_member(model, tmp_path / "m", key, {"seconds": 1.0})
    assert load_member(tmp_path / "m", key) is not None
    assert load_member(tmp_path / "m", member_fingerprint(pairs[:-1], recipe, seed=0)) is None
    assert load_member(tmp_path / "m", member_fingerprint(pairs, {**recipe, "scale": 100.0}, seed=0)) is None
    assert load_member(tmp_path / "m", member_fingerprint(pairs, recipe, seed=1)) is None
    assert load_member(tmp_path / "missing", key) is None


def test_soup_size_is_checked(tiny_base: Path, settings) -> None:
    with pytest.raises(ValueError, match="soup must be >= 1"):
        train(_pairs(), _cfg(tiny_base, "none", soup=0), settings, progress=False)


def test_a_soup_whose_members_all_finished_trains_nothing_again(tiny_base: Path, settings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    pairs = _pairs()
    real_average, real_fit = train_module.average_weights, train_module._fit

    def dying(*args, **kwargs):
        raise RuntimeError("killed before the average was saved")

    monkeypatch.setattr(train_module, "average_weights", dying)
    with pytest.raises(RuntimeError, match="killed"):
        train(pairs, _cfg(tiny_base, "finished", soup=2), settings, progress=False)
    monkeypatch.setattr(train_module, "average_weights", real_average)
    trained_again: list[int] = []

    def counting(pairs, cfg, *args, **kwargs):
        trained_again.append(cfg.seed)
        return real_fit(pairs, cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "_fit", counting)
    result = train(pairs, _cfg(tiny_base, "finished", soup=2), settings, progress=False)
    assert trained_again == [] and [m["seed"] for m in result.soup_members] == [0, 1]
    fresh = train(pairs, _cfg(tiny_base, "finished-fresh", soup=2), settings, progress=False)
    got, want = _weights(result.path), _weights(fresh.path)
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want if want[k].is_floating_point())
