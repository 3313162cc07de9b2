"""Gradio chat for clinicians: grounded answers about one patient or across patients, with sources.

    python app.py [--host 127.0.0.1] [--port 7860] [--corpus synthea] [--embedder me5-small] [--limit N]

Thin by design: the UI lives here, everything else in ``rag/`` (scoped retrieval, the answer
pipeline, the generator client, users and the audit log).

Start-up order, cheapest check first:

1. the login rule (``rag.auth.require_login``): binding beyond loopback with no users configured
   refuses to start before anything heavy is loaded; with users configured, login is required on
   every host;
2. the audit log must be writable (answers are only given when they can be audited);
3. the corpus is loaded and its index built or brought up to date (progress bar in the terminal);
4. the generator starts (the embedded llama.cpp server, or a client for ``CRAG_LLM_BASE_URL``);
5. the server listens.

Access control is enforced where retrieval happens, not only in the UI: the scope the UI asks for is
intersected with the user's allowed patients (``Scope.restrict_to``) before it reaches the retriever.
Every question writes one audit line (``rag.audit``); if that fails, the answer is withheld.
"""
import argparse
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import rag  # noqa: F401  (offline environment before any library loads)
from rag.audit import AuditError, AuditLog
from rag.auth import allowed_patients as user_allowed_patients
from rag.auth import require_login, verify
from rag.config import Settings, configured_values, load_settings
from rag.language import detect_language
from rag.retrieve import Scope, make_retriever

if TYPE_CHECKING:
    import gradio as gr

    from rag.corpus import Corpus, Patient
    from rag.retrieve import Retriever

log = logging.getLogger("app")

TITLE = "Clinical RAG: ask the patient record"
SCOPE_PATIENT = "This patient"
SCOPE_ALL = "All patients"
RETRIEVER_CHOICES = ("hybrid", "dense", "bm25")
LOCAL_USER = "local"


# --------------------------------------------------------------------------------------------
# Indexes and retrievers, one per embedder, built on first use


class IndexProvider:
    """Opens (building or updating where needed) one index per embedder over the app's corpus and
    caches the retrievers made from it. Thread-safe: two sessions switching to the same new
    embedder build its index once."""

    def __init__(self, settings: Settings, corpus: "Corpus", progress: bool = True) -> None:
        self.settings = settings
        self.corpus = corpus
        self.progress = progress
        self._docs = corpus.by_id()
        self._indexes: dict[str, Any] = {}
        self._retrievers: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()
        self._labels: dict[str, str] | None = None

    # -- embedders
    def embedder_choices(self) -> list[str]:
        from rag.embedders import available_embedders

        names = list(available_embedders(self.settings))
        if self.settings.embedder not in names:
            names.insert(0, self.settings.embedder)  # a local folder given by path
        return names

    def label(self, name: str) -> str:
        if name in self._indexes:
            return self._indexes[name].embedder.label
        if self._labels is None:
            from rag.embedders import describe_embedders

            self._labels = {row["name"]: row["label"] for row in describe_embedders(self.settings)}
        return self._labels.get(name, name)

    # -- indexes
    def index(self, embedder: str) -> Any:
        with self._lock:
            if embedder not in self._indexes:
                from rag.index import build_index

                t0 = time.perf_counter()
                index, report = build_index(self.corpus, embedder, self.settings, progress=self.progress)
                log.info("index %s ready in %.1f s: %s", embedder, time.perf_counter() - t0, report.summary())
                print(f"[app] {report.summary()}", flush=True)
                self._indexes[embedder] = index
            return self._indexes[embedder]

    def chunk_count(self, embedder: str) -> int | None:
        index = self._indexes.get(embedder)
        return index.count() if index is not None else None

    def retriever(self, embedder: str, kind: str) -> "Retriever":
        if kind not in RETRIEVER_CHOICES:
            raise ValueError(f"unknown retriever {kind!r}; choose one of {', '.join(RETRIEVER_CHOICES)}")
        with self._lock:
            key = (embedder, kind)
            if key not in self._retrievers:  # vectors and BM25 are cached on the index: shared by all kinds
                self._retrievers[key] = make_retriever(kind, self.index(embedder))
            return self._retrievers[key]

    # -- documents
    def doc_text(self, doc_id: str) -> str | None:
        doc = self._docs.get(doc_id)
        return doc.text if doc is not None else None

    def counts(self) -> dict[str, int]:
        return {"documents": len(self.corpus.documents), "patients": len(self.corpus.patients())}


# --------------------------------------------------------------------------------------------
# The chat logic, free of Gradio so tests call it directly


def patient_label(patient: "Patient") -> str:
    """``Name (birth year) · id[:8]``; the id alone where the corpus has no names."""
    short = patient.patient_id[:8]
    if not patient.name:
        return patient.patient_id
    year = f" ({patient.birth_date[:4]})" if patient.birth_date else ""
    return f"{patient.name}{year} · {short}"


@dataclass
class Turn:
    """What one chat step shows: the history (Gradio ``messages`` format) and the sources panel."""

    history: list[dict[str, Any]]
    sources: str
    done: bool = False


@dataclass
class ChatService:
    """Scope resolution, access control, answer streaming, audit, rendering. One per app."""

    settings: Settings
    provider: Any  # IndexProvider or a test double with .retriever(embedder, kind) and .doc_text(doc_id)
    llm: Any  # rag.llm.LLMClient (or a double with .describe() and .stream(messages, ...))
    patients: list["Patient"] = field(default_factory=list)
    audit: AuditLog | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        if self.audit is None:
            self.audit = AuditLog.from_settings(self.settings)
        if self.k is None:
            self.k = self.settings.top_k
        self._by_id = {p.patient_id: p for p in self.patients}

    # -- users and patients
    def allowed(self, user: str | None) -> list[str] | None:
        return user_allowed_patients(self.settings.users_file, user)

    def patient_choices(self, user: str | None) -> list[tuple[str, str]]:
        allowed = self.allowed(user)
        visible = [p for p in self.patients if allowed is None or p.patient_id in set(allowed)]
        return [(patient_label(p), p.patient_id) for p in visible]

    def label_of(self, patient_id: str) -> str:
        p = self._by_id.get(patient_id)
        return patient_label(p) if p is not None else patient_id

    def resolve_scope(self, user: str | None, patient_id: str | None, scope_choice: str) -> tuple[Scope, Scope]:
        """(requested scope, effective scope): the effective one is cut to the user's patients."""
        if scope_choice == SCOPE_ALL:
            requested = Scope.all()
        else:
            requested = Scope.patient(patient_id) if patient_id else Scope.of([])
        return requested, requested.restrict_to(self.allowed(user))

    # -- the chat step
    def respond(
        self,
        message: str,
        history: list[dict[str, Any]] | None,
        patient_id: str | None,
        scope_choice: str,
        retriever_kind: str,
        embedder: str,
        user: str | None = None,
    ) -> Iterator[Turn]:
        from rag.ui_render import evidence_cards_html, evidence_markdown, message_html, render_sources

        user = user or LOCAL_USER
        question = (message or "").strip()
        history = [dict(m) for m in (history or [])]
        if not question:
            yield Turn(history, message_html("Type a question first."), done=True)
            return
        history.append({"role": "user", "content": question})
        history.append({"role": "assistant", "content": "…"})

        def say(text: str, sources: str = "", done: bool = True) -> Turn:
            history[-1] = {"role": "assistant", "content": text}
            return Turn(list(history), sources, done=done)

        base = dict(user=user, selected_patient=patient_id or None, question=question,
                    retriever=retriever_kind, embedder=embedder, generator=self._generator_name())

        def audit_failed(exc: AuditError) -> Turn:
            log.error("audit write failed: %s", exc)
            return say(f"⚠ The audit log could not be written ({exc}). Answers are only given when they "
                       "can be audited, so this one was withheld. Tell your administrator.",
                       message_html("Withheld: audit log unavailable.", "error"))

        try:
            self.audit.check()
        except AuditError as exc:
            yield audit_failed(exc)
            return

        requested, scope = self.resolve_scope(user, patient_id, scope_choice)
        if scope.patients is not None and not scope.patients:
            if requested.patients is not None and not requested.patients:
                text = "Pick a patient first, or switch the scope to “All patients”."
                outcome = "no_patient"
            else:
                text = "You have no access to this patient's record. Nothing was retrieved."
                outcome = "denied"
            try:
                self.audit.record(scope=scope, requested_scope=requested, outcome=outcome, **base)
            except AuditError as exc:
                yield audit_failed(exc)
                return
            yield say(text, message_html(text, "warning"))
            return

        yield Turn(list(history), message_html(f"Searching {scope.describe()}…"), done=False)
        answer = None
        error: str | None = None
        shown: list[str] = []
        evidence_text = ""
        evidence_panel = message_html("Writing the answer…")
        try:
            from rag.answer import Answer, AnswerPipeline
            from rag.evidence import EvidenceSet

            retriever = self.provider.retriever(embedder, retriever_kind)
            pipeline = AnswerPipeline(retriever, self.llm, k=self.k or 5, embedder=embedder)
            for event in pipeline.stream(question, scope):
                if isinstance(event, Answer):
                    answer = event
                elif isinstance(event, EvidenceSet):  # shown at once, before any generation
                    evidence_text = evidence_markdown(event, self.label_of, detect_language(question))
                    evidence_panel = evidence_cards_html(event, self.provider.doc_text, self.label_of)
                    yield say(_compose(evidence_text, "…"), evidence_panel, done=False)
                else:
                    shown.append(event)
                    yield say(_compose(evidence_text, "".join(shown)), evidence_panel, done=False)
        except GeneratorExit:  # the browser went away mid-answer: still one audit line for the question
            try:
                self.audit.record(scope=scope, requested_scope=requested, outcome="cancelled", **base)
            except AuditError as exc:
                log.error("audit write failed: %s", exc)
            raise
        except Exception as exc:  # noqa: BLE001  (shown as a message, never as a traceback)
            error = type(exc).__name__
            text = self._error_text(exc)
            try:
                self.audit.record(scope=scope, requested_scope=requested, outcome="error", error=error, **base)
            except AuditError as audit_exc:
                yield audit_failed(audit_exc)
                return
            yield say(text, message_html("No answer: see the message in the chat.", "error"))
            return

        assert answer is not None, "the answer pipeline ended without an Answer"
        try:
            self.audit.record(answer=answer, scope=scope, requested_scope=requested, outcome="answered",
                              user=user, selected_patient=patient_id or None, question=question)
        except AuditError as exc:
            yield audit_failed(exc)
            return
        sources = render_sources(answer, self.provider.doc_text, self.label_of)
        yield say(_compose(evidence_text, answer.text or "(empty answer)", answer.language), sources)

    def _generator_name(self) -> str:
        try:
            return self.llm.describe()
        except Exception:  # noqa: BLE001
            return type(self.llm).__name__

    @staticmethod
    def _error_text(exc: Exception) -> str:
        from rag.llm import LLMError
        from rag.retrieve import ScopeViolation

        if isinstance(exc, LLMError):
            return (f"⚠ The answer generator is not available right now: {exc}\n\n"
                    "Nothing was answered. Try again in a moment; if it persists, tell your administrator.")
        if isinstance(exc, ScopeViolation):
            log.error("scope violation: %s", exc)
            return ("⚠ Retrieval returned a passage outside the allowed scope, so the answer was withheld. "
                    "This is a bug; it has been logged.")
        log.exception("chat step failed")
        return f"⚠ Something went wrong ({type(exc).__name__}); details are in the server log. Nothing was answered."


# --------------------------------------------------------------------------------------------
# The Gradio UI


def _compose(evidence: str, answer: str, language: str = "en") -> str:
    """The chat message: the evidence list first, the (checked) answer below it."""
    if not evidence:
        return answer
    title = "Antwort" if language == "de" else "Answer"
    return f"{evidence}\n\n**{title}**\n{answer}"


def _username(request: Any) -> str:
    name = getattr(request, "username", None) if request is not None else None
    return name or LOCAL_USER


def status_line(service: ChatService, embedder: str, user: str | None = None) -> str:
    provider = service.provider
    label = provider.label(embedder) if hasattr(provider, "label") else embedder
    parts = [f"**Generator:** {service._generator_name()}", f"**Embedder:** {label}"]
    if hasattr(provider, "counts"):
        counts = provider.counts()
        chunks = provider.chunk_count(embedder) if hasattr(provider, "chunk_count") else None
        corpus = getattr(getattr(provider, "corpus", None), "name", service.settings.corpus)
        text = f"**Corpus:** {corpus}, {counts['documents']} documents, {counts['patients']} patients"
        if chunks is not None:
            text += f", {chunks} chunks"
        parts.append(text)
    if user and user != LOCAL_USER:
        allowed = service.allowed(user)
        parts.append(f"**Signed in as** {user} ({'all patients' if allowed is None else f'{len(allowed)} patient(s)'})")
    return " · ".join(parts)


def build_app(
    settings: Settings,
    provider: Any,
    llm: Any,
    patients: Sequence["Patient"] = (),
    *,
    audit: AuditLog | None = None,
    embedders: Sequence[str] | None = None,
) -> "gr.Blocks":
    """The Blocks UI around a :class:`ChatService`; ``demo.chat_service`` gives tests the service."""
    import gradio as gr

    service = ChatService(settings, provider, llm, list(patients), audit=audit)
    embedder_names = list(embedders) if embedders is not None else (
        provider.embedder_choices() if hasattr(provider, "embedder_choices") else [settings.embedder])
    if settings.embedder not in embedder_names:
        embedder_names.insert(0, settings.embedder)
    first = service.patient_choices(None)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}")
        status = gr.Markdown(status_line(service, settings.embedder), elem_id="status")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                picker = gr.Dropdown(
                    choices=first, value=first[0][1] if first else None, label="Patient",
                    info="Type to search by name or id", filterable=True, elem_id="patient-picker",
                )
                scope = gr.Radio([SCOPE_PATIENT, SCOPE_ALL], value=SCOPE_PATIENT, label="Scope", elem_id="scope")
                retriever = gr.Radio(list(RETRIEVER_CHOICES), value="hybrid", label="Retriever", elem_id="retriever")
                embedder = gr.Dropdown(embedder_names, value=settings.embedder, label="Embedder", elem_id="embedder")
                clear = gr.Button("New conversation", elem_id="clear")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Answers", elem_id="chatbot", height=480, sanitize_html=True,
                                     buttons=["copy", "copy_all"])
                with gr.Row():
                    question = gr.Textbox(placeholder="Ask about the record, e.g. “Which medications is this patient on?”",
                                          show_label=False, scale=6, elem_id="question", lines=1, max_lines=4)
                    send = gr.Button("Ask", variant="primary", scale=1, elem_id="send")
            with gr.Column(scale=2, min_width=320):
                gr.Markdown("### Sources")
                sources = gr.HTML("<p class='src-empty'>Sources of the answer appear here.</p>", elem_id="sources")

        def on_load(emb: str, request: gr.Request):
            user = _username(request)
            choices = service.patient_choices(user)
            value = choices[0][1] if choices else None
            return gr.update(choices=choices, value=value), status_line(service, emb, user)

        def on_ask(message, history, patient_id, scope_choice, retriever_kind, emb, request: gr.Request):
            user = _username(request)
            for turn in service.respond(message, history, patient_id, scope_choice, retriever_kind, emb, user):
                yield turn.history, turn.sources, ""

        def on_embedder(emb: str, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
            if hasattr(provider, "index"):
                progress(0, desc=f"Opening the {emb} index (built on first use)…")
                provider.index(emb)
            return status_line(service, emb, _username(request))

        demo.load(on_load, inputs=[embedder], outputs=[picker, status])
        inputs = [question, chatbot, picker, scope, retriever, embedder]
        send.click(on_ask, inputs=inputs, outputs=[chatbot, sources, question])
        question.submit(on_ask, inputs=inputs, outputs=[chatbot, sources, question])
        embedder.change(on_embedder, inputs=[embedder], outputs=[status])
        clear.click(lambda: ([], "<p class='src-empty'>Sources of the answer appear here.</p>"),
                    outputs=[chatbot, sources])

    demo.chat_service = service  # type: ignore[attr-defined]
    return demo


# --------------------------------------------------------------------------------------------
# Start-up


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description="Clinical RAG chat (Gradio).")
    p.add_argument("--host", default=None, help="interface to bind (default from settings: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default from settings: 7860)")
    p.add_argument("--corpus", default=None, help="named corpus or path (default from settings: synthea)")
    p.add_argument("--embedder", default=None,
                   help="embedder registry name or folder (default: the fine-tuned 'domain' model if "
                        "finetune.pipeline made one, else me5-small)")
    p.add_argument("--limit", type=int, default=None,
                   help="index only the first N documents (quick demos and tests; synthea's notes are grouped by patient)")
    return p.parse_args(list(argv) if argv is not None else None)


def default_embedder(settings: Settings) -> str:
    """The embedder to start with when neither ``--embedder``, ``CRAG_EMBEDDER`` nor the config file names one.

    Hybrid retrieval over the fine-tuned ``domain`` model is the best measured retriever on held-out
    clinical notes (docs/results.md, fine-tuning), so once ``finetune.pipeline`` has made that model
    the app starts with it; a fresh clone has none and starts with the shipped me5-small.
    """
    from rag.embedders import DOMAIN_MODEL, trained_embedders

    if "embedder" in configured_values():
        return settings.embedder
    return DOMAIN_MODEL if DOMAIN_MODEL in trained_embedders(settings) else settings.embedder


def startup_check(settings: Settings) -> bool:
    """Login rule and audit log, before anything heavy loads. Returns whether login is required."""
    login = require_login(settings.host, settings.users_file)
    try:
        AuditLog.from_settings(settings).check()
    except AuditError as exc:
        raise SystemExit(f"Refusing to start: {exc}. Answers are only given when they can be audited.") from None
    return login


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # Gradio's launch() loop closes the server on it; atexit stops the LLM


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(host=args.host, port=args.port, corpus=args.corpus, embedder=args.embedder)
    chosen = settings.embedder if args.embedder else default_embedder(settings)
    found_model = chosen != settings.embedder
    settings = settings.replace(embedder=chosen)
    t_start = time.perf_counter()

    def step(msg: str) -> None:
        print(f"[app {time.perf_counter() - t_start:6.1f} s] {msg}", flush=True)

    login_required = startup_check(settings)
    step(f"login {'required (users in ' + str(settings.users_file) + ')' if login_required else 'off (loopback, no users)'}; "
         f"audit log {settings.audit_log}")

    from rag.corpus import Patient, load_corpus, load_patients

    corpus = load_corpus(settings.corpus, settings, limit=args.limit)
    present = set(corpus.patients())
    patients: list[Patient] = []
    if settings.corpus == "synthea":  # the one corpus with names and birth dates
        patients = [p for p in load_patients(settings.corpus, settings) if p.patient_id in present]
    known = {p.patient_id for p in patients}
    patients += [Patient(pid) for pid in sorted(present - known)]
    step(f"corpus {corpus.name}: {len(corpus.documents)} documents, {len(present)} patients")

    provider = IndexProvider(settings, corpus, progress=True)
    if found_model:
        step(f"embedder {settings.embedder}: the fine-tuned model in {settings.home / 'models'} "
             f"(--embedder {Settings.embedder} for the shipped one)")
    step(f"building/updating the {settings.embedder} index (progress below)")
    provider.index(settings.embedder)
    step(f"index ready: {provider.chunk_count(settings.embedder)} chunks")

    from rag.local_llm import get_llm_client

    llm = get_llm_client(settings)
    step(f"generator ready: {llm.describe()}")

    demo = build_app(settings, provider, llm, patients)
    auth = None
    if login_required:
        users_file = settings.users_file
        auth = lambda username, password: verify(users_file, username, password)  # noqa: E731
    from rag.ui_render import CSS

    demo.queue(default_concurrency_limit=2)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # close the server (and the embedded LLM) cleanly
    step(f"listening on http://{settings.host}:{settings.port}")
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        auth=auth,
        auth_message="Clinical RAG: sign in with your account." if auth else None,
        css=CSS,
        show_error=False,
        footer_links=[],
        quiet=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
