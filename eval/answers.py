"""Answer quality without an LLM judge: does the answer keep the facts its retrieved passages hold?

    python -m eval.answers [--sets qa-test,synthea-facts,handchecked] [--paths passages,evidence,quoted,smollm2]
                           [--limit 40] [--unanswerable 15] [--out var/eval/answers]

For every question with a reference answer the app's own path runs (``rag.answer.AnswerPipeline``:
patient-scoped hybrid retrieval, evidence sentences, checked generation) and is scored against the
reference by key facts: the numbers and content words of the reference answer that the question
does not already contain, matched on the shared stem (``rag.evidence.stem``). Reported per set
and answer path (formulas in the table notes):

- key-fact recall of the answer, and of what the path had to work with: the five retrieved
  passages (``passages``, the ceiling) and the evidence sentences (``evidence``);
- answer recall / passage ceiling (the share of the reachable facts the answer keeps);
- answer sentences supported by the passage they cite (share of content words and all numbers);
- citation validity (cited numbers that exist), sentences dropped by the support check;
- abstention on answerable questions and on unanswerable ones (a question asked in another
  patient's scope whose record lacks its key facts and one of its specific words);
- answers in the wrong language (generated text whose language differs from the question's);
- latency: evidence shown, first generated token, whole answer (p50).

Answer paths: ``passages`` and ``evidence`` (what retrieval found; no answer), ``quoted`` (the
evidence as the answer, no generator), and a generator name (``smollm2``, ``qwen2.5-coder-0.5b``,
``qwen2.5-coder-1.5b``: the embedded llama.cpp server) or ``URL#model`` for any OpenAI-compatible
endpoint. Sets:

- ``qa-test`` / ``qa-dev``: the committed held-out QA pairs (``data/qa/physionet_deid_dev``) of the
  pipeline's test / dev patients (``finetune.split``, seed 0), over physionet_deid_dev (needs
  ../shared/data); ``qa-test`` only reports;
- ``qa-train``: the committed training pairs (``qa.train.jsonl``) of the training patients. They
  were written on the pseudonymized notes and are asked over the originals, so a reference that
  names a surrogate name or date loses that fact; they are for choosing thresholds with
  ``qa-dev`` (``--choose-on qa-train,qa-dev``: about 560 questions instead of 79), never for
  reporting;
- ``synthea-facts``: medication doses and condition dates of the demo corpus, exact answers from
  ``data/synthea/{medications,conditions}.jsonl``;
- ``handchecked``: ``data/answers/handchecked.jsonl``, English (synthea) and German (GraSCCo)
  questions whose answers were checked by hand against the record.

Writes ``results.json``, ``results.md``, ``answers.png``, ``per_question.jsonl`` and ``manifest.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

import rag  # noqa: F401  (offline environment first)
from eval.report import write_json
from finetune.split import split_by_patient
from rag.answer import EVIDENCE_K, QUOTED_MAX, Answer, AnswerPipeline, cited_numbers, is_abstention, support
from rag.config import REPO_ROOT, Settings, load_settings
from rag.corpus import load_corpus, synthea_dir
from rag.evidence import SPECIFIC_MAX_ZIPF, STOP, content_terms, specific_terms
from rag.index import build_index
from rag.language import detect_language
from rag.llm import LLMClient
from rag.local_llm import EmbeddedLLMServer
from rag.retrieve import Scope, make_retriever

SETS = ("qa-test", "qa-dev", "qa-train", "synthea-facts", "handchecked")
PATHS_WITHOUT_ANSWER = ("passages", "evidence")
HANDCHECKED = REPO_ROOT / "data" / "answers" / "handchecked.jsonl"
QA_FILE = REPO_ROOT / "data" / "qa" / "physionet_deid_dev" / "qa.jsonl"
QA_TRAIN_FILE = QA_FILE.with_name("qa.train.jsonl")
#: Words of a reference answer that are never facts ("The patient was given ...").
FILLER = frozenset("""given received receives taking takes take started start noted documented shows showed
also including include includes prescribed placed continued currently daily""".split())
#: Unanswerable questions: the other patient's whole record holds at most this share of the key facts.
UNANSWERABLE_MAX_SHARE = 0.2


@dataclass
class Question:
    qid: str
    set: str
    corpus: str
    patient_id: str
    question: str
    reference: str
    language: str
    answerable: bool = True
    asked_patient: str = ""

    @property
    def scope(self) -> Scope:
        return Scope.patient(self.asked_patient or self.patient_id)


def key_facts(reference: str, question: str) -> set[str]:
    """Stems of the reference's numbers and content words that the question does not already hold."""
    asked = set(content_terms(question))
    facts = {t for t in content_terms(reference) if t not in FILLER and t not in STOP}
    return facts - asked


def recall(facts: set[str], text: str) -> float | None:
    if not facts:
        return None
    present = set(content_terms(text))
    return len(facts & present) / len(facts)


# --------------------------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------------------------


def qa_split(settings: Settings, split: str) -> list[Question]:
    """The committed held-out QA pairs of one split of the pipeline's patients (physionet notes)."""

    corpus = load_corpus("physionet_deid_dev", settings)
    patient_split = split_by_patient(corpus, seed=0, fractions=(0.7, 0.1, 0.2), by="documents").patient_split
    out = []
    source = QA_TRAIN_FILE if split == "train" else QA_FILE
    for line in source.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if patient_split.get(row["patient_id"]) == split and row.get("answer"):
            out.append(Question(row["qa_id"], f"qa-{split}", "physionet_deid_dev", row["patient_id"], row["question"],
                                row["answer"], row.get("language") or "en"))
    return out


def synthea_facts(settings: Settings, per_patient: int = 4, seed: int = 0) -> list[Question]:
    """Medication doses and first-noted dates of conditions, where the notes mention them."""

    folder = synthea_dir(settings)
    notes: dict[str, str] = defaultdict(str)
    first_seen: dict[tuple[str, str], str] = {}
    for doc in load_corpus("synthea", settings).documents:
        notes[doc.patient_id] += "\n" + doc.text.lower()
    rng = random.Random(seed)
    out: list[Question] = []
    by_patient: dict[str, list[Question]] = defaultdict(list)
    meds: dict[tuple[str, str], str] = {}
    for line in (folder / "medications.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        display = row["display"]
        if display.lower() in notes[row["patient_id"]]:
            meds.setdefault((row["patient_id"], display.split()[0].lower()), display)
    for (pid, drug), display in sorted(meds.items()):
        by_patient[pid].append(Question(f"med:{pid[:8]}:{drug}", "synthea-facts", "synthea", pid,
                                        f"Which dose and form of {drug} was prescribed?", display, "en"))
    for line in (folder / "conditions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        name = re.sub(r"\s*\((?:disorder|finding|situation)\)$", "", row["display"])
        onset = (row.get("onset") or "")[:10]
        key = (row["patient_id"], name)
        if onset and name.lower() in notes[row["patient_id"]] and (key not in first_seen or onset < first_seen[key]):
            first_seen[key] = onset
    for (pid, name), onset in sorted(first_seen.items()):
        by_patient[pid].append(Question(f"cond:{pid[:8]}:{name[:24]}", "synthea-facts", "synthea", pid,
                                        f"When was {name.lower()} first noted?", f"{name} was first noted on {onset}.", "en"))
    for pid in sorted(by_patient):
        pool = by_patient[pid]
        rng.shuffle(pool)
        out += pool[:per_patient]
    return out


def handchecked(settings: Settings) -> list[Question]:
    out = []
    for line in HANDCHECKED.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["corpus"] != "synthea" and not (Path(settings.data_dir) / row["corpus"]).is_dir():
            continue  # German rows read GraSCCo from ../shared/data
        out.append(Question(row["id"], "handchecked", row["corpus"], row["patient_id"], row["question"],
                            row["answer"], row["language"]))
    return out


def unanswerable(questions: Sequence[Question], texts: dict[str, dict[str, str]], count: int,
                 seed: int = 0, rounds: int = 3) -> list[Question]:
    """The same questions asked in another patient's scope that lacks what makes them specific.

    A question counts when the other record holds at most ``UNANSWERABLE_MAX_SHARE`` of its key
    facts *and* lacks one of its specific terms (``specific_terms``): a generic question ("What
    medications are being given?") has a true answer in every scope, and abstaining there would be
    wrong. A question may be asked in up to ``rounds`` other scopes, so a small set still yields
    enough unanswerable cases for the abstention rate to mean something."""
    rng = random.Random(seed)
    pool = list(questions)
    rng.shuffle(pool)
    terms = {corpus: {p: set(content_terms(t)) for p, t in records.items()} for corpus, records in texts.items()}
    out: list[Question] = []
    asked: set[tuple[str, str]] = set()
    for _ in range(rounds):
        for q in pool:
            if len(out) >= count:
                return out
            facts = key_facts(q.reference, q.question)
            record_terms = terms.get(q.corpus, {})
            specific = specific_terms(q.question, q.language)
            others = sorted(p for p in record_terms if p != q.patient_id and (q.qid, p) not in asked)
            if not facts or not specific or not others:
                continue
            other = rng.choice(others)
            asked.add((q.qid, other))
            held = len(facts & record_terms[other]) / len(facts)
            if held <= UNANSWERABLE_MAX_SHARE and specific - record_terms[other]:
                out.append(Question(f"{q.qid}@{other}", q.set, q.corpus, q.patient_id, q.question, q.reference,
                                    q.language, answerable=False, asked_patient=other))
    return out


def load_questions(names: Sequence[str], settings: Settings, limit: int | None, seed: int) -> list[Question]:
    builders = {"qa-test": lambda: qa_split(settings, "test"), "qa-dev": lambda: qa_split(settings, "dev"),
                "qa-train": lambda: qa_split(settings, "train"),
                "synthea-facts": lambda: synthea_facts(settings, seed=seed), "handchecked": lambda: handchecked(settings)}
    out: list[Question] = []
    for name in names:
        if name not in builders:
            raise ValueError(f"unknown set {name!r}; choose from {SETS}")
        items = builders[name]()
        if limit is not None and len(items) > limit:
            items = random.Random(seed).sample(items, limit)
        out += items
    return out


# --------------------------------------------------------------------------------------------
# Running the answer paths
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    question: Question
    path: str
    facts: int
    recall: float | None
    ceiling: float | None
    evidence_ceiling: float | None
    abstained: bool
    answer_path: str
    sentences: int = 0
    supported_sentences: int = 0
    cited: int = 0
    invalid_cited: int = 0
    dropped: int = 0
    wrong_language: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    answer: str = ""
    strength: float = 0.0
    similarity: float = 0.0

    def to_json(self) -> dict[str, Any]:
        q = self.question
        return {"qid": q.qid, "set": q.set, "answerable": q.answerable, "patient": q.patient_id,
                "asked_patient": q.asked_patient or q.patient_id, "language": q.language, "path": self.path,
                "answer_path": self.answer_path, "facts": self.facts, "recall": self.recall, "ceiling": self.ceiling,
                "evidence_ceiling": self.evidence_ceiling, "abstained": self.abstained, "sentences": self.sentences,
                "supported_sentences": self.supported_sentences, "cited": self.cited, "invalid_cited": self.invalid_cited,
                "dropped": self.dropped, "wrong_language": self.wrong_language, "strength": round(self.strength, 4),
                "similarity": round(self.similarity, 4),
                "timings": self.timings}


def _sentences(text: str) -> list[str]:
    """Answer sentences with their trailing citations ("... daily [1]."); a quoted line ("[2] date: ...")
    is one sentence whatever punctuation it holds."""
    out = []
    for line in text.split("\n"):
        pieces = [line] if re.match(r"\s*\[\d+\]", line) else re.split(r"(?<=[.!?])\s+(?!\[\d)", line)
        out += [p for p in pieces if len(content_terms(_CITATION.sub("", p))) >= 1]
    return out


_CITATION = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")


def score(q: Question, path: str, answer: Answer) -> Result:
    facts = key_facts(q.reference, q.question)
    passages = " ".join(f"{(h.date or '')[:10]} {h.doc_type or ''} {h.text}" for h in answer.passages)
    evidence = " ".join(f"{e.label} {e.text}" for e in answer.evidence)
    abstained = answer.path in ("abstained", "no_context") or is_abstention(answer.text, answer.language)
    if path in PATHS_WITHOUT_ANSWER:
        text = passages if path == "passages" else evidence
        return Result(q, path, len(facts), recall(facts, text), recall(facts, passages), recall(facts, evidence),
                      False, path, timings=answer.timings, strength=answer.evidence_strength,
                      similarity=answer.evidence_similarity)
    result = Result(q, path, len(facts), recall(facts, "" if abstained else answer.text), recall(facts, passages),
                    recall(facts, evidence), abstained, answer.path, timings=answer.timings, answer=answer.text,
                    dropped=len(answer.dropped), invalid_cited=len(answer.invalid_citations),
                    strength=answer.evidence_strength, similarity=answer.evidence_similarity)
    if not abstained:
        by_n = {c.n: c for c in answer.citations}
        for sentence in _sentences(answer.text):
            numbers = cited_numbers(sentence)
            if not numbers and sentence.rstrip().endswith(":"):
                continue  # "From the record:", "Also in the record:"
            result.sentences += 1
            cited = [by_n[n] for n in numbers if n in by_n] or [c for c in answer.citations if c.source == "overlap"]
            source = [c.evidence for c in cited if c.evidence is not None]
            if source and support(sentence, source) >= 0.6:
                result.supported_sentences += 1
        result.cited = len(cited_numbers(answer.text)) + result.invalid_cited
        if answer.path == "generated":
            result.wrong_language = detect_language(answer.text) != detect_language(q.question)
    return result


def _pipeline(path: str, retriever: Any, servers: dict[str, Any], threads: int, max_tokens: int,
              abstain_below: float | None, evidence_k: int, quoted_max: int) -> AnswerPipeline:
    common = dict(k=5, evidence_k=evidence_k, quoted_max=quoted_max)
    if path in PATHS_WITHOUT_ANSWER:
        return AnswerPipeline(retriever, None, generate=False, abstain_below=0.0, **common)
    if path == "quoted":
        return AnswerPipeline(retriever, None, generate=False, abstain_below=abstain_below, **common)
    if path not in servers:
        if "#" in path and path.startswith("http"):
            url, model = path.split("#", 1)
            servers[path] = LLMClient(url, model)
        else:
            servers[path] = EmbeddedLLMServer(path, threads=threads).start()
    server = servers[path]
    client = server.client(timeout_s=300, max_retries=1) if hasattr(server, "client") else server
    return AnswerPipeline(retriever, client, max_tokens=max_tokens, abstain_below=abstain_below, **common)


def run(questions: Sequence[Question], paths: Sequence[str], settings: Settings, *, embedder: str | None = None,
        threads: int = 2, max_tokens: int = 160, abstain_below: float | None = None,
        evidence_k: int = EVIDENCE_K, quoted_max: int = QUOTED_MAX, progress: bool = True) -> list[Result]:

    retrievers: dict[str, Any] = {}
    servers: dict[str, Any] = {}
    results: list[Result] = []
    try:
        for path in paths:
            for q in tqdm(questions, desc=path, unit="q", disable=not progress):
                if q.corpus not in retrievers:
                    index, _ = build_index(q.corpus, embedder or settings.embedder, settings, progress=progress)
                    retrievers[q.corpus] = make_retriever("hybrid", index)
                pipe = _pipeline(path, retrievers[q.corpus], servers, threads, max_tokens, abstain_below, evidence_k,
                                 quoted_max)
                results.append(score(q, path, pipe.answer(q.question, q.scope)))
    finally:
        for server in servers.values():
            if hasattr(server, "stop"):
                server.stop()
    return results


def record_texts(corpora: Iterable[str], settings: Settings) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name in set(corpora):
        texts: dict[str, str] = defaultdict(str)
        for doc in load_corpus(name, settings).documents:
            texts[doc.patient_id] += "\n" + doc.text
        out[name] = dict(texts)
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _mean(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(statistics.fmean(xs), 4) if xs else None


def _p50(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(statistics.median(xs), 3) if xs else None


def summarize(results: Sequence[Result]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.question.set, r.path)].append(r)
    rows = []
    for (set_name, path), rs in sorted(groups.items()):
        answerable = [r for r in rs if r.question.answerable]
        unanswerable_ = [r for r in rs if not r.question.answerable]
        rec, ceil = _mean(r.recall for r in answerable), _mean(r.ceiling for r in answerable)
        sentences = sum(r.sentences for r in rs)
        cited = sum(r.cited for r in rs)
        rows.append({
            "set": set_name, "path": path, "questions": len(answerable), "unanswerable": len(unanswerable_),
            "recall": rec, "ceiling": ceil, "evidence_ceiling": _mean(r.evidence_ceiling for r in answerable),
            "recall_over_ceiling": round(rec / ceil, 4) if rec is not None and ceil else None,
            "supported": round(sum(r.supported_sentences for r in rs) / sentences, 4) if sentences else None,
            "citation_validity": round(1 - sum(r.invalid_cited for r in rs) / cited, 4) if cited else None,
            "dropped": sum(r.dropped for r in rs),
            "abstain_answerable": _mean(float(r.abstained) for r in answerable) if path not in PATHS_WITHOUT_ANSWER else None,
            "abstain_unanswerable": _mean(float(r.abstained) for r in unanswerable_) if path not in PATHS_WITHOUT_ANSWER else None,
            "wrong_language": sum(r.wrong_language for r in rs),
            "evidence_s_p50": _p50(r.timings.get("evidence_s") for r in rs),
            "first_token_s_p50": _p50(r.timings.get("first_token_s") for r in rs),
            "total_s_p50": _p50(r.timings.get("total_s") for r in rs),
        })
    return rows


def choose_threshold(results: Sequence[Result], max_abstain_answerable: float = 0.2,
                     min_abstain_unanswerable: float = 0.8) -> dict[str, Any]:
    """The abstention rule with the widest margin to both targets (run with ``--abstain-below 0``).

    Among the rules that abstain on at most ``max_abstain_answerable`` of the answerable questions,
    the one whose smaller margin - to that limit, and to ``min_abstain_unanswerable`` on the
    unanswerable ones - is largest: a rule that just touches a limit on dev crosses it on test.
    Reported for a coverage threshold alone and for the (coverage, similarity) pair of
    ``rag.answer.ABSTAIN_RULES`` (abstain when both are below)."""
    rs = [r for r in results if r.path == "evidence"]
    # a generic question never abstains (``AnswerPipeline.weak``): it is in the rates, never below a threshold
    signals = {id(r): (r.strength, r.similarity) if specific_terms(r.question.question, r.question.language)
               else (math.inf, math.inf) for r in rs}
    good = [signals[id(r)] for r in rs if r.question.answerable]
    bad = [signals[id(r)] for r in rs if not r.question.answerable]
    if not good or not bad:
        return {}

    def rates(cov: float, sim: float) -> tuple[float, float]:
        return (sum(c < cov and s < sim for c, s in good) / len(good),
                sum(c < cov and s < sim for c, s in bad) / len(bad))

    def best_of(candidates: Iterable[tuple[float, float]]) -> dict[str, float]:
        best = {"coverage": 0.0, "similarity": 0.0, "abstain_answerable": 0.0, "abstain_unanswerable": 0.0}
        best_margin = -math.inf
        for cov, sim in candidates:
            a, u = rates(cov, sim)
            margin = min(max_abstain_answerable - a, u - min_abstain_unanswerable)
            if a <= max_abstain_answerable and margin > best_margin:
                best_margin = margin
                best = {"coverage": round(cov, 4), "similarity": round(sim, 4),
                        "abstain_answerable": round(a, 4), "abstain_unanswerable": round(u, 4)}
        return best

    coverages = sorted({c for c, _ in good + bad if c < math.inf})
    similarities = sorted({s for _, s in good + bad if s and s < math.inf}) or [0.0]
    alone = best_of((c, math.inf) for c in coverages)
    pair = best_of((c, s) for c in coverages[::max(1, len(coverages) // 100)]
                   for s in similarities[::max(1, len(similarities) // 100)])
    return {"threshold": alone["coverage"], "abstain_answerable": alone["abstain_answerable"],
            "abstain_unanswerable": alone["abstain_unanswerable"], "pair": pair,
            "answerable": len(good), "unanswerable": len(bad)}


COLUMNS = [("set", "set"), ("path", "answer path"), ("questions", "questions"), ("recall", "key-fact recall"),
           ("ceiling", "passages (ceiling)"), ("recall_over_ceiling", "recall / ceiling"),
           ("evidence_ceiling", "evidence sentences"), ("supported", "sentences supported"),
           ("citation_validity", "citations valid"), ("dropped", "dropped"),
           ("abstain_answerable", "abstain, answerable"), ("abstain_unanswerable", "abstain, unanswerable"),
           ("wrong_language", "wrong language"), ("evidence_s_p50", "evidence s p50"),
           ("first_token_s_p50", "first token s p50"), ("total_s_p50", "total s p50")]


def markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    lines += ["", f"Embedder {meta['embedder']}, hybrid retrieval, 5 passages, patient scope; generators on "
                  f"{meta['threads']} llama.cpp threads, max {meta['max_tokens']} tokens.",
              "Key facts: stems of the reference answer's numbers and content words not in the question. Recall: "
              "share of them in the answer (0 when it abstains); ceiling: in the 5 retrieved passages; evidence: in "
              "the evidence sentences. Sentences supported: answer sentences with >= 60% of their content words and "
              "all numbers in the evidence they cite. Unanswerable: the question asked in another patient's scope "
              f"whose record holds <= {UNANSWERABLE_MAX_SHARE:.0%} of its key facts and lacks one of the question's "
              f"specific words (rarer than Zipf {SPECIFIC_MAX_ZIPF} in general language)."]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    answer_rows = [r for r in rows if r["path"] not in PATHS_WITHOUT_ANSWER]
    if not answer_rows:
        return
    labels = [f"{r['set']}\n{r['path']}" for r in answer_rows]
    metrics = [("recall_over_ceiling", "recall / ceiling"), ("supported", "sentences supported"),
               ("abstain_answerable", "abstain, answerable"), ("abstain_unanswerable", "abstain, unanswerable")]
    fig, ax = plt.subplots(figsize=(max(7, len(labels) * 1.2), 4))
    width = 0.8 / len(metrics)
    for k, (key, name) in enumerate(metrics):
        ax.bar([i - 0.4 + width * (k + 0.5) for i in range(len(labels))], [r[key] or 0 for r in answer_rows],
               width=width, label=name)
    ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Answers: facts kept, support, abstention")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.answers", description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="qa-test,synthea-facts,handchecked")
    parser.add_argument("--paths", default="passages,evidence,quoted,smollm2",
                        help="comma list: passages, evidence, quoted, a generator name or GGUF, URL#model")
    parser.add_argument("--limit", type=int, default=40, help="questions per set (seeded sample); 0 = all")
    parser.add_argument("--unanswerable", type=int, default=15, help="unanswerable questions per set")
    parser.add_argument("--embedder", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evidence-k", type=int, default=EVIDENCE_K, help="evidence sentences per answer")
    parser.add_argument("--abstain-below", type=float, default=None,
                        help="abstain below this evidence coverage alone (default: rag.answer.ABSTAIN_RULES for the "
                             "embedder); 0 with path 'evidence' to choose it: the report then prints the best threshold")
    parser.add_argument("--quoted-max", type=int, default=QUOTED_MAX, help="evidence sentences a quoted answer repeats")
    parser.add_argument("--choose-on", default="",
                        help="comma list of sets whose questions are pooled for one threshold choice "
                             "(e.g. qa-train,qa-dev), reported next to the per-set choices")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    out = Path(args.out) if args.out else settings.home / "eval" / "answers"
    out.mkdir(parents=True, exist_ok=True)
    names = [s for s in args.sets.split(",") if s]
    pooled = [s for s in args.choose_on.split(",") if s]
    if set(pooled) - set(names):
        print(f"error: --choose-on names sets not in --sets: {sorted(set(pooled) - set(names))}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        questions = load_questions(names, settings, args.limit or None, args.seed)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    texts = record_texts({q.corpus for q in questions}, settings)
    extra = []
    for name in names:
        extra += unanswerable([q for q in questions if q.set == name], texts, args.unanswerable, args.seed)
    questions = questions + extra
    paths = [p for p in args.paths.split(",") if p]
    results = run(questions, paths, settings, embedder=args.embedder, threads=args.threads, max_tokens=args.max_tokens,
                  abstain_below=args.abstain_below, evidence_k=args.evidence_k, quoted_max=args.quoted_max)
    rows = summarize(results)
    thresholds = {name: choose_threshold([r for r in results if r.question.set == name]) for name in names}
    if pooled:
        thresholds["+".join(pooled)] = choose_threshold([r for r in results if r.question.set in pooled])
    meta = {"embedder": args.embedder or settings.embedder, "threads": args.threads, "max_tokens": args.max_tokens,
            "abstain_below": args.abstain_below, "evidence_k": args.evidence_k, "quoted_max": args.quoted_max,
            "threshold_choice": thresholds}
    with (out / "per_question.jsonl").open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    write_json({"rows": rows, **meta, "sets": names, "paths": paths}, out / "results.json")
    table = markdown(rows, meta)
    (out / "results.md").write_text(table, encoding="utf-8")
    plot(rows, out / "answers.png")
    write_json({"stage": "eval.answers", "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "parameters": vars(args), "questions": len(questions), "seconds": round(time.perf_counter() - started, 1),
                "outputs": ["results.json", "results.md", "answers.png", "per_question.jsonl"]}, out / "manifest.json")
    print(table)
    for name, choice in thresholds.items():
        if choice:
            print(f"{name}: abstain below {choice['threshold']} -> abstains on {choice['abstain_answerable']:.0%} of "
                  f"{choice['answerable']} answerable and {choice['abstain_unanswerable']:.0%} of "
                  f"{choice['unanswerable']} unanswerable questions")
            pair = choice["pair"]
            print(f"{name}: abstain below coverage {pair['coverage']} and similarity {pair['similarity']} -> abstains "
                  f"on {pair['abstain_answerable']:.0%} answerable and {pair['abstain_unanswerable']:.0%} unanswerable")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
