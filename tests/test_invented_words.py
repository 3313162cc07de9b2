"""eval.invented_words: invented names and places for training the learned PHI layer."""
from __future__ import annotations

import pytest

from eval.invented_words import ORTHOGRAPHIES, invented_words


def test_words_are_distinct_seeded_and_shaped_like_names() -> None:
    words = invented_words(300, "name", seed=3)
    assert len(words) == len(set(words)) == 300 and words == sorted(words)
    assert words == invented_words(300, "name", seed=3) and words != invented_words(300, "name", seed=4)
    assert all(4 <= len(w) <= 24 and w[0].isupper() and w.replace("-", "").isalpha() for w in words)
    assert sum(not w.isascii() for w in words) > 30  # diacritics of many languages: no single spelling to learn


def test_places_sometimes_have_two_words_and_exclusions_hold() -> None:
    places = invented_words(500, "place", seed=1)
    assert any(" " in p or "-" in p for p in places)
    banned = {w for p in places[:100] for w in p.replace("-", " ").split()}
    again = invented_words(500, "place", seed=1, excluded=banned)
    assert not {w for p in again for w in p.replace("-", " ").split()} & banned
    assert all(not w.startswith("B") for w in invented_words(50, "name", seed=2, excluded=lambda w: w[0] == "B"))


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        invented_words(3, "street", seed=0)
    with pytest.raises(RuntimeError, match="could only invent"):
        invented_words(10, "name", seed=0, excluded=lambda w: True)
    assert len(ORTHOGRAPHIES) >= 8


def test_the_training_set_cli_refuses_a_share_of_one(tmp_path, capsys) -> None:
    from eval.deid_stress import main

    with pytest.raises(SystemExit) as stop:
        main(["--data", str(tmp_path / "gold.jsonl"), "--out", str(tmp_path / "t.jsonl"), "--invented-share", "1"])
    assert stop.value.code == 2 and "--invented-share must be within [0, 1)" in capsys.readouterr().err
