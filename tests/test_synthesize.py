"""QA synthesis end to end: the real embedded llama.cpp server on two short notes; failure modes
(HTTP 500, malformed bodies, timeouts) against the loopback double; a run killed midway and resumed
loses and repeats nothing; planning, windows and salvage of a cut-off reply."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.qa_schema import ITEM_SCHEMA, QUESTION_TYPES
from finetune.synthesize import (
    FOCI,
    OutputFiles,
    interleave_by_patient,
    load_hints,
    parse_items,
    plan_calls,
    split_windows,
    synthesize_file,
)
from rag.config import REPO_ROOT
from rag.corpus import Document, write_jsonl
from rag.jsonl_log import repair_tail
from tests.openai_double import OpenAIDouble

NOTES = [
    Document("n1", "p1", "Resp care: patient intubated for airway protection. 7.5 ETT taped at 23 cm at the lip. "
             "Suctioned for thick yellow sputum. Started ceftriaxone 2 g daily for pneumonia.", language="en"),
    Document("n2", "p1", "Nursing note: heparin drip at 900 units per hour, PTT 62. Started ceftriaxone 2 g daily "
             "for pneumonia. Foley catheter draining clear yellow urine.", language="en"),
    Document("n3", "p2", "Cardiology: atrial fibrillation with rapid ventricular response, rate 140. Started "
             "ceftriaxone 2 g daily for pneumonia. Diltiazem drip titrated to a heart rate below 100.", language="en"),
    Document("n4", "p3", "Renal: creatinine rose from 1.1 to 2.4 mg/dl after contrast. Started ceftriaxone 2 g "
             "daily for pneumonia. Nephrology consulted, IV fluids at 100 ml per hour.", language="en"),
]
# what the double answers to every call: one good item (its evidence is in every note) and one bad
REPLY = json.dumps({"items": [
    {"question_type": "medication", "evidence": "Started ceftriaxone 2 g daily for pneumonia.",
     "question": "Which antibiotic and dose were started for the pneumonia?", "answer": "Ceftriaxone 2 g daily."},
    {"question_type": "finding", "evidence": "The biopsy showed a glioblastoma.",
     "question": "What did the brain biopsy show in this patient?", "answer": "A glioblastoma."},
]})
NO_DEDUP = ["duplicate", "roundtrip"]


@pytest.fixture
def notes_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.jsonl"
    write_jsonl(NOTES, path)
    return path


@pytest.fixture
def double():
    with OpenAIDouble(text=REPLY) as d:
        yield d


def _settings(settings, **kw):
    return settings.replace(llm_max_retries=kw.pop("retries", 2), llm_timeout_s=kw.pop("timeout", 5.0), **kw)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _docs_requested(double: OpenAIDouble, docs=NOTES) -> list[str]:
    out = []
    for r in double.chat_requests:
        if not isinstance(r["body"], dict):  # cut off by the kill while being sent
            continue
        text = r["body"]["messages"][-1]["content"]
        out += [n.doc_id for n in docs if "<<<\n" + n.text[:40] in text]
    return out


# --------------------------------------------------------------------------------------------
# pure parts


def test_split_windows_cuts_at_paragraphs_and_covers_the_text():
    text = "\n\n".join(f"Section {i}: " + "word " * 60 for i in range(6))
    spans = split_windows(text, 800)
    assert len(spans) > 1 and all(b - a <= 800 for a, b in spans)
    assert all(text[a:b].startswith("Section") for a, b in spans)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert split_windows("short note", 800) == [(0, 10)]
    assert all(b - a <= 50 for a, b in split_windows("x" * 500, 50))  # no break at all: hard cuts


def test_plan_calls_rotates_focus_and_spreads_over_windows():
    doc = NOTES[0]
    calls = plan_calls(doc, per_doc=8, per_call=3, window_chars=10_000, seed=0)
    assert [c.n for c in calls] == [3, 3, 2] and all(c.window is None for c in calls)
    assert len({c.focus for c in calls}) == 3 and {c.focus for c in calls} <= set(FOCI)
    assert len({c.seed for c in calls}) == 3
    assert [c.seed for c in plan_calls(doc, per_doc=8, per_call=3, window_chars=10_000, seed=0)] == [c.seed for c in calls]
    assert [c.seed for c in plan_calls(doc, per_doc=8, per_call=3, window_chars=10_000, seed=1)] != [c.seed for c in calls]
    long_doc = Document("long", "p", "\n\n".join("Paragraph about findings. " * 8 for _ in range(10)), language="en")
    calls = plan_calls(long_doc, per_doc=6, per_call=6, window_chars=500, seed=0)
    assert sum(c.n for c in calls) == 6 and len({c.window for c in calls}) == len(calls) > 1


def test_parse_items_salvages_a_cut_off_reply():
    items, complete = parse_items(REPLY)
    assert complete and len(items) == 2
    cut = REPLY[: REPLY.index("glioblastoma.\"") + 5]
    items, complete = parse_items(cut)
    assert not complete and len(items) == 1 and items[0]["answer"] == "Ceftriaxone 2 g daily."
    assert parse_items("not json at all") == ([], False)
    assert parse_items("```json\n" + REPLY + "\n```")[0][0]["question_type"] == "medication"


def test_hints_and_prompts_are_versioned_files():
    for lang in ("en", "de"):
        hints = load_hints(lang)
        assert hints.version.startswith("qa-hints-") and set(FOCI) <= set(hints.focus)
    from rag.prompts import load_prompt

    assert load_prompt("qa_generate", "de").version == "qa-generate-de-1"
    assert "{document}" in load_prompt("qa_generate", "en").user


def test_interleave_and_repair_tail(tmp_path: Path):
    assert [d.doc_id for d in interleave_by_patient(NOTES)] == ["n1", "n3", "n4", "n2"]
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert repair_tail(p) == len(b'{"c": ') and p.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert repair_tail(p) == 0


# --------------------------------------------------------------------------------------------
# against the loopback double


def test_run_writes_records_manifest_and_drop_reasons(notes_file, tmp_path, double, settings):
    out = tmp_path / "run" / "qa.jsonl"
    m = synthesize_file(notes_file, out, per_doc=2, endpoints=[double.base_url], model="double", concurrency=2,
                        settings=_settings(settings), progress=False, roundtrip="bm25")
    rows = _lines(out)
    assert len(rows) == 1
    r = rows[0]
    for key in ("qa_id", "doc_id", "patient_id", "question", "answer", "evidence", "question_type", "language",
                "generator", "prompt_version"):
        assert r[key], key
    assert r["generator"] == "double" and r["prompt_version"] == "qa-generate-en-1+qa-hints-en-1"
    assert r["verdicts"]["evidence_score"] == 100.0 and r["verdicts"]["roundtrip_k"] == 2
    t = m["totals"]
    assert t["documents_done"] == 4 and t["kept"] == 1 and t["candidates"] == 8
    # the invented quote fails everywhere; the good question survives once (later copies are corpus
    # duplicates, or fail the round-trip where all four notes share the sentence)
    assert t["drop_reasons"]["evidence"] == 4 and t["dropped"] == 7
    assert set(t["drop_reasons"]) <= {"evidence", "duplicate", "roundtrip"}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["totals"] == t and manifest["inputs"][0]["sha256"] and manifest["parameters"]["per_doc"] == 2
    assert manifest["generator"]["endpoints"] == [double.base_url]
    assert len(_lines(OutputFiles.for_output(out).rejected)) == 7
    # every request asked for a JSON schema and carried a fixed seed
    bodies = [q["body"] for q in double.chat_requests]
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    assert len({b["seed"] for b in bodies}) == 4
    evidence_enum = bodies[0]["response_format"]["json_schema"]["schema"]["properties"]["items"]["items"]
    assert "Started ceftriaxone 2 g daily for pneumonia." in evidence_enum["properties"]["evidence"]["enum"]
    # nothing left: a rerun sends nothing and changes nothing
    double.reset()
    m2 = synthesize_file(notes_file, out, per_doc=2, endpoints=[double.base_url], model="double",
                         settings=_settings(settings), progress=False)
    assert double.count == 0 and m2["documents_skipped_as_done"] == 4 and _lines(out) == rows
    assert len(m2["runs"]) == 2


def test_http_500_and_malformed_bodies_are_retried(notes_file, tmp_path, double, settings):
    double.set("http_error", status=500, fail_times=2, text=REPLY)
    out = tmp_path / "qa.jsonl"
    m = synthesize_file(notes_file, out, per_doc=2, endpoints=[double.base_url], model="double", concurrency=1,
                        settings=_settings(settings, retries=3), progress=False, skip_filters=NO_DEDUP, limit=2)
    assert m["totals"]["kept"] == 2 and double.count == 4  # 2 failures + 2 good answers
    double.set("malformed", text=REPLY)
    out2 = tmp_path / "qa2.jsonl"
    m = synthesize_file(notes_file, out2, per_doc=2, endpoints=[double.base_url], model="double", concurrency=1,
                        settings=_settings(settings, retries=1), progress=False, skip_filters=NO_DEDUP, limit=1)
    assert m["this_run"]["documents_failed"] == 1 and m["totals"]["documents_done"] == 0
    assert double.count == 2  # one retry, then the document is left undone (not marked, not lost)
    double.set("ok", text=REPLY)
    m = synthesize_file(notes_file, out2, per_doc=2, endpoints=[double.base_url], model="double",
                        settings=_settings(settings), progress=False, skip_filters=NO_DEDUP, limit=1)
    assert m["totals"]["documents_done"] == 1 and m["totals"]["kept"] == 1


def test_timeouts_leave_documents_undone_and_a_rerun_finishes_them(notes_file, tmp_path, double, settings):
    double.set("hang", hang_s=3.0, text=REPLY)
    out = tmp_path / "qa.jsonl"
    m = synthesize_file(notes_file, out, per_doc=2, endpoints=[double.base_url], model="double", concurrency=4,
                        settings=_settings(settings, retries=0, timeout=0.5), progress=False, skip_filters=NO_DEDUP)
    assert m["this_run"]["documents_failed"] == 4 and not out.exists() or _lines(out) == []
    double.set("ok", text=REPLY)
    m = synthesize_file(notes_file, out, per_doc=2, endpoints=[double.base_url], model="double",
                        settings=_settings(settings), progress=False, skip_filters=NO_DEDUP)
    assert m["totals"]["documents_done"] == 4 and m["totals"]["kept"] == 4
    assert sorted(r["doc_id"] for r in _lines(out)) == ["n1", "n2", "n3", "n4"]


def test_several_endpoints_share_the_requests(notes_file, tmp_path, double, settings):
    with OpenAIDouble(text=REPLY) as second:
        synthesize_file(notes_file, tmp_path / "qa.jsonl", per_doc=2, endpoints=[double.base_url, second.base_url],
                        model="double", concurrency=2, settings=_settings(settings), progress=False,
                        skip_filters=NO_DEDUP)
        assert double.count + second.count == 4 and double.count >= 1 and second.count >= 1


def test_killed_run_resumes_without_redoing_or_losing_work(tmp_path, double, settings):
    """A real kill -9 of the CLI midway, then a second run: every document done exactly once."""
    docs = NOTES + [Document(f"{n.doc_id}b", n.patient_id, "Follow-up. " + n.text, language="en") for n in NOTES]
    ids = {d.doc_id for d in docs}
    notes_file = tmp_path / "notes8.jsonl"
    write_jsonl(docs, notes_file)
    double.set("hang", hang_s=0.5, text=REPLY)  # slow but good answers
    out = tmp_path / "qa.jsonl"
    files = OutputFiles.for_output(out)
    env = {**os.environ, "CRAG_LLM_TIMEOUT_S": "10", "CRAG_HOME": str(settings.home), "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "finetune.synthesize", "--in", str(notes_file), "--out", str(out), "--per-doc", "2",
           "--endpoint", double.base_url, "--model", "double", "--concurrency", "1", "--no-progress",
           "--skip-filter", "duplicate", "--skip-filter", "roundtrip"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if files.progress.exists() and len(_lines(files.progress)) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("no progress within 60 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = {r["doc_id"] for r in _lines(files.progress)}
    assert 2 <= len(first) < len(docs)
    requested_first = set(_docs_requested(double, docs))
    double.set("ok", text=REPLY)
    m = synthesize_file(notes_file, out, per_doc=2, endpoints=[double.base_url], model="double",
                        settings=_settings(settings), progress=False, skip_filters=NO_DEDUP)
    second = _docs_requested(double, docs)
    assert not set(second) & first  # nothing redone
    assert set(second) | first == ids  # nothing lost
    rows = _lines(out)
    assert sorted(r["doc_id"] for r in rows) == sorted(ids)  # one kept pair each, none twice
    assert len({r["qa_id"] for r in rows}) == len(ids)
    assert m["totals"]["documents_done"] == len(ids) and m["documents_skipped_as_done"] == len(first)
    assert requested_first >= first


# --------------------------------------------------------------------------------------------
# the real embedded generator


@pytest.mark.slow
def test_embedded_server_generates_grounded_pairs(tmp_path, settings):
    docs = [
        Document("e1", "pa", "Discharge summary. Diagnosis: community-acquired pneumonia of the right lower lobe. "
                 "Treated with ceftriaxone 2 g daily for 7 days. Chest x-ray showed a right lower lobe infiltrate.",
                 language="en"),
        Document("e2", "pb", "Arztbrief. Diagnose: Diabetes mellitus Typ 2. HbA1c 8,1 %. Metformin 1000 mg "
                 "zweimal täglich wird fortgeführt. Kontrolle in drei Monaten beim Hausarzt.", language="de"),
    ]
    path = tmp_path / "docs.jsonl"
    write_jsonl(docs, path)
    out = tmp_path / "qa.jsonl"
    m = synthesize_file(path, out, per_doc=1, generator="smollm2", concurrency=2, settings=settings.replace(
        llm_threads=1, llm_ctx=2048), progress=False, roundtrip="none", skip_filters=["answer", "length", "language"])
    assert m["generator"]["model"] == "smollm2-135m-instruct" and m["totals"]["documents_done"] == 2
    assert m["this_run"]["calls"] == 2 and m["this_run"]["completion_tokens"] > 0
    rejected = _lines(OutputFiles.for_output(out).rejected)
    produced = _lines(out) + [r for r in rejected if r["drop_reason"] != "truncated"]
    assert produced, "the generator produced no items at all"
    import jsonschema

    text = {d.doc_id: d.text for d in docs}
    for r in produced:
        jsonschema.validate({k: r[k] for k in ("question_type", "evidence", "question", "answer")}, ITEM_SCHEMA)
        assert r["question_type"] in QUESTION_TYPES
        assert r["evidence"] in text[r["doc_id"]]  # the enum schema makes every quote verbatim
    for r in _lines(out):
        assert r["verdicts"]["evidence_score"] == 100.0 and r["generator"] == "smollm2-135m-instruct"


# --------------------------------------------------------------------------------------------
# anchored synthesis (finetune.anchors): the passage first, one short call per passage


def test_anchors_are_the_specific_passages_in_note_order():
    from finetune.anchors import pick_anchors, rare_terms

    note = ("Patient resting comfortably in bed. Vancomycin trough 15.2 this morning. Spoke with Harold about "
            "the plan. Wound vac dressing changed, no drainage. Patient resting comfortably in bed, family in.")
    anchors = pick_anchors(note, 5)
    assert anchors == ["Vancomycin trough 15.2 this morning.", "Wound vac dressing changed, no drainage."]
    assert pick_anchors(note, 1) == ["Vancomycin trough 15.2 this morning."]  # most new rare words first
    assert "harold" not in rare_terms("Spoke with Harold about the plan.")  # a Title-case name is no anchor
    assert "vancomycin" in rare_terms("VANCOMYCIN TROUGH 15.2")  # capitals (nursing notes) are words
    german = "Patientin wach und orientiert. Heparin-Perfusor mit 1000 IE pro Stunde, PTT 62 Sekunden. Alles gut."
    assert pick_anchors(german, 3, "de") == ["Heparin-Perfusor mit 1000 IE pro Stunde, PTT 62 Sekunden."]


ANCHORED_REPLY = json.dumps({"items": [
    {"question_type": "medication", "question": "ceftriaxone dose for pneumonia",
     "answer": "Ceftriaxone 2 g daily was started for pneumonia."}]})


def test_anchored_run_asks_one_question_per_passage_and_keeps_the_passage_as_evidence(notes_file, tmp_path,
                                                                                        settings):
    from finetune.anchors import pick_anchors

    out = tmp_path / "anchored" / "qa.jsonl"
    with OpenAIDouble(text=ANCHORED_REPLY) as double:
        m = synthesize_file(notes_file, out, per_doc=2, endpoints=[double.base_url], model="double", concurrency=2,
                            settings=_settings(settings), progress=False, roundtrip="none",
                            skip_filters=["duplicate", "near_duplicate"], anchored=True)
        bodies = [q["body"] for q in double.chat_requests]
    expected = {n.doc_id: pick_anchors(n.text, 2) for n in NOTES}
    assert len(bodies) == sum(len(a) for a in expected.values()) == m["this_run"]["calls"]
    for body in bodies:
        prompt = body["messages"][-1]["content"]
        assert any(prompt.endswith("Passage: " + a) for a in sum(expected.values(), []))  # rules first, passage last
        assert body["max_tokens"] <= 100
        item = body["response_format"]["json_schema"]["schema"]["properties"]["items"]
        assert item["maxItems"] == 1 and "evidence" not in item["items"]["properties"]
    rows = _lines(out)
    assert rows and all(r["evidence"] in expected[r["doc_id"]] for r in rows)
    assert {r["prompt_version"] for r in rows} == {"qa-anchor-en-2+qa-hints-en-1"}
    assert all(r["focus"] == "anchor" for r in rows) and m["parameters"]["anchored"] is True
    assert all(r["qa_id"].startswith(r["doc_id"] + "#a") for r in rows)  # never the id of a whole-note question


@pytest.mark.slow
def test_embedded_server_answers_anchored_calls(tmp_path, settings):
    doc = Document("a1", "pa", "Resp care: patient intubated for airway protection. Vancomycin trough 15.2 this "
                   "morning, dose held. Wound vac dressing changed, no drainage.", language="en")
    path = tmp_path / "docs.jsonl"
    write_jsonl([doc], path)
    out = tmp_path / "qa.jsonl"
    m = synthesize_file(path, out, per_doc=2, generator="smollm2", concurrency=1, settings=settings.replace(
        llm_threads=1, llm_ctx=2048), progress=False, roundtrip="none", skip_filters=["answer", "length", "language"],
        anchored=True)
    assert m["this_run"]["calls"] == 2 and m["this_run"]["completion_tokens"] > 0
    produced = _lines(out) + [r for r in _lines(OutputFiles.for_output(out).rejected) if r["drop_reason"] != "truncated"]
    assert produced and all(r["evidence"] in doc.text and r["question"] for r in produced)
