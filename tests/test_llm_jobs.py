"""The resumable LLM job runner on its own, against the loopback OpenAI double over real HTTP (the
``double`` fixture of tests/conftest.py): a rerun skips finished ids, a torn last line is cut before
resuming, a server that goes away midway stops the run with the finished rows kept and a rerun
finishes the rest, and many requests in flight still write every id once and whole."""
from __future__ import annotations

from pathlib import Path

import pytest

from finetune.llm_jobs import Appends, EndpointPool, JobStopped, ResumableJob, open_generator
from tests.doubles import read_rows as _rows
from tests.openai_double import OpenAIDouble

IDS = [f"d{i:02d}" for i in range(10)]


def _requested(double: OpenAIDouble) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in double.chat_requests]


def _job(out: Path, **kw) -> ResumableJob[str]:
    return ResumableJob([out], id_of=lambda item: item, label="test", progress=False, **kw)


def _translate_like(pool: EndpointPool, out: Path):
    """What a stage's item function does: one call per item, one row out."""

    async def work(item: str) -> Appends:
        result = await pool.acomplete([{"role": "user", "content": item}], max_tokens=8)
        return [(out, [{"doc_id": item, "text": result.text}])]

    return work


@pytest.fixture
def fast(settings):
    return settings.replace(llm_max_retries=0, llm_timeout_s=5.0)


def test_rerun_skips_finished_ids(tmp_path, fast, double):
    out = tmp_path / "out" / "docs.jsonl"
    job = _job(out)
    todo = job.pending(IDS[:4])
    with open_generator([double.base_url], settings=fast, model="double") as pool:
        job.run(todo, _translate_like(pool, out), pool=pool)
    assert job.counts.done == 4 and job.counts.skipped == 0
    first = out.read_bytes()

    double.reset()
    job = _job(out)
    todo = job.pending(IDS)
    assert todo == IDS[4:] and job.counts.skipped == 4
    with open_generator([double.base_url], settings=fast, model="double") as pool:
        job.run(todo, _translate_like(pool, out), pool=pool)
    assert sorted(_requested(double)) == IDS[4:]  # nothing finished was sent again
    assert out.read_bytes().startswith(first)  # append-only: earlier rows untouched
    assert [r["doc_id"] for r in _rows(out)] == IDS


def test_a_torn_last_line_is_cut_and_its_item_redone(tmp_path, fast, double):
    out = tmp_path / "docs.jsonl"
    out.write_bytes(b'{"doc_id": "d00", "text": "done"}\n{"doc_id": "d01", "te')  # killed mid-write
    job = _job(out)
    todo = job.pending(IDS[:3])
    assert todo == ["d01", "d02"]
    with open_generator([double.base_url], settings=fast, model="double") as pool:
        job.run(todo, _translate_like(pool, out), pool=pool)
    assert [r["doc_id"] for r in _rows(out)] == ["d00", "d01", "d02"]  # every line parses, none twice


def test_a_failed_item_is_left_undone_and_the_next_run_retries_it(tmp_path, fast, double):
    out = tmp_path / "docs.jsonl"
    double.set("http_error", status=500, fail_times=1)
    job = _job(out)
    with open_generator([double.base_url], settings=fast, model="double") as pool:
        counts = job.run(job.pending(IDS[:4]), _translate_like(pool, out), pool=pool)
    assert (counts.done, counts.failed) == (3, 1)  # one failure does not stop the run
    assert sorted(r["doc_id"] for r in _rows(out)) == IDS[1:4]
    job = _job(out)
    assert job.pending(IDS[:4]) == ["d00"]


def test_a_server_gone_midway_stops_the_run_and_a_rerun_finishes_it(tmp_path, fast, double):
    out = tmp_path / "docs.jsonl"
    job = _job(out, max_consecutive_failures=3)
    with open_generator([double.base_url], settings=fast, model="double") as pool:
        work = _translate_like(pool, out)
        served = []

        async def dies_after_four(item: str) -> Appends:
            if len(served) == 4:
                double.stop()  # the server goes away: the port refuses new connections
                await pool.aclose()  # and the kept-alive ones are gone with it
            served.append(item)
            return await work(item)

        with pytest.raises(JobStopped) as stop:
            job.run(job.pending(IDS), dies_after_four, pool=pool)
    msg = str(stop.value)
    assert "3 documents in a row failed" in msg and "run the same command again to resume" in msg
    assert "LLM server unavailable" in msg  # the client's own explanation of what failed
    assert (stop.value.counts.done, stop.value.counts.failed) == (4, 3)
    assert [r["doc_id"] for r in _rows(out)] == IDS[:4]  # finished rows kept
    assert len(served) == 7  # no new item started after the third failure in a row

    with OpenAIDouble() as second:
        job = _job(out)
        todo = job.pending(IDS)
        assert todo == IDS[4:]
        with open_generator([second.base_url], settings=fast, model="double") as pool:
            job.run(todo, _translate_like(pool, out), pool=pool)
        assert sorted(_requested(second)) == IDS[4:]
    assert [r["doc_id"] for r in _rows(out)] == IDS


def test_concurrent_items_are_each_written_once_and_whole(tmp_path, fast, double):
    ids = [f"c{i:02d}" for i in range(24)]
    out, progress = tmp_path / "rows.jsonl", tmp_path / "progress.jsonl"
    job: ResumableJob[str] = ResumableJob([out, progress], done_in=[progress], id_of=lambda item: item,
                                          label="test", progress=False, concurrency=8)
    inflight, peak = [0], [0]
    double.set("hang", hang_s=0.05, text="x" * 2000)  # slow answers: many requests in flight at once
    with open_generator([double.base_url], settings=fast, model="double") as pool:

        async def work(item: str) -> Appends:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
            try:
                result = await pool.acomplete([{"role": "user", "content": item}], max_tokens=8)
            finally:
                inflight[0] -= 1
            # several rows per item, then the marking row in the second log
            return [(out, [{"doc_id": item, "part": k, "text": result.text} for k in range(3)]),
                    (progress, [{"doc_id": item}])]

        counts = job.run(job.pending(ids), work, pool=pool)
    assert peak[0] > 1 and counts.done == len(ids)
    rows = _rows(out)
    assert len(rows) == 3 * len(ids) and all(len(r["text"]) == 2000 for r in rows)
    # an item's rows sit together (one write), never interleaved with another item's
    assert [r["doc_id"] for r in rows[::3]] == [r["doc_id"] for r in _rows(progress)]
    assert all(rows[i]["doc_id"] == rows[i + 1]["doc_id"] == rows[i + 2]["doc_id"] for i in range(0, len(rows), 3))
    assert sorted(r["doc_id"] for r in _rows(progress)) == ids
