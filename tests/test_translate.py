"""Translation: German documents into English (layout kept by construction, surrogate/number preservation
measured, resumable) and English questions into German (round trip checked); against the loopback
double and (slow) the real embedded generator."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.translate import (
    keep_tokens,
    preserved_share,
    question_problem,
    split_pieces,
    translate_file,
    translate_questions,
)
from rag.corpus import Document, write_jsonl
from tests.openai_double import OpenAIDouble

LETTER = ("Sehr geehrte Frau Kollegin,\nwir berichten über Frau Beate Albers (* 04.04.1997).\n\n"
          "Diagnosen:\n- Pneumonie rechts basal\n- Diabetes mellitus Typ 2, HbA1c 8,1 %\n\n"
          "Therapie: Ceftriaxon 2 g i.v. 1-0-0 für 7 Tage.\n\nMit freundlichen Grüßen\nDr. med. K. Berger")
DOCS = [
    Document("g1", "g1", LETTER, language="de",
             extra={"phi": [{"start": 58, "end": 70, "label": "NAME_PATIENT", "text": "Beate Albers"}]}),
    Document("g2", "g2", "Kurzbrief.\n\nBefund: Fraktur des Radius links, Gips für 6 Wochen.", language="de"),
    Document("e1", "e1", "An English note that is not translated.", language="en"),
]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def docs_file(tmp_path: Path) -> Path:
    path = tmp_path / "de.jsonl"
    write_jsonl(DOCS, path)
    return path


def test_split_pieces_joins_back_exactly():
    for max_chars in (20, 60, 1500):
        pieces = split_pieces(LETTER, max_chars)
        assert "".join(p + s for p, s in pieces) == LETTER
        assert all(len(p) <= max_chars for p, _ in pieces)
    assert len(split_pieces(LETTER, 1500)) == 1
    assert len(split_pieces(LETTER, 60)) >= 4


def test_keep_tokens_and_preserved_share():
    tokens = keep_tokens(DOCS[0])
    assert {"04.04.1997", "8,1", "1-0-0", "Beate", "Albers"} <= set(tokens)
    good = "Dear colleague, we report on Ms Beate Albers (* 04.04.1997) ... HbA1c 8,1 % ... 2 g 1-0-0 for 7 days"
    assert preserved_share(tokens, good) > preserved_share(tokens, "Dear colleague, we report on a patient.")
    assert preserved_share([], "anything") == 1.0


def test_translate_through_the_double_is_resumable(docs_file, tmp_path, settings):
    out = tmp_path / "en" / "docs.jsonl"
    with OpenAIDouble(text="Findings: fracture of the left radius, cast for 6 weeks.") as double:
        m = translate_file(docs_file, out, endpoints=[double.base_url], model="double", settings=settings,
                           progress=False, piece_chars=60)
        rows = _rows(out)
        assert sorted(r["doc_id"] for r in rows) == ["g1", "g2"]  # the English note is left alone
        assert all(r["language"] == "en" for r in rows)
        g1 = next(r for r in rows if r["doc_id"] == "g1")
        n_pieces = len([p for p, _ in split_pieces(LETTER, 60) if p.strip()])
        assert g1["text"].count("Findings:") == n_pieces  # one call per piece, separators kept
        assert g1["text"].count("\n\n") == LETTER.count("\n\n")
        info = g1["extra"]["translation"]
        assert info["prompt_version"] == "translate-de-1" and info["preserved_share"] < 0.5 and info["missing"]
        body = double.chat_requests[0]["body"]
        assert "German clinical document" in body["messages"][1]["content"] and body["temperature"] == 0.0
        assert m["totals"]["documents_translated"] == 2 and (out.parent / "manifest.json").is_file()
        double.reset()
        m2 = translate_file(docs_file, out, endpoints=[double.base_url], model="double", settings=settings,
                            progress=False)
        assert double.count == 0 and m2["this_run"]["skipped_as_done"] == 2 and _rows(out) == rows


def test_failed_documents_are_not_written_and_retried(docs_file, tmp_path, settings):
    out = tmp_path / "docs.jsonl"
    with OpenAIDouble("http_error", status=500, text="translated") as double:
        m = translate_file(docs_file, out, endpoints=[double.base_url], model="double",
                           settings=settings.replace(llm_max_retries=0), progress=False)
        assert m["this_run"]["failed"] == 2 and m["totals"]["documents_translated"] == 0
        double.set("ok", text="translated")
        m = translate_file(docs_file, out, endpoints=[double.base_url], model="double", settings=settings,
                           progress=False)
        assert m["totals"]["documents_translated"] == 2


@pytest.mark.slow
def test_embedded_generator_translates_keeping_the_layout(tmp_path, settings):
    path = tmp_path / "de.jsonl"
    write_jsonl([DOCS[1]], path)
    out = tmp_path / "en.jsonl"
    m = translate_file(path, out, generator="smollm2", concurrency=1, progress=False,
                       settings=settings.replace(llm_threads=1, llm_ctx=2048), piece_chars=60)
    row = _rows(out)[0]
    assert m["generator"]["model"] == "smollm2-135m-instruct"
    assert row["text"].count("\n\n") == 1 and all(part.strip() for part in row["text"].split("\n\n"))
    assert row["extra"]["translation"]["keep_tokens"] == 1  # "6"


# --- questions (English -> German query sets) ---------------------------------------------------

QUESTIONS = ["Which antiemetic was given for nausea?", "What was the blood pressure in the cath lab?",
             "How is the sacral wound healing?", "When was the chest tube removed?",
             "What insulin dose is on the sliding scale?", "Who is the health care proxy?",
             "What did the head CT show?"]


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    rows = [{"qa_id": f"d{i}#q0", "doc_id": f"d{i}", "patient_id": f"p{i}", "question": q, "answer": "a",
             "language": "en"} for i, q in enumerate(QUESTIONS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_questions_are_translated_checked_by_round_trip_and_resumable(qa_file, tmp_path, settings):
    out = tmp_path / "qa.de.jsonl"
    # the double answers every question with the same German question about nausea: only where the
    # source is about nausea (or one of its nearest sources) does the round trip keep it
    with OpenAIDouble(text="German: Welches Antiemetikum wurde gegen die Übelkeit gegeben?") as double:
        m = translate_questions(qa_file, out, endpoints=[double.base_url], model="double", settings=settings,
                                progress=False)
        kept = _rows(out)
        assert "d0#q0@de" in {r["qa_id"] for r in kept}
        assert len(kept) <= 3 and m["totals"]["dropped"] == {"round_trip": len(QUESTIONS) - len(kept)}
        row = next(r for r in kept if r["qa_id"] == "d0#q0@de")
        assert row["question"] == "Welches Antiemetikum wurde gegen die Übelkeit gegeben?"  # label stripped
        assert row["language"] == "de" and row["source_qa_id"] == "d0#q0" and row["doc_id"] == "d0"
        assert row["translation"]["source_question"] == QUESTIONS[0]
        assert row["translation"]["prompt_version"].startswith("translate-question-en")
        assert "<<<\n" + QUESTIONS[0] in double.chat_requests[0]["body"]["messages"][1]["content"]
        double.reset()
        again = translate_questions(qa_file, out, endpoints=[double.base_url], model="double", settings=settings,
                                    progress=False)
        assert double.count == 0 and again["this_run"]["skipped_as_done"] == len(QUESTIONS)  # dropped ones too


def test_question_problems():
    assert question_problem("What is the INR?", "Wie hoch ist der INR heute?", "de") is None
    assert question_problem("What is the INR?", "What is the INR?", "de") == "copied"
    assert question_problem("What is the INR?", "What is the INR today?", "de") == "language"
    assert question_problem("What is the INR?", "", "de") == "empty"
