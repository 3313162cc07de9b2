"""eval.answers: key facts, unanswerable questions, the abstention-rule choice, and a real run end to end."""
from __future__ import annotations

import json

from eval.answers import Question, Result, choose_threshold, key_facts, main, recall, specific_terms, unanswerable


def test_key_facts_are_the_references_words_the_question_does_not_hold():
    facts = key_facts("Metformin 500 mg twice daily since 2019.", "Which dose of metformin does she take?")
    assert "500" in facts and "2019" in facts and not any(f.startswith("metfor") for f in facts)
    assert recall(facts, "She takes 500 mg of it, started in 2019, twice daily.") == 1.0
    assert recall(set(), "anything") is None


def _q(qid: str, patient: str, reference: str, answerable: bool = True, asked: str = "",
       question: str = "") -> Question:
    return Question(qid, "s", "c", patient, question or f"question {qid}?", reference, "en", answerable, asked)


def test_unanswerable_questions_are_asked_where_the_facts_are_missing():
    texts = {"c": {"p1": "vancomycin trough 15 on day 3", "p2": "insulin glargine 20 units at night",
                   "p3": "vancomycin trough 15 and creatinine 1.2", "p4": "ceftriaxone 2 g daily"}}
    questions = [_q("a", "p1", "vancomycin trough 15", question="Which vancomycin level?"),
                 _q("b", "p2", "insulin glargine 20 units", question="What glargine dose?")]
    out = unanswerable(questions, texts, count=10, seed=0, rounds=3)
    assert out and all(not q.answerable and q.asked_patient != q.patient_id for q in out)
    for q in out:  # the scope it is asked in lacks (nearly) all of its facts
        assert recall(key_facts(q.reference, q.question), texts["c"][q.asked_patient]) <= 0.2
    assert all(q.asked_patient != "p3" for q in out if q.patient_id == "p1")  # p3 holds a's facts
    assert len({(q.qid) for q in out}) == len(out)  # one question per (question, other patient)
    assert max(sum(q.patient_id == p for q in out) for p in ("p1", "p2")) >= 2  # several rounds
    assert len(unanswerable(questions, texts, count=1, seed=0)) == 1


def test_generic_questions_are_never_unanswerable_in_another_scope():
    # "What medications is she on?" has a true answer in every record; "vancomycin" does not
    assert specific_terms("What medications is the patient on?") == set()
    assert specific_terms("When was the vancomycin trough drawn?") == {"vancom", "trough"}
    assert specific_terms("Wann wurde Vancomycin abgesetzt?", "de") >= {"vancom"}
    texts = {"c": {"p1": "vancomycin trough 15 on day 3", "p2": "metoprolol 25 mg; medications reviewed"}}
    generic = Question("g", "s", "c", "p1", "What medications is the patient on?", "vancomycin 1 g", "en")
    specific = Question("v", "s", "c", "p1", "What was the vancomycin trough?", "15 on day 3", "en")
    out = unanswerable([generic, specific], texts, count=10, seed=0)
    assert [q.qid for q in out] == ["v@p2"]


def _result(answerable: bool, strength: float, similarity: float, question: str = "When was dobutamine stopped?") -> Result:
    q = _q(f"{strength}-{similarity}-{question}", "p1", "x", answerable, question=question)
    return Result(q, "evidence", 1, 1.0, 1.0, 1.0, False, "evidence", strength=strength, similarity=similarity)


def test_the_pair_rule_is_chosen_within_the_answerable_budget():
    # answerable: strong coverage or strong similarity; unanswerable: weak on both
    results = [_result(True, 0.6, 0.80), _result(True, 0.2, 0.90), _result(True, 0.5, 0.86), _result(True, 0.7, 0.9),
               _result(True, 0.1, 0.79), _result(False, 0.25, 0.80), _result(False, 0.3, 0.82),
               _result(False, 0.15, 0.83)]
    choice = choose_threshold(results, max_abstain_answerable=0.2)
    assert choice["answerable"] == 5 and choice["unanswerable"] == 3
    assert choice["abstain_answerable"] <= 0.2 and choice["pair"]["abstain_answerable"] <= 0.2
    assert choice["pair"]["abstain_unanswerable"] >= choice["abstain_unanswerable"]
    assert choice["pair"]["abstain_unanswerable"] == 1.0  # coverage alone cannot separate 0.2 from 0.25/0.3


def test_the_rule_keeps_a_margin_to_both_targets():
    # 10 answerable, 10 unanswerable: abstaining on 2 answerable catches 10/10 unanswerable, on 1 only 9/10,
    # on 0 only 8/10; the widest margin (min(0.2 - a, u - 0.8)) is a = 0.1, u = 0.9, not the 0.2 / 1.0 edge
    good = [0.10, 0.25] + [0.9] * 8
    bad = [0.05, 0.06, 0.07, 0.08, 0.09, 0.11, 0.12, 0.13, 0.20, 0.30]
    results = [_result(True, c, 0.5) for c in good] + [_result(False, c, 0.5) for c in bad]
    choice = choose_threshold(results)
    assert (choice["abstain_answerable"], choice["abstain_unanswerable"]) == (0.1, 0.9)
    # generic answerable questions never abstain, however weak their evidence: they count as kept
    generic = [_result(True, 0.0, 0.1, question="What is the diagnosis?") for _ in range(10)]
    choice = choose_threshold(results + generic)
    assert choice["answerable"] == 20 and choice["abstain_unanswerable"] == 1.0
    assert choice["abstain_answerable"] == 0.1  # 2 of the 10 specific ones, none of the generic ones


def test_a_real_run_writes_the_table_the_plot_and_every_question(tmp_path, tiny_model_dir):
    out = tmp_path / "answers"
    # all 52 facts: only a few are specific enough to be unanswerable in another synthea record
    code = main(["--sets", "synthea-facts", "--paths", "passages,evidence,quoted", "--limit", "0",
                 "--unanswerable", "2", "--embedder", str(tiny_model_dir), "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    paths = {row["path"] for row in results["rows"]}
    assert paths == {"passages", "evidence", "quoted"}
    for row in results["rows"]:
        assert row["questions"] == 52 and 0 <= (row["recall"] or 0) <= (row["ceiling"] or 0) + 1e-9
    rows = [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * (52 + 2)  # every path answered every question
    assert any(not r["answerable"] for r in rows)
    assert (out / "answers.png").stat().st_size > 0 and "recall / ceiling" in (out / "results.md").read_text()


def test_the_rule_can_be_chosen_on_several_sets_pooled(tmp_path, tiny_model_dir):
    out = tmp_path / "pooled"
    assert main(["--sets", "synthea-facts", "--choose-on", "synthea-facts,qa-train", "--out", str(out)]) == 2
    code = main(["--sets", "synthea-facts,handchecked", "--paths", "evidence", "--limit", "0", "--unanswerable", "4",
                 "--abstain-below", "0", "--choose-on", "synthea-facts,handchecked", "--embedder", str(tiny_model_dir),
                 "--out", str(out)])
    assert code == 0
    choice = json.loads((out / "results.json").read_text())["threshold_choice"]
    pooled = choice["synthea-facts+handchecked"]
    assert pooled["answerable"] == choice["synthea-facts"]["answerable"] + choice["handchecked"]["answerable"]
    assert pooled["unanswerable"] == choice["synthea-facts"]["unanswerable"] + choice["handchecked"]["unanswerable"]
