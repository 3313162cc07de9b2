"""Users (bcrypt, 0600 file, allowed patients), the login rule at start-up, and the audit log."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rag import audit, auth
from rag.answer import Answer, Citation
from rag.config import REPO_ROOT
from rag.retrieve import Hit, Scope
from tests.doubles import FAST_ROUNDS as FAST


# --- users ----------------------------------------------------------------------------------------
def test_add_user_and_verify(tmp_path: Path) -> None:
    users = tmp_path / "sub" / "users.json"
    auth.add_user(users, "alice", "correct horse battery")  # default cost
    assert auth.verify(users, "alice", "correct horse battery")
    assert not auth.verify(users, "alice", "wrong password!")
    assert not auth.verify(users, "bob", "correct horse battery")  # unknown user
    assert not auth.verify(users, "alice", "")
    assert not auth.verify(tmp_path / "missing.json", "alice", "correct horse battery")
    entry = json.loads(users.read_text())["users"]["alice"]
    assert entry["password_hash"].startswith("$2")
    assert entry["allowed_patients"] is None


def test_password_never_stored_in_clear_and_mode_0600(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    auth.add_user(users, "alice", "s3cret-Passw0rd", rounds=FAST)
    auth.add_user(users, "bob", "another-Passw0rd", ["p1"], rounds=FAST)
    raw = users.read_bytes()
    assert b"s3cret-Passw0rd" not in raw and b"another-Passw0rd" not in raw
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    # no temporary files left behind by the atomic write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.json", "users.json.lock"]


def test_update_user_and_allowed_patients(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    auth.add_user(users, "alice", "first-password", rounds=FAST)
    auth.add_user(users, "bob", "bobs-password", ["p1", "p2", "p1", " "], rounds=FAST)
    assert auth.allowed_patients(users, "alice") is None
    assert auth.allowed_patients(users, "bob") == ["p1", "p2"]
    assert auth.allowed_patients(users, "mallory") == []  # unknown user with users configured: nothing
    assert auth.allowed_patients(tmp_path / "none.json", "local") is None  # no users: local mode, all
    auth.add_user(users, "alice", "second-password", ["p3"], rounds=FAST)
    assert not auth.verify(users, "alice", "first-password")
    assert auth.verify(users, "alice", "second-password")
    assert auth.allowed_patients(users, "alice") == ["p3"]
    assert auth.remove_user(users, "bob") and not auth.verify(users, "bob", "bobs-password")


def test_rejects_bad_names_and_weak_passwords(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    with pytest.raises(auth.AuthError, match="too short"):
        auth.add_user(users, "alice", "short", rounds=FAST)
    with pytest.raises(auth.AuthError, match="too long"):
        auth.add_user(users, "alice", "x" * 73, rounds=FAST)
    with pytest.raises(auth.AuthError, match="invalid user name"):
        auth.add_user(users, "../etc", "long-enough-pw", rounds=FAST)
    assert not users.exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert auth.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", None, "192.168.1.10", "10.0.0.1", "example.org", "0"])
def test_non_loopback_hosts(host: str | None) -> None:
    assert not auth.is_loopback(host)


def test_require_login_rule(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    assert auth.require_login("127.0.0.1", users) is False  # loopback, no users: open
    with pytest.raises(SystemExit) as info:
        auth.require_login("0.0.0.0", users)
    assert "no users are configured" in str(info.value) and "add-user" in str(info.value)
    auth.add_user(users, "alice", "long-enough-pw", rounds=FAST)
    assert auth.require_login("0.0.0.0", users) is True
    assert auth.require_login("127.0.0.1", users) is True  # users exist: login on every host


def test_app_refuses_public_bind_without_users(tmp_path: Path) -> None:
    """The real entry point, in a subprocess, must stop before loading any model."""
    env = {**os.environ, "CRAG_HOME": str(tmp_path / "empty-home")}
    # -X importtime lists every module the process imported (on stderr, one "import time:" line each)
    proc = subprocess.run([sys.executable, "-X", "importtime", "app.py", "--host", "0.0.0.0", "--port", "1"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    assert proc.returncode != 0
    assert "Refusing to start" in stderr and "0.0.0.0" in stderr
    assert "add-user" in stderr
    assert "embedding" not in stderr + proc.stdout
    assert "rag.auth" in imported  # the listing works
    heavy = imported & {"torch", "transformers", "sentence_transformers", "gradio", "chromadb", "xllamacpp"}
    assert not heavy, f"the login check ran after heavy imports: {sorted(heavy)}"
    assert not (tmp_path / "empty-home" / "store").exists()


def test_cli_add_user_reads_password_safely(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    pw_file = tmp_path / "pw.txt"
    pw_file.write_text("from-a-file-pw\n")
    base = [sys.executable, "-m", "rag.auth", "--users-file", str(users)]
    env = {k: v for k, v in os.environ.items() if k != auth.PASSWORD_ENV}
    run = lambda args, **kw: subprocess.run(base + args, cwd=REPO_ROOT, capture_output=True, text=True,  # noqa: E731
                                            stdin=subprocess.DEVNULL, timeout=60, **kw)
    p = run(["add-user", "alice", "--password-file", str(pw_file)], env=env)
    assert p.returncode == 0, p.stderr
    assert auth.verify(users, "alice", "from-a-file-pw")
    p = run(["add-user", "bob", "--patients", "p1,p2"], env={**env, auth.PASSWORD_ENV: "from-the-env-pw"})
    assert p.returncode == 0, p.stderr
    assert auth.verify(users, "bob", "from-the-env-pw") and auth.allowed_patients(users, "bob") == ["p1", "p2"]
    # no password source and no terminal: a clear error, nothing written
    p = run(["add-user", "carol"], env=env)
    assert p.returncode != 0 and "no password given" in p.stderr
    # a password as a plain argument is not an option
    p = run(["add-user", "dave", "--password", "plain-arg-pw"], env=env)
    assert p.returncode != 0
    assert "plain-arg-pw" not in users.read_text()
    listed = run(["list-users"], env=env)
    assert "alice\tall" in listed.stdout and "bob\tp1,p2" in listed.stdout and "$2" not in listed.stdout


# --- audit ----------------------------------------------------------------------------------------
SECRET_Q = "Does Sumiko254 take metformin for diabetes?"
SECRET_A = "Sumiko254 takes metformin 500 mg [1]."
CHUNK_TEXT = "# Medications\nmetformin 500 mg oral tablet; lisinopril 10 mg"


def _answer() -> Answer:
    hits = [
        Hit("c1", "d1", "p1", CHUNK_TEXT, 10, 10 + len(CHUNK_TEXT), 0.91, 1, "hybrid", {"date": "2020-01-02"}),
        Hit("c2", "d2", "p1", "Allergies: none known", 0, 21, 0.52, 2, "hybrid", {}),
    ]
    return Answer(question=SECRET_Q, text=SECRET_A, citations=[Citation(1, hits[0], "model")], passages=hits,
                  scope=Scope.patient("p1"), language="en", retriever="hybrid", embedder="me5-small",
                  generator="SmolLM2 test", prompt_version="answer-en-1",
                  timings={"retrieval_s": 0.0123456, "total_s": 1.5})


def test_audit_line_fields_and_no_clinical_text(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    log = audit.AuditLog(path, include_text=False)
    log.record(answer=_answer(), user="alice", selected_patient="p1", scope=Scope.patient("p1"), question=SECRET_Q)
    (line,) = audit.read_audit(path)
    for key in ("time", "user", "scope", "selected_patient", "retriever", "embedder", "generator",
                "retrieved", "cited", "answer_hash", "timings", "outcome"):
        assert key in line, key
    assert line["user"] == "alice" and line["scope"] == ["p1"] and line["selected_patient"] == "p1"
    assert (line["retriever"], line["embedder"], line["generator"]) == ("hybrid", "me5-small", "SmolLM2 test")
    assert [r["chunk_id"] for r in line["retrieved"]] == ["c1", "c2"]
    assert line["retrieved"][0]["sha256"] == audit.sha256_text(CHUNK_TEXT)
    assert line["cited"] == [1] and line["citation_sources"] == {"1": "model"}
    assert line["answer_hash"] == _answer().answer_hash()
    assert line["timings"]["total_s"] == 1.5
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    raw = path.read_text()
    for secret in ("Sumiko254", "metformin", "Allergies", "diabetes"):
        assert secret not in raw, secret
    assert "question" not in line and "answer" not in line
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_audit_includes_text_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit.AuditLog(path, include_text=True).record(answer=_answer(), user="bob", selected_patient=None,
                                                   scope=Scope.all(), question=SECRET_Q)
    (line,) = audit.read_audit(path)
    assert line["question"] == SECRET_Q and line["answer"] == SECRET_A
    assert "metformin 500 mg oral tablet" not in path.read_text()  # chunk text stays out even then


def test_audit_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = audit.AuditLog(path)
    log.record(answer=_answer(), user="alice", selected_patient="p1", scope=Scope.patient("p1"))
    first = path.read_bytes()
    log.record(user="bob", selected_patient=None, scope=Scope.all(), outcome="error", error="LLMUnavailable",
               retriever="bm25", embedder="minilm", generator="g")
    assert path.read_bytes().startswith(first)
    lines = audit.read_audit(path)
    assert [x["user"] for x in lines] == ["alice", "bob"]
    assert lines[1]["scope"] == "all" and lines[1]["outcome"] == "error" and lines[1]["error"] == "LLMUnavailable"
    assert lines[1]["retrieved"] == [] and lines[1]["answer_hash"] is None


def test_audit_failure_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    log = audit.AuditLog(blocker / "audit.jsonl")
    with pytest.raises(audit.AuditError):
        log.check()
    with pytest.raises(audit.AuditError):
        log.record(answer=_answer(), user="alice", selected_patient="p1", scope=Scope.patient("p1"))
