"""Answer latency with the embedded generator, run by hand (not part of the tests).

    .venv/bin/python bench/answer_latency.py [--questions 10] [--k 5] [--threads 1] [--generator smollm2]

Evidence-first answers on the synthea demo index (me5-small, hybrid retrieval, patient-scoped): time
until the evidence sentences are shown, to the first generated token, and to the whole answer, and
which path each answer took (generated, quoted, abstained). Targets on this 2-core CPU: evidence
< 1.5 s and first token < 10 s (p50). Needs the demo index (``python -m rag.index --corpus
synthea``); builds it if missing. Writes bench/out/answer_latency.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.config import load_settings  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
QUESTIONS = [
    "Which medications is this patient on?",
    "What allergies does the patient have?",
    "Has the patient been diagnosed with hypertension?",
    "What was the plan at the last visit?",
    "Does the patient smoke?",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--generator", default=None, help="smollm2, qwen2.5-coder-0.5b, ... or a GGUF path")
    args = ap.parse_args()

    from rag.answer import AnswerPipeline
    from rag.index import build_index
    from rag.local_llm import EmbeddedLLMServer
    from rag.retrieve import Scope, make_retriever

    settings = load_settings()
    index, _ = build_index("synthea", settings.embedder, settings)
    retriever = make_retriever("hybrid", index)
    patients = sorted({m["patient_id"] for m in index.all_chunks()[2]})
    rows = []
    with EmbeddedLLMServer(args.generator, threads=args.threads) as server:
        pipe = AnswerPipeline(retriever, server.client(), k=args.k, max_tokens=settings.llm_max_tokens)
        pipe.answer("warm-up question", Scope.patient(patients[0]))
        for i in range(args.questions):
            q, pid = QUESTIONS[i % len(QUESTIONS)], patients[i % len(patients)]
            a = pipe.answer(q, Scope.patient(pid))
            t = a.timings
            rows.append({**t, "retrieval_share_of_first_token": t["retrieval_s"] / t.get("first_token_s", t["total_s"]),
                         "citations": len(a.citations), "passages": len(a.passages), "path": a.path,
                         "dropped": len(a.dropped)})
            print(f"{i + 1:2d} evidence {t.get('evidence_s', 0):.2f} s  first token {t.get('first_token_s', 0):.2f} s  "
                  f"total {t['total_s']:.2f} s  {a.path}  citations {len(a.citations)}  dropped {len(a.dropped)}")
        label = server.label
    med = lambda key: statistics.median([r[key] for r in rows if key in r] or [0.0])  # noqa: E731
    summary = {
        "generator": label, "embedder": index.embedder.label, "retriever": "hybrid", "k": args.k, "n": len(rows),
        "median_evidence_s": med("evidence_s"), "median_first_token_s": med("first_token_s"),
        "max_first_token_s": max([r["first_token_s"] for r in rows if "first_token_s" in r] or [0.0]),
        "paths": {p: sum(r["path"] == p for r in rows) for p in {r["path"] for r in rows}},
        "median_total_s": med("total_s"), "median_retrieval_s": med("retrieval_s"),
        "median_retrieval_share_of_first_token": med("retrieval_share_of_first_token"), "rows": rows,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "answer_latency.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
