"""rag.language: English or German for questions, keywords and short phrases (the committed set),
and for whole notes."""
from __future__ import annotations

import pytest

from rag.config import REPO_ROOT
from rag.language import detect_language

SETS = REPO_ROOT / "data" / "language_id"


def _items(language: str) -> list[str]:
    lines = (SETS / f"questions.{language}.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("language", ["en", "de"])
def test_no_wrong_language_on_the_clinical_question_set(language: str) -> None:
    items = _items(language)
    assert len(items) >= 150
    wrong = [item for item in items if detect_language(item) != language]
    assert wrong == []


@pytest.mark.parametrize("text,language", [
    ("Welche Antibiotika erhielt sie?", "de"), ("Heparin-Dosierung", "de"), ("Beatmungsparameter", "de"),
    ("Was the patient given vancomycin?", "en"), ("vancomycin trough", "en"), ("wound vac dressing", "en"),
    ("12/03 14:00", "en"), ("", "en"),
])
def test_examples_from_the_issue_and_no_letters(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_whole_notes() -> None:
    assert detect_language("Pat. wurde am Vortag bei zunehmender Dyspnoe stationär aufgenommen. "
                           "Die Röntgenaufnahme zeigte beidseitige Pleuraergüsse.") == "de"
    assert detect_language("PT ADMITTED TO CCU FROM THE EW WITH ?LITHIUM TOXICITY. PMH: CHRONIC DEPRESSION.") == "en"
