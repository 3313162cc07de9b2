"""rag.beir readers/writers and the eval.ir harness, end to end on a small synthea slice with the
tiny embedder (real Chroma index, real BM25 and RRF, real patient filter)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from eval.ir import ModelSpec, evaluate, main, parse_models, ranked_documents
from finetune.split import write_qa_split
from rag.beir import load_beir, load_named_set, qa_to_beir, write_beir
from rag.corpus import CorpusError, write_jsonl
from rag.retrieve import Hit, Scope
from tests.conftest import needs_shared
from tests.doubles import synced_index, write_rows

# ---- model list parsing --------------------------------------------------------------------

def test_parse_models_labels_bm25_and_hybrid_targets():
    specs = parse_models("domain=/models/ft,me5-small,minilm,bm25,hybrid,hybrid:domain")
    assert specs == [
        ModelSpec("domain", "dense", "/models/ft"),
        ModelSpec("me5-small", "dense", "me5-small"),
        ModelSpec("minilm", "dense", "minilm"),
        ModelSpec("bm25", "bm25", "me5-small"),  # chunks of the base model's index
        ModelSpec("hybrid", "hybrid", "me5-small"),  # bare hybrid fuses BM25 with the base
        ModelSpec("hybrid:domain", "hybrid", "/models/ft"),
    ]
    assert parse_models("minilm,bm25")[1] == ModelSpec("bm25", "bm25", "minilm")  # base absent: first dense
    for bad in ("", "a=x,a=y", "=x", "bm25,bm25"):
        with pytest.raises(ValueError):
            parse_models(bad)


# ---- query specificity ---------------------------------------------------------------------

def test_query_specificity_by_the_rarest_shared_word():
    from eval.specificity import mean_by_bucket, query_specificity

    docs = {f"d{i}": "the patient is stable, heart rate normal" for i in range(60)}
    docs["d0"] += " dopplerable pulses"  # 1 of 60 documents (<= 2%)
    for i in range(1, 5):  # "nitro" in 4 of 60 (6.7%)
        docs[f"d{i}"] += " nitro drip"
    queries = {"q-rare": "Were the pulses Dopplerable?", "q-mid": "Is the Nitro still running?",
               "q-common": "What is the patient's heart rate?", "q-none": "What is the diagnosis?",
               "q-unjudged": "anything"}
    qrels = {"q-rare": ["d0"], "q-mid": ["d1"], "q-common": ["d7"], "q-none": ["d8"], "q-unjudged": ["gone"]}
    buckets = query_specificity(docs, queries, qrels)
    assert buckets == {"q-rare": "specific", "q-mid": "partly specific", "q-common": "unspecific",
                       "q-none": "unspecific"}
    means = mean_by_bucket({"q-rare": 1.0, "q-mid": 0.5, "q-common": 0.2, "q-none": 0.0}, buckets)
    assert means == {"specific": 1.0, "partly specific": 0.5, "unspecific": pytest.approx(0.1)}
    assert mean_by_bucket({}, buckets)["specific"] is None


# ---- BEIR files ----------------------------------------------------------------------------

def test_write_and_load_beir_round_trip(tmp_path, tiny_set):
    paths = write_beir(tiny_set, tmp_path / "set")
    assert paths["qrels"].read_text().splitlines()[0] == "query_id\tdoc_id\tgrade"
    back = load_beir(paths["corpus"], paths["queries"], paths["qrels"], name="tiny-synthea")
    assert back.counts() == tiny_set.counts()
    assert [q.text for q in back.queries] == [q.text for q in tiny_set.queries]
    assert back.qrels == tiny_set.qrels


def test_load_beir_accepts_beir_spellings(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "aspirin"}\n'
                                           '{"_id": "d2", "title": "U", "text": "insulin"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "query": "which drug"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    beir = load_beir(tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv")
    assert beir.corpus.patient_structure == "one-per-document"
    assert beir.queries[0].text == "which drug" and beir.qrels == {"q1": {"d2": 1}}


def test_bad_rows_name_file_and_line(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"doc_id": "d1", "patient_id": "p", "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"query_id": "q1", "text": "a"}\n{not json\n{"query_id": "q1", "text": "b"}\n')
    (tmp_path / "qrels.tsv").write_text("query_id\tdoc_id\tgrade\nq1\td1\t1\nq1\td1\thigh\nq1\td1\n")
    with pytest.raises(CorpusError) as err:
        load_beir(tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv")
    assert re.search(r"queries\.jsonl:2: malformed", str(err.value))
    assert re.search(r"queries\.jsonl:3: .*already used on line 1", str(err.value))
    (tmp_path / "queries.jsonl").write_text('{"query_id": "q1", "text": "a"}\n')
    with pytest.raises(CorpusError) as err:
        load_beir(tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv")
    assert re.search(r"qrels\.tsv:3: malformed: grade 'high'", str(err.value))
    assert re.search(r"qrels\.tsv:4: malformed: expected 3", str(err.value))
    (tmp_path / "qrels.tsv").write_text("query_id\tdoc_id\tgrade\nq1\td9\t1\n")
    with pytest.raises(CorpusError, match="unknown document 'd9'"):
        load_beir(tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv")


def test_named_sets():
    synthea = load_named_set("synthea-conditions")
    assert synthea.corpus.name == "synthea" and len(synthea.queries) == 212
    assert all(q.patient_id for q in synthea.queries)
    assert synthea.counts()["relevant_pairs"] == 555
    with pytest.raises(ValueError, match="unknown evaluation set"):
        load_named_set("nope")


@needs_shared
def test_named_pubmedqa_set():
    pubmed = load_named_set("pubmedqa")
    assert len(pubmed.queries) == 1000 and len(pubmed.corpus) == 3358
    q = pubmed.queries[0]
    assert q.patient_id == f"pmid:{q.query_id.removeprefix('pqa-')}" and q.answer
    assert all(pubmed.corpus.by_id()[d].patient_id == q.patient_id for d in pubmed.qrels[q.query_id])


def test_qa_to_beir(tmp_path, tiny_set):
    doc = tiny_set.corpus.documents[0]
    rows = [{"qa_id": "a1", "doc_id": doc.doc_id, "patient_id": doc.patient_id, "question": "Q?", "answer": "A."},
            {"qa_id": "a2", "doc_id": doc.doc_id, "question": "R?", "answer": "B.", "question_type": "fact"}]
    qa = tmp_path / "qa.jsonl"
    write_rows(qa, rows)
    beir = qa_to_beir(qa, tiny_set.corpus, "qa")
    assert [q.query_id for q in beir.queries] == ["a1", "a2"]
    assert beir.queries[1].patient_id == doc.patient_id and beir.queries[1].answer == "B."
    assert beir.qrels == {"a1": {doc.doc_id: 1}, "a2": {doc.doc_id: 1}}
    qa.write_text(qa.read_text() + json.dumps({"qa_id": "a3", "doc_id": "nope", "question": "?"}) + "\n")
    with pytest.raises(CorpusError, match=r"qa\.jsonl:3: .*'nope' is not in corpus"):
        qa_to_beir(qa, tiny_set.corpus, "qa")


# ---- fetching until k distinct documents ---------------------------------------------------

def test_ranked_documents_doubles_fetch_until_k_documents():
    # every document has 3 chunks in a row: 10 documents need 30 chunks
    chunks = [Hit(f"c{i}", f"d{i // 3}", "p", "", 0, 1, 1.0 - i / 100, i + 1, "dense") for i in range(60)]
    requests = []

    def retrieve(query, scope, k):
        requests.append(k)
        return chunks[:k]

    out = ranked_documents(retrieve, "q", Scope.all(), k=10, start=10, cap=60)
    assert out.doc_ids == [f"d{i}" for i in range(10)]
    assert requests == [10, 20, 40] and out.chunks_needed == 28 and out.rounds == 3
    # a scope with fewer documents than k: stops when the retriever runs dry
    requests.clear()
    out = ranked_documents(lambda q, s, k: (requests.append(k), chunks[:12])[1], "q", Scope.all(), 10, 10, 60)
    assert len(out.doc_ids) == 4 and out.chunks_needed is None and requests == [10, 20]


# ---- the harness end to end ----------------------------------------------------------------

@pytest.fixture
def tiny_models(tiny_model_dir: Path) -> str:
    return f"tiny={tiny_model_dir},bm25,hybrid:tiny"


def test_evaluate_end_to_end_and_rerun_reuses_everything(tmp_path, settings, tiny_set, tiny_models):
    out = tmp_path / "out"
    res = evaluate(tiny_set, tiny_models, scope="both", k=20, settings=settings, out_dir=out, base="tiny",
                   progress=False, n_resamples=200, n_permutations=500)
    for name in ("results.json", "results.md", "map100.png", "ndcg10.png", "manifest.json"):
        assert (out / name).is_file(), name
    agg = res["aggregate"]
    assert set(agg) == {"cross", "patient"} and set(agg["cross"]) == {"tiny", "bm25", "hybrid:tiny"}
    n = len(tiny_set.queries)
    for scope in ("cross", "patient"):
        for label, entry in agg[scope].items():
            m = entry["map@100"]
            assert m["n"] == n and 0.0 <= m["ci95"][0] <= m["mean"] <= m["ci95"][1] <= 1.0
            assert len(res["per_query"][scope][label]["map@100"]) == n
            if label != "tiny":
                assert 0.0 < m["p_vs_base"] <= 1.0 and "ratio_vs_base" in m
    # queries are verbatim lines of their note: BM25 must rank the note at or near the top
    assert agg["cross"]["bm25"]["mrr@10"]["mean"] > 0.6
    assert agg["patient"]["bm25"]["mrr@10"]["mean"] >= agg["cross"]["bm25"]["mrr@10"]["mean"] - 1e-9
    # patient scope returns only the patient's documents, all 12 of them, and never more
    patient_of = {d.doc_id: d.patient_id for d in tiny_set.corpus.documents}
    for label in ("tiny", "bm25", "hybrid:tiny"):
        run = json.loads((out / "runs" / f"{label.replace(':', '-')}__patient.json").read_text())
        for q in tiny_set.queries:
            docs = run["ranked"][q.query_id]
            assert {patient_of[d] for d in docs} <= {q.patient_id}
            if label == "tiny":
                assert len(docs) == 12
        cross = json.loads((out / "runs" / f"{label.replace(':', '-')}__cross.json").read_text())
        if label == "tiny":  # 48 documents in all: 20 distinct ones per query, found by doubling the fetch
            assert all(len(d) == 20 for d in cross["ranked"].values())
            assert all(v is not None and v >= 20 for v in cross["chunks_needed"].values())
    # every dense store answer was complete (min(k, chunks in scope)) on the first try
    assert all(f["dense_short_returns"] == 0 and f["dense_retries"] == 0 for s in res["fetch"].values() for f in s.values())
    md = (out / "results.md").read_text()
    assert "AP@100 = (1/min(R,100))" in md and "| cross | bm25 |" in md
    spec = res["by_specificity"]  # the per-bucket means add up to the overall MAP
    assert sum(spec["queries"].values()) == n
    assert "MAP@100 by query specificity" in md
    for scope in ("cross", "patient"):
        per_q = res["per_query"][scope]["bm25"]["map@100"]
        buckets = [b for b in spec["queries"] if spec["queries"][b]]
        weighted = sum(spec["map@100"][scope]["bm25"][b] * spec["queries"][b] for b in buckets) / n
        assert weighted == pytest.approx(sum(per_q.values()) / n)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["k"] == 20 and "sentence-transformers" in manifest["versions"]

    again = evaluate(tiny_set, tiny_models, scope="both", k=20, settings=settings, out_dir=out, base="tiny",
                     progress=False, n_resamples=200, n_permutations=500)
    assert len(again["reused_runs"]) == 6
    assert all(m["index"]["chunks_embedded_now"] == 0 for m in again["models"].values())
    assert again["aggregate"] == res["aggregate"]


def test_cli_on_beir_files(tmp_path, settings, tiny_set, tiny_model_dir, capsys, monkeypatch):
    paths = write_beir(tiny_set.limited(4), tmp_path / "set")
    rc = main(["--corpus", str(paths["corpus"]), "--queries", str(paths["queries"]), "--qrels", str(paths["qrels"]),
               "--models", f"tiny={tiny_model_dir},bm25", "--base", "tiny", "--scope", "cross", "--k", "10",
               "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| cross | tiny |" in printed and "MAP@100" in printed
    assert json.loads((tmp_path / "out" / "results.json").read_text())["counts"]["queries"] == 4
    from eval.report import sha256_file

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"]["qrels"]["sha256"] == sha256_file(paths["qrels"])
    assert manifest["inputs"]["corpus"]["sha256"] == sha256_file(paths["corpus"])
    assert main(["--set", "nope"]) == 1


def test_write_qa_split_holds_only_the_split_patients(tmp_path, settings, tiny_set):
    docs = tmp_path / "documents.jsonl"
    write_jsonl(tiny_set.corpus.documents, docs)
    qa = tmp_path / "qa.jsonl"
    write_rows(qa, [{"qa_id": f"x{i}", "doc_id": d.doc_id, "patient_id": d.patient_id,
                     "question": f"What is in note {i}?", "answer": d.text[:40]}
                    for i, d in enumerate(tiny_set.corpus.documents)])
    from finetune.split import split_by_patient, write_split

    split = split_by_patient(tiny_set.corpus, seed=3, fractions=(0.5, 0.25, 0.25), by="patients")
    write_split(split, tmp_path / "splits")
    beir, paths = write_qa_split(qa, str(docs), "test", tmp_path / "beir", assignment=tmp_path / "splits" / "splits.json",
                                 settings=settings)
    test_patients = {p for p, s in split.patient_split.items() if s == "test"}
    assert {d.patient_id for d in beir.corpus.documents} == test_patients
    assert len(beir.queries) == len(beir.corpus) == 12
    back = load_beir(paths["corpus"], paths["queries"], paths["qrels"])
    assert {q.patient_id for q in back.queries} == test_patients
    # recomputing from the same seed and fractions gives the same split as the stored assignment
    again, _ = write_qa_split(qa, str(docs), "test", tmp_path / "beir2", seed=3, fractions=(0.5, 0.25, 0.25),
                              by="patients", settings=settings)
    assert [q.query_id for q in again.queries] == [q.query_id for q in beir.queries]
    assert json.loads((tmp_path / "beir" / "manifest.json").read_text())["counts"]["queries"] == 12


def test_exact_search_matches_brute_force_cosine_in_scope(tmp_path, settings, tiny_set, tiny_model_dir):
    """--search exact ranks a scope's chunks by their true cosine to the query (stored vectors)."""
    import numpy as np

    from rag.embedders import get_embedder
    from rag.retrieve import DenseRetriever

    index = synced_index(tiny_set.corpus.name, get_embedder(str(tiny_model_dir)), settings, tiny_set.corpus.documents)
    query = tiny_set.queries[0]
    qv = index.embedder.embed_queries([query.text])[0]
    exact = DenseRetriever(index, search="exact")
    got = index.collection.get(include=["embeddings", "metadatas"])
    rows = [i for i, m in enumerate(got["metadatas"]) if m["patient_id"] == query.patient_id]
    sims = {got["ids"][i]: float(np.dot(got["embeddings"][i], qv)) for i in rows}
    hits = exact.retrieve_by_vector(qv.tolist(), Scope.patient(query.patient_id), 1000)
    assert [h.chunk_id for h in hits] == sorted(sims, key=lambda c: (-sims[c], c))
    assert all(h.patient_id == query.patient_id for h in hits)
    assert [h.score for h in hits] == pytest.approx(sorted(sims.values(), reverse=True), abs=1e-5)

    res = evaluate(tiny_set, f"tiny={tiny_model_dir},hybrid:tiny", scope="patient", k=20, settings=settings,
                   out_dir=tmp_path / "exact", base="tiny", progress=False, n_resamples=100, n_permutations=100,
                   search="exact")
    assert res["search"] == "exact" and (tmp_path / "exact" / "runs" / "tiny__patient__exact.json").is_file()
    assert "exact cosine" in res["markdown"]
    assert res["fetch"]["patient"]["tiny"]["mean_docs_returned"] == 12.0  # every note of the patient
