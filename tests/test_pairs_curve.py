"""The pairs-vs-dev-MAP curve's own parts (the training it drives is covered by test_pipeline)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.pairs_curve import parse_sizes, plot, point, prefix_file


def test_sizes_take_all_and_refuse_more_than_the_file_has():
    assert parse_sizes("0, 500,all,500", 1200) == [0, 500, 1200]
    with pytest.raises(ValueError, match="has 100 rows"):
        parse_sizes("0,250", 100)


def test_a_prefix_keeps_the_first_rows_and_the_source_manifest(tmp_path: Path):
    extra = tmp_path / "src" / "qa.jsonl"
    extra.parent.mkdir()
    rows = [json.dumps({"qa_id": f"d{i}#a0000"}) for i in range(5)]
    extra.write_text("\n".join(rows) + "\n")
    (extra.parent / "manifest.json").write_text('{"what": "anchored"}')
    path = prefix_file(extra, rows, 3, tmp_path / "extra" / "3")
    assert path.read_text().splitlines() == rows[:3]
    assert json.loads((path.parent / "manifest.json").read_text()) == {"what": "anchored"}


def test_a_point_reads_the_train_stage_and_the_curve_is_drawn(tmp_path: Path):
    for n, (pairs, a1) in {0: (480, 0.30), 900: (1380, 0.34)}.items():
        train = tmp_path / str(n) / "train"
        train.mkdir(parents=True)
        (train / "manifest.json").write_text(json.dumps({
            "result": {"pairs": pairs, "interpolation": 0.5,
                       "dev_map_by_interpolation": {"0.0": 0.29, "0.5": 0.33, "1.0": a1}},
            "pipeline": {"seconds": 612.34}}))
    rows = [point(n, tmp_path / str(n)) for n in (0, 900)]
    assert rows[1] | {"dev_map_by_interpolation": None, "run": None} == {
        "extra rows": 900, "training pairs": 1380, "dev MAP@100 base": 0.29, "dev MAP@100 a=1": 0.34,
        "chosen a": 0.5, "dev MAP@100 chosen": 0.33, "train s": 612.3, "dev_map_by_interpolation": None, "run": None}
    plot(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
