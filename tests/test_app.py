"""The chat handler of app.py, called directly with an injected retriever and generator.

What must hold whatever the UI sends: the scope given to retrieval is cut to the user's allowed
patients; sources are escaped HTML with the cited span marked; a generator failure is a clear chat
message; every question leaves one audit line.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import app
from rag import auth
from rag.audit import AuditLog, read_audit
from rag.corpus import Patient
from rag.llm import LLMUnavailable
from rag.retrieve import Hit, Scope
from rag.ui_render import render_sources
from tests.doubles import FAST_ROUNDS as FAST
from tests.doubles import ListRetriever, ScriptedLLM, make_hit

DOCS = {
    "d1": "Header <script>alert('x')</script>\n# Medications\n<b>metformin</b> 500 mg & lisinopril\n# Plan\nfollow up",
    "d2": "# Medications\nwarfarin 5 mg daily\n",
    "d3": "# Medications\naspirin 81 mg\n",
}
CHUNKS = {  # doc_id -> (patient, cited span)
    "d1": ("p1", "# Medications\n<b>metformin</b> 500 mg & lisinopril"),
    "d2": ("p2", "# Medications\nwarfarin 5 mg daily"),
    "d3": ("p3", "# Medications\naspirin 81 mg"),
}


def _hit(doc_id: str, rank: int = 1) -> Hit:
    patient, span = CHUNKS[doc_id]
    return make_hit(doc_id, patient, span, rank=rank, start=DOCS[doc_id].index(span), chunk_id=f"{doc_id}:0",
                    retriever="hybrid",
                    metadata={"date": "2021-03-04T10:00:00", "doc_type": "Progress note", "section": "Medications"})


class FakeProvider:
    def __init__(self) -> None:
        # every chunk, in CHUNKS order; each call keeps the scope's ones, ranked 1..n, and records the scope
        self.retr = ListRetriever([_hit(d) for d in CHUNKS], name="hybrid", rerank=True)
        self.asked: list[tuple[str, str]] = []

    def retriever(self, embedder: str, kind: str) -> ListRetriever:
        self.asked.append((embedder, kind))
        return self.retr

    def doc_text(self, doc_id: str) -> str | None:
        return DOCS.get(doc_id)


def FakeLLM(deltas=("The patient takes ", "metformin <b>500 mg</b> [1]."), fail: Exception | None = None) -> ScriptedLLM:
    return ScriptedLLM(deltas=deltas, fail=fail, label="fake generator")


PATIENTS = [Patient("p1", "Ann123 Lee45", "1950-02-03", "female"), Patient("p2", "Bob9 Roe1", "1961-01-01", "male"),
            Patient("p3")]


@pytest.fixture
def users(settings) -> Path:
    auth.add_user(settings.users_file, "alice", "alice-password", None, rounds=FAST)
    auth.add_user(settings.users_file, "bob", "bob-password", ["p1"], rounds=FAST)
    return settings.users_file


def _service(settings, llm=None, audit=None) -> app.ChatService:
    return app.ChatService(settings, FakeProvider(), llm or FakeLLM(), PATIENTS, audit=audit)


def _run(service: app.ChatService, patient, scope, user, question="Which medications is this patient on?"):
    turns = list(service.respond(question, [], patient, scope, "hybrid", "me5-small", user))
    assert turns and turns[-1].done
    return turns


def test_restricted_user_cannot_widen_scope(settings, users) -> None:
    service = _service(settings)
    retr = service.provider.retr
    # another patient picked (e.g. a crafted request): nothing is retrieved at all
    turns = _run(service, "p2", app.SCOPE_PATIENT, "bob")
    assert retr.scopes == []
    assert "no access" in turns[-1].history[-1]["content"]
    # "All patients" becomes bob's patients only, inside retrieval
    turns = _run(service, "p2", app.SCOPE_ALL, "bob")
    assert retr.scopes[-1] == Scope(("p1",))
    assert 'data-patient-id="p1"' in turns[-1].sources
    assert "p2" not in turns[-1].sources and "p3" not in turns[-1].sources
    # his own patient works
    _run(service, "p1", app.SCOPE_PATIENT, "bob")
    assert retr.scopes[-1] == Scope.patient("p1")
    # an unrestricted user gets what she asks for
    _run(service, None, app.SCOPE_ALL, "alice")
    assert retr.scopes[-1] == Scope.all()
    _run(service, "p3", app.SCOPE_PATIENT, "alice")
    assert retr.scopes[-1] == Scope.patient("p3")
    # a user name the users file does not know sees nothing
    _run(service, None, app.SCOPE_ALL, "mallory")
    assert retr.scopes[-1] == Scope.patient("p3")  # no new retrieval happened

    lines = read_audit(settings.audit_log)
    assert [(x["user"], x["outcome"]) for x in lines] == [
        ("bob", "denied"), ("bob", "answered"), ("bob", "answered"), ("alice", "answered"), ("alice", "answered"),
        ("mallory", "denied")]
    assert lines[1]["scope"] == ["p1"] and lines[1]["requested_scope"] == "all"
    assert lines[0]["selected_patient"] == "p2" and lines[0]["retrieved"] == []


def test_picker_lists_only_allowed_patients(settings, users) -> None:
    service = _service(settings)
    assert [v for _, v in service.patient_choices("bob")] == ["p1"]
    assert [v for _, v in service.patient_choices("alice")] == ["p1", "p2", "p3"]
    labels = dict((v, k) for k, v in service.patient_choices("alice"))
    assert labels["p1"] == "Ann123 Lee45 (1950) · p1" and labels["p3"] == "p3"


def test_local_mode_without_users_sees_all(settings) -> None:
    service = _service(settings)
    _run(service, None, app.SCOPE_ALL, None)
    assert service.provider.retr.scopes[-1] == Scope.all()
    assert read_audit(settings.audit_log)[-1]["user"] == "local"
    turns = _run(service, None, app.SCOPE_PATIENT, None)
    assert "Pick a patient" in turns[-1].history[-1]["content"]


def test_streams_and_renders_escaped_sources(settings) -> None:
    service = _service(settings)
    turns = _run(service, "p1", app.SCOPE_PATIENT, None)
    streamed = [t.history[-1]["content"] for t in turns if not t.done and t.history[-1]["role"] == "assistant"]
    # the evidence list reaches the chat before any generated text, then the checked sentence below it
    first_evidence = next(i for i, text in enumerate(streamed) if text.startswith("**Evidence from the record**"))
    assert streamed[first_evidence].endswith("**Answer**\n…") and "document d1" in streamed[first_evidence]
    assert any(text.endswith("**Answer**\nThe patient takes metformin <b>500 mg</b> [1].") for text in streamed)
    final = turns[-1]
    assert final.history[-2] == {"role": "user", "content": "Which medications is this patient on?"}
    content = final.history[-1]["content"]
    assert content.startswith("**Evidence from the record**\n1. Ann123 Lee45 (1950) · p1 · 2021-03-04 · Progress note")
    # the sentence kept metformin but not lisinopril, so its evidence is quoted after it, not lost
    answer_part = content.partition("**Answer**\nThe patient takes metformin <b>500 mg</b> [1].\nAlso in the record:\n[1] ")
    assert answer_part[1] and "lisinopril" in answer_part[2]
    html = final.sources
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>" not in html
    assert "<mark># Medications\n&lt;b&gt;metformin&lt;/b&gt; 500 mg &amp; lisinopril</mark>" in html
    assert "cited by the model" in html and 'data-n="1"' in html
    assert "document: d1" in html and "date: 2021-03-04" in html and "type: Progress note" in html
    assert "section: Medications" in html and "Ann123 Lee45 (1950) · p1" in html
    (line,) = read_audit(settings.audit_log)
    assert line["cited"] == [1] and line["retrieved"][0]["chunk_id"] == "d1:0"


def test_overlap_label_and_the_unused_evidence_quoted(settings) -> None:
    service = _service(settings, llm=FakeLLM(deltas=("The medications include warfarin daily dosing.",)))
    turns = _run(service, None, app.SCOPE_ALL, None)
    html = turns[-1].sources
    # the uncited sentence was matched to the evidence that holds it; the evidence it did not use is
    # quoted below it, so the other patients' medication lists are cited as quotes, not lost
    assert html.index('data-doc-id="d2"') < html.index("matched by word overlap") < html.index('data-doc-id="d1"')
    assert html.count("quoted from the record") == 2 and 'data-doc-id="d3"' in html
    assert "Also in the record:" in turns[-1].history[-1]["content"]


def test_uncited_passages_collapsed() -> None:
    from rag.answer import Answer, Citation

    hits = [_hit("d1"), _hit("d2", 2), _hit("d3", 3)]
    answer = Answer(question="q", text="Warfarin daily [2].", citations=[Citation(2, hits[1], "model")], passages=hits,
                    scope=Scope.all(), language="en", retriever="hybrid", embedder="e", generator="g", prompt_version="v")
    html = render_sources(answer, DOCS)
    head, _, collapsed = html.partition("<details")
    assert "not cited (2)" in collapsed
    assert 'data-doc-id="d2"' in head and 'data-doc-id="d1"' in collapsed and 'data-doc-id="d3"' in collapsed


def test_sources_fall_back_when_document_changed() -> None:
    from rag.answer import Answer, Citation

    hit = _hit("d2")
    answer = Answer(question="q", text="t [1]", citations=[Citation(1, hit, "model")], passages=[hit],
                    scope=Scope.all(), language="en", retriever="hybrid", embedder="e", generator="g",
                    prompt_version="v")
    html = render_sources(answer, {"d2": "completely different <i>text</i>"})
    assert "<mark># Medications\nwarfarin 5 mg daily</mark>" in html and "different" not in html


def test_llm_error_is_a_clear_chat_message(settings) -> None:
    llm = FakeLLM(fail=LLMUnavailable("could not reach the generator at http://127.0.0.1:9/v1 after 3 attempts"))
    service = _service(settings, llm=llm)
    turns = _run(service, "p1", app.SCOPE_PATIENT, None)
    text = turns[-1].history[-1]["content"]
    assert "generator is not available" in text and "could not reach" in text
    assert "Traceback" not in text
    (line,) = read_audit(settings.audit_log)
    assert line["outcome"] == "error" and line["error"] == "LLMUnavailable"
    assert "could not reach" not in str(line)


def test_audit_failure_withholds_the_answer(settings, tmp_path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    llm = FakeLLM()
    service = _service(settings, llm=llm, audit=AuditLog(blocker / "audit.jsonl"))
    turns = _run(service, "p1", app.SCOPE_PATIENT, None)
    assert "audit log could not be written" in turns[-1].history[-1]["content"]
    assert llm.calls == 0 and service.provider.retr.scopes == []  # checked before anything is retrieved


def test_build_app_wires_the_ui(settings, users) -> None:
    import gradio as gr

    demo = app.build_app(settings, FakeProvider(), FakeLLM(), PATIENTS, embedders=["me5-small", "minilm"])
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for elem in ("patient-picker", "scope", "retriever", "embedder", "question", "send", "chatbot", "sources", "status"):
        assert elem in ids, elem
    assert isinstance(demo.chat_service, app.ChatService)


def test_abandoned_stream_is_still_audited(settings) -> None:
    service = _service(settings)
    steps = service.respond("Which medications?", [], "p1", app.SCOPE_PATIENT, "hybrid", "me5-small", None)
    for turn in steps:
        if "The patient takes" in turn.history[-1]["content"]:
            break  # the browser closes while the answer streams
    steps.close()
    (line,) = read_audit(settings.audit_log)
    assert line["outcome"] == "cancelled" and line["scope"] == ["p1"]
