"""HTML and text for the chat app: the evidence list, and the sources panel (one card per cited
passage, the rest collapsed).

Every piece of text from the record or the model is HTML-escaped here; the only markup is ours. The
cited span (the evidence sentence, or the whole chunk where there is none) is wrapped in ``<mark>``
inside a window of the surrounding document text, so the clinician reads it in context.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from rag.answer import Answer
    from rag.evidence import EvidenceSet
    from rag.retrieve import Hit

CONTEXT_CHARS = 240  # document text shown before and after the cited span
HOW_CITED = {
    "model": "cited by the model, checked against the evidence",
    "overlap": "matched by word overlap",
    "quoted": "quoted from the record",
    "evidence": "evidence sentence",
}

CSS = """
#sources .src-card { border: 1px solid var(--border-color-primary, #d0d7de); border-radius: 8px;
  padding: 8px 10px; margin: 0 0 10px 0; background: var(--block-background-fill, #fff); }
#sources .src-head { font-size: 0.9em; margin-bottom: 4px; display: flex; flex-wrap: wrap; gap: 4px 12px; }
#sources .src-n { font-weight: 700; }
#sources .src-how { font-style: italic; opacity: 0.8; }
#sources .src-text { white-space: pre-wrap; font-family: var(--font-mono, monospace); font-size: 0.82em;
  max-height: 18em; overflow-y: auto; margin: 0; }
#sources mark { background: #fff3a3; color: #000; padding: 0 1px; }
#sources .src-empty { opacity: 0.7; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def snippet_html(doc_text: str | None, hit: "Hit", context: int = CONTEXT_CHARS,
                 span: tuple[int, int] | None = None) -> str:
    """Escaped document text around the chunk (or ``span`` inside it), that text in ``<mark>``.

    Falls back to the chunk text alone when the document is unknown or no longer matches the offsets
    (the document changed after indexing): the highlight must never point at the wrong words.
    """
    if doc_text is None or not (0 <= hit.start <= hit.end <= len(doc_text)) or doc_text[hit.start:hit.end] != hit.text:
        return f"<mark>{_e(hit.text)}</mark>"
    start, end = span if span is not None else (int(hit.start), int(hit.end))
    lo, hi = max(0, start - context), min(len(doc_text), end + context)
    # widen to whitespace so the window does not cut words in half
    while lo > 0 and not doc_text[lo - 1].isspace() and start - lo < context + 40:
        lo -= 1
    while hi < len(doc_text) and not doc_text[hi].isspace() and hi - end < context + 40:
        hi += 1
    before = ("…" if lo > 0 else "") + doc_text[lo:start]
    after = doc_text[end:hi] + ("…" if hi < len(doc_text) else "")
    return f"{_e(before)}<mark>{_e(doc_text[start:end])}</mark>{_e(after)}"


def card_html(
    hit: "Hit",
    n: int | None,
    how: str | None,
    doc_text: str | None,
    patient_label: str | None = None,
    span: tuple[int, int] | None = None,
) -> str:
    date = (hit.date or "")[:10]
    section = hit.metadata.get("section") if isinstance(hit.metadata, dict) else None
    patient = patient_label or hit.patient_id
    fields = [
        f'<span class="src-n">[{n}]</span>' if n is not None else f'<span class="src-n">#{hit.rank}</span>',
        f'<span class="src-patient" data-patient-id="{_e(hit.patient_id)}">patient: {_e(patient)}</span>',
        f'<span class="src-doc">document: {_e(hit.doc_id)}</span>',
        f'<span class="src-date">date: {_e(date or "-")}</span>',
        f'<span class="src-type">type: {_e(hit.doc_type or "-")}</span>',
        f'<span class="src-section">section: {_e(section or "-")}</span>',
        f'<span class="src-score">score: {hit.score:.3f} ({_e(hit.retriever)} rank {hit.rank})</span>',
    ]
    if how:
        fields.append(f'<span class="src-how">{_e(HOW_CITED.get(how, how))}</span>')
    attrs = f'class="src-card" data-doc-id="{_e(hit.doc_id)}" data-patient-id="{_e(hit.patient_id)}"'
    if n is not None:
        attrs += f' data-n="{n}"'
    return (
        f"<div {attrs}><div class=\"src-head\">{''.join(fields)}</div>"
        f"<pre class=\"src-text\">{snippet_html(doc_text, hit, span=span)}</pre></div>"
    )


def render_sources(
    answer: "Answer",
    doc_text: Callable[[str], str | None] | Mapping[str, str] | None = None,
    patient_label: Callable[[str], str] | None = None,
) -> str:
    """The sources panel for a finished answer: cited cards first, uncited passages collapsed."""
    if callable(doc_text):
        lookup = doc_text
    elif doc_text is not None:
        mapping = doc_text
        lookup = lambda doc_id: mapping.get(doc_id)  # noqa: E731
    else:
        lookup = lambda doc_id: None  # noqa: E731
    label = patient_label or (lambda pid: pid)

    parts: list[str] = []
    cited_ids = set()
    if answer.citations:
        parts.append(f"<h4>Cited passages ({len(answer.citations)})</h4>")
        for c in answer.citations:
            cited_ids.add(c.hit.chunk_id)
            span = (c.evidence.start, c.evidence.end) if c.evidence is not None else None
            parts.append(card_html(c.hit, c.n, c.source, lookup(c.hit.doc_id), label(c.hit.patient_id), span))
    elif answer.passages:
        parts.append('<p class="src-empty">The answer cites none of the retrieved passages; '
                     "check it against the record before relying on it.</p>")
    else:
        parts.append('<p class="src-empty">No passage was retrieved in this scope.</p>')

    rest = [(i, h) for i, h in enumerate(answer.passages, start=1) if h.chunk_id not in cited_ids]
    if rest:
        inner = "".join(card_html(h, i, None, lookup(h.doc_id), label(h.patient_id)) for i, h in rest)
        parts.append(
            f'<details class="src-uncited"><summary>Other retrieved passages, not cited ({len(rest)})</summary>'
            f"{inner}</details>"
        )
    return "\n".join(parts)


def evidence_markdown(evidence: "EvidenceSet", patient_label: Callable[[str], str] | None = None,
                      language: str = "en") -> str:
    """The evidence list at the top of the chat answer (markdown: the chat escapes HTML).

    One line per sentence: its number, patient, date, document type and document id, and the
    sentence as quoted text; the sources panel highlights each in its document.
    """
    label = patient_label or (lambda pid: pid)
    title = "Belege aus der Akte" if language == "de" else "Evidence from the record"
    if not evidence.items:
        return ""
    lines = [f"**{title}**"]
    for e in evidence.items:
        meta = " · ".join(x for x in (label(e.hit.patient_id), (e.hit.date or "")[:10], e.hit.doc_type or "",
                                      f"document {e.hit.doc_id}") if x)
        text = e.text.replace("*", "\\*").replace("_", "\\_")
        lines.append(f"{e.n}. {meta}: “{text}”")
    return "\n".join(lines)


def evidence_cards_html(evidence: "EvidenceSet", doc_text: Callable[[str], str | None],
                        patient_label: Callable[[str], str] | None = None) -> str:
    """The sources panel while the answer is being written: each evidence sentence highlighted in its document."""
    label = patient_label or (lambda pid: pid)
    if not evidence.items:
        return message_html("No sentence of the retrieved passages matches the question.")
    cards = [card_html(e.hit, e.n, "evidence", doc_text(e.hit.doc_id), label(e.hit.patient_id), (e.start, e.end))
             for e in evidence.items]
    return f"<h4>Evidence ({len(cards)})</h4>" + "".join(cards)


def message_html(text: str, kind: str = "info") -> str:
    return f'<p class="src-empty src-{_e(kind)}">{_e(text)}</p>'
