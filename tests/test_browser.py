"""End to end in a real browser: the real app (me5-small index, embedded llama.cpp generator, login)
driven by headless Debian Chromium through Playwright.

The app indexes the first 125 synthea notes (``--limit 125``: the notes are grouped by patient, so
that is three complete patients, ~300 chunks, ~15 s to embed on 2 CPU cores; the whole corpus takes
~5 minutes). The user may see two of the three patients, so the test also checks that the picker
and the answer stay inside those.

Artifacts: ``tests/artifacts/browser_chat.png`` (screenshot after the answer) and
``tests/artifacts/browser_app.log`` (the app's output). Skipped without ``/usr/bin/chromium``
(``apt-get install -y chromium``), except under ``CI=true``, where that is a failure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from rag import auth
from rag.audit import read_audit
from rag.config import REPO_ROOT
from tests.doubles import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LIMIT = 125
USER, PASSWORD = "alice", "browser-test-pw"
QUESTION = "Which medications is this patient on?"
FOLLOW_UP = "Does the patient smoke?"
STARTUP_TIMEOUT_S = 420
ANSWER_TIMEOUT_S = 240


def _require_chromium() -> None:
    import importlib.util

    if CHROMIUM.is_file() and importlib.util.find_spec("playwright") is not None:
        return
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is missing: install Debian chromium (apt-get install -y chromium) to run the browser test"
    else:
        reason = "the playwright package is missing: pip install -e '.[dev]'"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + " (CI=true: the browser test must run in CI)")
    pytest.skip(reason)


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class RunningApp:
    def __init__(self, url: str, home: Path, proc: subprocess.Popen, log_path: Path, patients: list, startup_s: float):
        self.url, self.home, self.proc, self.log_path = url, home, proc, log_path
        self.patients, self.startup_s = patients, startup_s

    def log_tail(self, n: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").replace("\r", "\n")
        return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="module")
def running_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    _require_chromium()
    from rag.config import load_settings
    from rag.corpus import load_corpus, load_patients

    home = tmp_path_factory.mktemp("browser") / "crag-home"
    settings = load_settings(home=home)
    present = load_corpus("synthea", settings, limit=LIMIT).patients()
    patients = [p for p in load_patients("synthea", settings) if p.patient_id in present]
    assert len(patients) >= 3, "expected three patients in the first notes"
    allowed = [patients[0], patients[1]]
    auth.add_user(settings.users_file, USER, PASSWORD, [p.patient_id for p in allowed])

    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "browser_app.log"
    port = free_port()
    env = {**os.environ, "CRAG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("CRAG_USERS_FILE", None)
    env.pop("CRAG_AUDIT_LOG", None)
    t0 = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--limit", str(LIMIT)],
                                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    app = RunningApp(url, home, proc, log_path, allowed + [patients[2]], 0.0)
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode} during start-up:\n{app.log_tail()}")
            if _http_status(url + "/") == 200:
                break
            if time.perf_counter() - t0 > STARTUP_TIMEOUT_S:
                pytest.fail(f"the app did not answer HTTP 200 within {STARTUP_TIMEOUT_S} s:\n{app.log_tail()}")
            time.sleep(1.0)
        app.startup_s = time.perf_counter() - t0
        print(f"\n[browser test] app start-up (index build + generator + launch): {app.startup_s:.1f} s")
        yield app
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_login_pick_patient_ask_and_see_sources(running_app: RunningApp) -> None:
    from playwright.sync_api import sync_playwright

    app = running_app
    allowed, other = app.patients[:2], app.patients[2]
    picked = allowed[1]  # not the one preselected, so picking really happens
    # without login the app gives away nothing
    assert _http_status(app.url + "/config") in (401, 403)

    t0 = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.set_default_timeout(60_000)
            page.goto(app.url + "/")
            page.locator("input[type=password]").wait_for()
            assert page.locator("#patient-picker").count() == 0  # nothing but the login form
            page.locator("input[type=text]").fill(USER)
            page.locator("input[type=password]").fill(PASSWORD)
            page.get_by_role("button", name="Login").click()
            page.locator("#patient-picker").wait_for()
            page.wait_for_function(
                "() => (document.querySelector('#status') || {}).innerText?.includes('Signed in as')")

            # the picker lists only the user's patients, searchable by name
            picker = page.locator("#patient-picker input")
            picker.click()
            page.get_by_role("option").first.wait_for()
            options = page.get_by_role("option").all_inner_texts()
            assert len(options) == 2, options
            assert not any(other.patient_id[:8] in o for o in options), options
            picker.fill("")
            picker.press_sequentially(picked.name.split()[0].lower())
            page.get_by_role("option", name=picked.name.split()[0]).click()
            assert picked.patient_id[:8] in picker.input_value()

            page.locator("#question textarea").fill(QUESTION)
            t_ask = time.perf_counter()
            page.locator("#send").click()
            # evidence first: the list reaches the chat, and its sentences are marked in their documents,
            # before the generated answer is complete
            page.wait_for_function("() => document.querySelector('#chatbot').innerText.includes('Evidence from the record')",
                                   timeout=ANSWER_TIMEOUT_S * 1000)
            evidence_s = time.perf_counter() - t_ask
            evidence_lines = [line for line in page.locator("#chatbot").inner_text().splitlines()
                              if picked.name in line and "document" in line]
            assert evidence_lines, page.locator("#chatbot").inner_text()
            page.wait_for_function(  # the step finished: the panel shows the answer's sources, not the evidence
                "() => !/Evidence \\(|Searching|Writing the answer/.test(document.querySelector('#sources').innerText)",
                timeout=ANSWER_TIMEOUT_S * 1000)
            answer_s = time.perf_counter() - t_ask
            chat_text = page.locator("#chatbot").inner_text()
            assert QUESTION in chat_text
            answer_text = chat_text.split(QUESTION, 1)[1].strip()
            assert answer_text and answer_text != "…", chat_text
            assert "⚠" not in answer_text, answer_text  # no generator/audit error message

            assert "Evidence from the record" in answer_text and "Answer" in answer_text, answer_text
            assert page.locator("#sources mark").count() >= 1  # the cited sentence is highlighted in its document
            cards = page.locator("#sources .src-card")
            card_patients = {cards.nth(i).get_attribute("data-patient-id") for i in range(cards.count())}
            assert card_patients == {picked.patient_id}, card_patients
            assert picked.name in page.locator("#sources").text_content()
            if page.locator("#sources h4").count() == 0 and page.locator("#sources details").count():
                page.locator("#sources details summary").first.click()  # nothing cited: show the passages
            page.screenshot(path=str(ARTIFACTS / "browser_chat.png"), full_page=True)

            # a follow-up question in the same session: the history goes back and forth intact
            page.locator("#question textarea").fill(FOLLOW_UP)
            page.locator("#question textarea").press("Enter")
            page.wait_for_function(  # the question is in the chat and the step finished (sources final)
                "q => document.querySelector('#chatbot').innerText.includes(q)"
                " && !/Searching|Writing the answer/.test(document.querySelector('#sources').innerText)",
                arg=FOLLOW_UP, timeout=ANSWER_TIMEOUT_S * 1000)
            follow_text = page.locator("#chatbot").inner_text().split(FOLLOW_UP, 1)[1].strip()
            assert follow_text and "⚠" not in follow_text, follow_text
            assert QUESTION in page.locator("#chatbot").inner_text()
        finally:
            browser.close()
    browser_s = time.perf_counter() - t0

    lines = read_audit(app.home / "audit" / "audit.jsonl")
    for _ in range(50):  # the line is written as the step ends; give the server a moment
        if len(lines) >= 2:
            break
        time.sleep(0.2)
        lines = read_audit(app.home / "audit" / "audit.jsonl")
    assert len(lines) == 2, f"expected one audit line per question, got {len(lines)}"
    last = lines[0]
    assert last["user"] == USER and last["outcome"] == "answered"
    assert last["selected_patient"] == picked.patient_id and last["scope"] == [picked.patient_id]
    assert last["retrieved"] and all(r["patient_id"] == picked.patient_id for r in last["retrieved"])
    assert "question" not in last and QUESTION not in json.dumps(last)
    print(f"[browser test] evidence in the browser: {evidence_s:.1f} s; answer + sources: {answer_s:.1f} s; "
          f"browser session {browser_s:.1f} s; "
          f"app start-up {app.startup_s:.1f} s")
