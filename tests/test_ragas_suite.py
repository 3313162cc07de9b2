"""eval.ragas_suite: metric values by hand, the mode switch, leakage, caching, the judge, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.rag_cache import JsonlCache, cache_key
from eval.rag_run import AnswerRunner, RetrieverChoice, RetrieverSet, parse_models, retrieve_many, scope_for
from eval.ragas_suite import SuiteConfig, aggregate, main, run_suite, select_queries
from rag.beir import BeirSet, Query, write_beir
from rag.config import REPO_ROOT, load_settings
from rag.index import ChunkIndex
from rag.retrieve import BM25Retriever, DenseRetriever, Hit, Scope
from tests.conftest import small_synthea
from tests.doubles import make_hit, read_rows, synced_index
from tests.openai_double import closed_port


def _hit(doc: str, patient: str, rank: int, text: str = "text") -> Hit:
    return make_hit(doc, patient, text, rank=rank)


# --------------------------------------------------------------------------------------------
# a small BEIR set over a few synthea patients, indexed once with the tiny embedder


@pytest.fixture(scope="module")
def small_set(synthea, tmp_path_factory) -> tuple[BeirSet, Path]:
    """Four patients, their notes, and the synthea condition questions whose notes are all kept."""
    corpus = small_synthea(synthea, patients=4, per_patient=25)
    docs = {d.doc_id for d in corpus.documents}
    queries, qrels = [], {}
    for row in read_rows(REPO_ROOT / "data/synthea/qrels_condition_diagnosis.jsonl"):
        if row["relevant_doc_ids"] and set(row["relevant_doc_ids"]) <= docs:
            queries.append(Query(row["query_id"], row["query"], row["patient_id"], f"Yes: {row['condition']}."))
            qrels[row["query_id"]] = {d: 1 for d in row["relevant_doc_ids"]}
    assert len(queries) >= 8 and len({q.patient_id for q in queries}) >= 2
    beir = BeirSet("synthea-small", corpus, queries, qrels)
    folder = tmp_path_factory.mktemp("beir-small")
    write_beir(beir, folder)
    return beir, folder


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("suite-home")


@pytest.fixture(scope="module")
def index(small_set, tiny_embedder, home) -> ChunkIndex:
    beir, _ = small_set
    return synced_index(beir.corpus.name, tiny_embedder, load_settings(home=home), beir.corpus.documents)


# --------------------------------------------------------------------------------------------
# metric values, by hand


def test_ragas_id_metrics_match_hand_computed_values():
    from eval.ragas_judge import ragas_id_scores

    # retrieved chunks of documents a, b, a, c; gold a, d: the set {a, b, c} holds 1 of 3 retrieved
    # (precision 1/3) and 1 of 2 gold ids (recall 1/2); an empty retrieval scores 0, not NaN
    (p1, r1), (p2, r2), (p3, r3) = ragas_id_scores([(["a", "b", "a", "c"], ["a", "d"]), ([], ["a"]),
                                                    (["d", "a"], ["a", "d"])])
    assert p1 == pytest.approx(1 / 3) and r1 == pytest.approx(1 / 2)
    assert (p2, r2) == (0.0, 0.0)
    assert (p3, r3) == (1.0, 1.0)


def test_suite_records_hold_the_study_formulas(small_set, index, home, monkeypatch):
    """Context precision and leakage per record equal the hand formula on the record's own hits."""
    beir, folder = small_set
    tiny = str(index.embedder.path)
    doc = _run(folder, home, models=f"{tiny},bm25", limit=6)
    records = _records(doc)
    assert {r["mode"] for r in records} == {"patient", "cross"} and len(records) == 6 * 2 * 2
    for rec in records:
        docs = [h["doc_id"] for h in rec["retrieved"]]
        relevant = set(rec["relevant"])
        hits, total = 0, 0.0
        for i, d in enumerate(docs, start=1):  # sum_k P@k * v_k / (relevant items in the top k)
            if d in relevant:
                hits += 1
                total += hits / i
        assert rec["metrics"]["context_precision"] == pytest.approx(total / hits if hits else 0.0)
        others = sum(h["patient_id"] != rec["patient_id"] for h in rec["retrieved"])
        assert rec["metrics"]["leakage"] == pytest.approx(others / len(docs) if docs else 0.0)
        if rec["mode"] == "patient":
            assert rec["metrics"]["leakage"] == 0.0
    # the table: rows are retrievers, columns metrics per mode, means with CIs, formulas stated
    md = doc["markdown"]
    assert "CP@5 patient" in md and "CP@5 cross" in md and "RAGAS IDBasedContextPrecision" in md
    assert "BM25 (bm25s" in md and "leakage cross" in md
    summary = doc["results"]["synthea-small"]["patient"]["bm25"]["context_precision"]
    values = [r["metrics"]["context_precision"] for r in records if r["model"] == "bm25" and r["mode"] == "patient"]
    assert summary["mean"] == pytest.approx(sum(values) / len(values)) and summary["n"] == 6
    assert summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    out = Path(doc["out_dir"])
    for name in ("per_question.jsonl", "results.json", "results.md", "context_precision.png", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "eval.ragas_suite" and all("sha256" in v for v in manifest["inputs"].values())
    assert "answers: --answer-limit 0" in doc["skipped"]


def test_aggregate_means_cis_and_paired_test():
    recs = []
    for i, (a, b) in enumerate([(1.0, 0.0), (0.5, 0.5), (1.0, 0.0), (0.0, 0.0)]):
        for model, cp in (("me5-small", a), ("bm25", b)):
            recs.append({"set": "s", "mode": "patient", "model": model, "query_id": f"q{i}", "retrieval_ms": 1.0 + i,
                         "metrics": {"context_precision": cp, "ragas_id_precision": cp, "ragas_id_recall": cp,
                                     "leakage": 0.0}, "answer": None, "judge": None})
    choices = [RetrieverChoice("me5-small", "dense", "me5-small"), RetrieverChoice("bm25", "bm25", "me5-small")]
    res = aggregate(recs, choices, ["patient"], [], seed=0)["s"]["patient"]
    assert res["me5-small"]["context_precision"]["mean"] == pytest.approx(0.625)
    assert res["bm25"]["context_precision"]["mean"] == pytest.approx(0.125)
    # two non-zero differences (+1, +1): exact sign-flip p = 2/4 patterns as extreme
    assert res["bm25"]["context_precision_p_vs_me5-small"] == pytest.approx(0.5)
    assert res["me5-small"]["retrieval_ms_p50"] == pytest.approx(2.5)


# --------------------------------------------------------------------------------------------
# the mode switch and leakage


def test_mode_switch_changes_the_candidate_set(small_set, index):
    beir, _ = small_set
    for retriever in (DenseRetriever(index), BM25Retriever(index)):
        patient_side, cross_side = set(), set()
        for q in beir.queries[:10]:
            (p_hits, _, p_err), (c_hits, _, c_err) = retrieve_many(
                retriever, [(q.text, scope_for("patient", q.patient_id)), (q.text, scope_for("cross", q.patient_id))], 8)
            assert p_err is None and c_err is None
            assert p_hits and {h.patient_id for h in p_hits} == {q.patient_id}
            patient_side |= {h.patient_id for h in p_hits}
            cross_side |= {h.patient_id for h in c_hits if h.patient_id != q.patient_id}
        # cross-patient search reaches other patients' chunks for some question; patient mode never does
        assert cross_side, retriever.name
    assert scope_for("cross", "p1") == Scope.all() and scope_for("patient", None) is None


class _LeakyRetriever:
    """A broken retriever that ignores the scope: the suite must catch it, not average it away."""

    name = "leaky"

    def __init__(self, inner):
        self.inner = inner

    def retrieve(self, query, scope, k=10):
        return self.inner.retrieve(query, Scope.all(), k)


def test_leakage_in_patient_mode_fails_the_run(small_set, index, home, monkeypatch, capsys):
    import eval.ragas_suite as suite

    _, folder = small_set

    def broken(corpus, choices, settings, progress=True):
        return RetrieverSet(retrievers={"leaky": _LeakyRetriever(BM25Retriever(index))},
                            labels={"leaky": "a scope-ignoring retriever"})

    monkeypatch.setattr(suite, "build_retrievers", broken)
    monkeypatch.setenv("CRAG_HOME", str(home))
    rc = main(["--corpus", str(folder / "corpus.jsonl"), "--queries", str(folder / "queries.jsonl"),
               "--qrels", str(folder / "qrels.tsv"), "--name", "synthea-small", "--models", "leaky", "--answer-limit", "0", "--quiet",
               "--out", str(home / "leaky-out")])
    err = capsys.readouterr().err
    assert rc == 3 and "leakage must be 0" in err and "leaky/patient" in err
    doc = json.loads((home / "leaky-out" / "results.json").read_text())
    assert doc["leakage_failures"]
    assert doc["results"]["synthea-small"]["patient"]["leaky"]["leakage_max"] > 0


def test_select_queries_is_seeded_and_skips_unjudged(small_set):
    beir, _ = small_set
    a, b = select_queries(beir, 5, seed=1), select_queries(beir, 5, seed=1)
    assert [q.query_id for q in a] == [q.query_id for q in b] and len(a) == 5
    assert [q.query_id for q in select_queries(beir, None, seed=2)] != [q.query_id for q in beir.queries]


def test_default_models_and_bm25_chunk_source(settings):
    names = [c.key for c in parse_models(None, settings)]
    assert names == ["me5-small", "minilm", "bm25", "hybrid"]  # no domain model trained in a fresh home
    bm25 = parse_models("/some/model,bm25", settings)[1]
    assert bm25.kind == "bm25" and bm25.embedder == "/some/model"
    hybrid = parse_models("me5-small,hybrid,hybrid:domain-x", settings)
    assert [(c.kind, c.embedder) for c in hybrid[1:]] == [("hybrid", "me5-small"), ("hybrid", "domain-x")]
    with pytest.raises(ValueError):
        parse_models("bm25,bm25", settings)


# --------------------------------------------------------------------------------------------
# caching of answers and verdicts


def test_cache_survives_a_torn_line(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = JsonlCache(path)
    cache.put("a", {"x": 1})
    with path.open("a") as fh:
        fh.write('{"key": "b", "val')  # the run died mid-write
    again = JsonlCache(path)
    assert again.get("a") == {"x": 1} and "b" not in again and again.skipped_lines == [2]
    again.put("c", 3)
    assert JsonlCache(path).get("c") == 3
    assert cache_key("x", {"b": 1, "a": 2}) == cache_key("x", {"a": 2, "b": 1})


def test_answers_are_cached_by_question_and_passages(tmp_path, double):
    from rag.llm import LLMClient

    double.set("ok", text="The patient has asthma [1].")
    llm = LLMClient(double.base_url, "double", timeout_s=5, max_retries=0)
    runner = AnswerRunner(llm, JsonlCache(tmp_path / "answers.jsonl"), k=2, max_tokens=32)
    hits = [_hit("d1", "p1", 1, "Asthma was diagnosed."), _hit("d2", "p1", 2, "No allergies.")]
    first = runner.answer(BM25Stub(), "stub", "Does the patient have asthma?", Scope.patient("p1"), hits)
    # the checked sentence, then the evidence it did not restate in full ("diagnosed"), quoted
    assert first["text"] == ("The patient has asthma [1].\nAlso in the record:\n[1] Asthma was diagnosed.\n"
                             "[2] No allergies.") and not first["cached"]
    assert first["citations"][0]["doc_id"] == "d1" and first["citations"][0]["source"] == "model"
    again = runner.answer(BM25Stub(), "stub", "Does the patient have asthma?", Scope.all(), hits)
    assert again["cached"] and again["text"] == first["text"] and len(double.requests) == 1
    other = runner.answer(BM25Stub(), "stub", "Does the patient have asthma?", Scope.patient("p1"), hits[:1])
    assert not other["cached"] and len(double.requests) == 2
    # a new runner over the same file resumes from it
    resumed = AnswerRunner(llm, JsonlCache(tmp_path / "answers.jsonl"), k=2, max_tokens=32)
    assert resumed.is_cached("Does the patient have asthma?", hits)


class BM25Stub:
    name = "bm25"


def test_judge_context_precision_verdicts_cache_and_failures(tmp_path, double):
    from eval.ragas_judge import JudgeSample, JudgeUnavailable, RagasJudge
    from rag.llm import LLMClient

    sample = JudgeSample("Has the patient asthma?", "Yes [1].", ["Asthma diagnosed 2001.", "Flu shot."],
                         reference="Yes, since 2001.")
    double.set("ok", text=json.dumps({"reason": "useful", "verdict": 1}))
    client = LLMClient(double.base_url, "double", timeout_s=5, max_retries=0)
    judge = RagasJudge(client, "double judge", JsonlCache(tmp_path / "judge.jsonl"),
                       metrics=("llm_context_precision",))
    res = judge.score(sample)
    # both contexts judged useful: (1/1 * 1 + 2/2 * 1) / 2 = 1
    assert res.values["llm_context_precision"] == pytest.approx(1.0)
    assert res.variants["llm_context_precision"] == "ContextPrecisionWithReference"
    sent = double.requests[0]["body"]["response_format"]
    assert sent["type"] == "json_schema"
    props = sent["json_schema"]["schema"]["properties"]
    assert props["verdict"]["enum"] == [0, 1] and props["reason"]["maxLength"] == 160
    n = len(double.requests)
    assert judge.score(sample).cached == {"llm_context_precision": True} and len(double.requests) == n
    assert judge.is_cached(sample)
    double.text = json.dumps({"reason": "not useful", "verdict": 0})
    noref = judge.score(JudgeSample(sample.question, sample.answer, sample.contexts, None))
    assert noref.values["llm_context_precision"] == pytest.approx(0.0, abs=1e-6)
    assert noref.variants["llm_context_precision"] == "ContextPrecisionWithoutReference"
    double.mode = "malformed"
    bad = judge.score(JudgeSample("Other question?", "No.", ["x"], "No."))
    assert bad.values["llm_context_precision"] is None and "LLMBadResponse" in bad.errors["llm_context_precision"]
    assert judge.score(JudgeSample("q", "a", [], "r")).errors["llm_context_precision"] == "no passages retrieved"
    down = RagasJudge(LLMClient(f"http://127.0.0.1:{closed_port()}/v1", "x", timeout_s=2, max_retries=0), "down",
                      JsonlCache(tmp_path / "j2.jsonl"), metrics=("llm_context_precision",))
    with pytest.raises(JudgeUnavailable):
        down.score(JudgeSample("q?", "a", ["c"], "r"))


# --------------------------------------------------------------------------------------------
# end to end with the real embedded generator (and it as the judge)


@pytest.mark.slow
def test_end_to_end_with_the_embedded_generator(small_set, index, home):
    _, folder = small_set
    doc = _run(folder, home, models=str(index.embedder.path), limit=3, answer_limit=1, judge_limit=1, k=2,
               judge_metrics=("llm_context_precision",))
    answered = [r for r in _records(doc) if r["answer"]]
    assert {r["mode"] for r in answered} == {"patient", "cross"}
    for rec in answered:
        assert rec["answer"]["text"].strip() and "llama.cpp" in rec["answer"]["generator"]
        assert rec["answer"]["passages"] == [h["chunk_id"] for h in rec["retrieved"]]
        value = rec["judge"]["values"]["llm_context_precision"]
        assert value is None or 0.0 <= value <= 1.0
    assert "SmolLM2" in doc["judge"]["judge"] and "weak judge" in doc["judge"]["judge"]
    assert "LLM-CP patient" in doc["markdown"]
    # a rerun generates nothing: answers and verdicts come from the cache
    again = _run(folder, home, models=str(index.embedder.path), limit=3, answer_limit=1, judge_limit=1, k=2,
                 judge_metrics=("llm_context_precision",))
    assert any("0 generated now, 2 from the cache" in line for line in again["ran"])


# --------------------------------------------------------------------------------------------


def _run(folder: Path, home: Path, *, models: str, limit: int, answer_limit: int = 0, judge_limit: int = 0,
         k: int = 5, judge_metrics=("llm_context_precision",), max_tokens: int = 48) -> dict:
    settings = load_settings(home=home, llm_threads=1)
    cfg = SuiteConfig(sets=[], beir_paths=(str(folder / "corpus.jsonl"), str(folder / "queries.jsonl"),
                                           str(folder / "qrels.tsv")), beir_name="synthea-small",
                      models=models, k=k, limit=limit, answer_limit=answer_limit, judge=judge_limit > 0,
                      judge_limit=judge_limit, judge_metrics=judge_metrics, max_tokens=max_tokens,
                      out=str(home / "out"), progress=False,
                      budget_s=None)
    return run_suite(cfg, settings)


def _records(doc: dict) -> list[dict]:
    return read_rows(Path(doc["out_dir"]) / "per_question.jsonl")


def test_judge_endpoint_and_generator_options(monkeypatch, settings, double):
    """--judge-endpoint/--judge-model (a vLLM server) with the key from the environment; --generator."""
    from eval.ragas_suite import generator_settings, judge_client

    monkeypatch.setenv("CRAG_JUDGE_API_KEY", "judge-secret")
    double.set("ok", text="ok")
    cfg = SuiteConfig(judge_endpoint=double.base_url, judge_model="qwen-judge")
    client, label = judge_client(cfg, settings, generator=None)
    assert client.chat([{"role": "user", "content": "hi"}]) == "ok"
    sent = double.requests[-1]
    assert sent["body"]["model"] == "qwen-judge" and sent["auth"] == "Bearer judge-secret"
    assert "qwen-judge at" in label and "judge-secret" not in label + repr(client)
    remote = generator_settings(settings, "http://gpu:8000/v1", "clinical-llm")
    assert (remote.llm_base_url, remote.llm_model) == ("http://gpu:8000/v1", "clinical-llm")
    local = generator_settings(settings, "/models/x.gguf", None)
    assert local.llm_base_url == "" and str(local.llm_gguf) == "/models/x.gguf"
