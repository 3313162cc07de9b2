"""The one generator client of the project (docs/design.md §5).

The app, QA synthesis and the judges all talk to an OpenAI-compatible chat endpoint through
:class:`LLMClient`: vLLM on a GPU host, any hosted OpenAI-compatible API, or the embedded llama.cpp
server that :mod:`rag.local_llm` starts on loopback when no endpoint is configured.

One implementation over ``httpx`` (sync and async share request building, response parsing and the
retry policy):

* retries with exponential backoff and jitter on connection errors, timeouts, HTTP 429 and 5xx, and
  on malformed bodies; never on other 4xx;
* after the retries: :class:`LLMUnavailable` (could not reach the server, or it kept timing out or
  rate-limiting), :class:`LLMBadResponse` (5xx, malformed JSON, no choices, a stream that broke);
  :class:`LLMRequestError` for a 4xx the server will keep refusing (context too long, bad schema);
* a stream is retried only until its first text delta was handed out; a break after that raises
  :class:`LLMBadResponse` at once (the caller already showed part of the answer);
* messages carry clinical text, so nothing here logs them: logs hold status codes, attempt counts
  and timings only, and the API key is never logged or shown in ``repr``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, Any]]

MAX_BACKOFF_S = 30.0
_ERROR_DETAIL_CHARS = 200


class LLMError(RuntimeError):
    """Any failure of the generator endpoint."""


class LLMUnavailable(LLMError):
    """The server could not be reached, or kept timing out or rate-limiting, after all retries."""


class LLMBadResponse(LLMError):
    """The server answered, but not usably: HTTP 5xx, malformed JSON, no choices, a broken stream."""


class LLMRequestError(LLMError):
    """The server refused the request with a 4xx other than 429 (not retried: it would refuse again)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class ChatResult:
    """One completed chat request: the text plus what the server said about it (no prompt)."""

    text: str
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    attempts: int = 1
    elapsed_s: float = 0.0
    timings: dict[str, Any] = field(default_factory=dict)  # llama.cpp's per-request timings, if sent


class _Retry(Exception):
    """Internal: one attempt failed in a retryable way."""

    def __init__(self, kind: str, detail: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(detail)
        self.kind = kind  # "unavailable" or "bad"
        self.detail = detail
        self.status = status
        self.retry_after = retry_after


# --------------------------------------------------------------------------------------------
# Pure helpers shared by the sync and async paths


def _error_detail(resp: httpx.Response) -> str:
    """A short description of an error body: the server's own message, truncated."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        msg = err.get("message") or err.get("type") or ""
    elif isinstance(err, str):
        msg = err
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        msg = body["detail"]
    else:
        msg = ""
    msg = " ".join(str(msg).split())
    return msg[:_ERROR_DETAIL_CHARS] + ("..." if len(msg) > _ERROR_DETAIL_CHARS else "")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _check_status(resp: httpx.Response) -> None:
    """Raise _Retry for retryable statuses, LLMRequestError for the others; pass on 2xx."""
    status = resp.status_code
    if 200 <= status < 300:
        return
    detail = _error_detail(resp)
    suffix = f": {detail}" if detail else ""
    if status == 429:
        raise _Retry("unavailable", f"HTTP 429 (rate limited){suffix}", status=status, retry_after=_retry_after(resp))
    if status >= 500:
        raise _Retry("bad", f"HTTP {status}{suffix}", status=status, retry_after=_retry_after(resp))
    hint = ""
    if status == 401 or status == 403:
        hint = (" (check the API key: CRAG_LLM_API_KEY or CRAG_LLM_API_KEY_FILE; the embedded server "
                "wants its own EmbeddedLLMServer.api_key, which server.client() and get_llm_client() pass)")
    elif status == 404:
        hint = " (check CRAG_LLM_BASE_URL, which should end in /v1, and the model name CRAG_LLM_MODEL)"
    raise LLMRequestError(f"the LLM server refused the request: HTTP {status}{suffix}{hint}", status)


def _parse_completion(resp: httpx.Response) -> ChatResult:
    try:
        body = resp.json()
    except ValueError:
        raise _Retry("bad", f"malformed JSON body (HTTP {resp.status_code}, {len(resp.content)} bytes)") from None
    if not isinstance(body, dict):
        raise _Retry("bad", "JSON body is not an object")
    if "error" in body and not body.get("choices"):
        raise _Retry("bad", f"error object in a 2xx body: {_error_detail(resp)}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Retry("bad", "response has no choices")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    if not isinstance(message, dict):
        raise _Retry("bad", "first choice has no message")
    content = message.get("content")
    if content is None:
        content = ""
        if not message.get("reasoning_content") and not message.get("tool_calls") and choice.get("finish_reason") is None:
            raise _Retry("bad", "first choice has no content")
    if not isinstance(content, str):
        raise _Retry("bad", "message content is not a string")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    timings = body.get("timings") if isinstance(body.get("timings"), dict) else {}
    return ChatResult(text=content, finish_reason=choice.get("finish_reason"), usage=usage,
                      model=body.get("model"), timings=timings)


class _SSEParser:
    """Turns the lines of an OpenAI-style SSE stream into text deltas; raises on garbage."""

    def __init__(self) -> None:
        self.done = False
        self.finish_reason: str | None = None
        self.events = 0

    def feed(self, line: str) -> str | None:
        """One line of the stream: the text delta it carries, or None."""
        if self.done:
            return None
        line = line.rstrip("\r")
        if not line or line.startswith(":"):  # event separator, comment / keep-alive ping
            return None
        if line.startswith(("event:", "id:", "retry:")):
            return None
        if not line.startswith("data:"):
            raise _Retry("bad", f"stream sent a line that is not server-sent events (after {self.events} events)")
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(payload)
        except ValueError:
            raise _Retry("bad", f"stream sent malformed JSON (after {self.events} events)") from None
        self.events += 1
        if not isinstance(event, dict):
            raise _Retry("bad", "stream event is not a JSON object")
        if "error" in event:
            err = event["error"]
            msg = err.get("message", "") if isinstance(err, dict) else str(err)
            msg = " ".join(str(msg).split())[:_ERROR_DETAIL_CHARS]
            raise _Retry("bad", f"stream reported an error: {msg}")
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise _Retry("bad", "stream event has no choices list")
        if not choices:  # e.g. the final usage-only chunk
            return None
        choice = choices[0] if isinstance(choices[0], dict) else {}
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if content is not None and not isinstance(content, str):
            raise _Retry("bad", "stream delta content is not a string")
        return content or None

    def check_end(self) -> None:
        if not self.done and self.finish_reason is None:
            raise _Retry("bad", f"stream ended without [DONE] or a finish_reason (after {self.events} events)")


def _schema_errors(value: Any, schema: Mapping[str, Any]) -> str | None:
    """First reason ``value`` does not match ``schema``; None when it does (jsonschema if installed)."""
    try:
        import jsonschema  # a transitive dependency; the small check below covers its absence
    except ImportError:
        return _mini_check(value, schema, "$")
    try:
        jsonschema.validate(value, dict(schema))
    except jsonschema.ValidationError as exc:
        path = "$" + "".join(f"[{p!r}]" for p in exc.absolute_path)
        return f"{path}: {exc.validator} check failed"
    except jsonschema.SchemaError:
        return _mini_check(value, schema, "$")
    return None


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def _mini_check(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    expected = schema.get("type")
    if isinstance(expected, str) and expected in _TYPES:
        ok = isinstance(value, _TYPES[expected]) and not (expected in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return f"{path}: expected {expected}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: not one of the enum values"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{path}: missing required key {key!r}"
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and isinstance(sub, Mapping):
                err = _mini_check(value[key], sub, f"{path}.{key}")
                if err:
                    return err
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            err = _mini_check(item, schema["items"], f"{path}[{i}]")
            if err:
                return err
    return None


def _parse_json_output(result: ChatResult, schema: Mapping[str, Any]) -> dict[str, Any]:
    text = result.text.strip()
    if text.startswith("```"):  # some servers without constrained decoding fence their JSON
        text = text.strip("`")
        if text.startswith("json"):
            text = text[4:]
    try:
        value = json.loads(text)
    except ValueError:
        if result.finish_reason == "length":
            raise LLMBadResponse(
                f"structured output was cut off at max_tokens ({len(result.text)} characters, "
                "finish_reason=length): raise max_tokens or simplify the schema") from None
        raise _Retry("bad", f"structured output is not valid JSON ({len(result.text)} characters)") from None
    if not isinstance(value, dict):
        raise _Retry("bad", "structured output is not a JSON object")
    err = _schema_errors(value, schema)
    if err:
        raise _Retry("bad", f"structured output does not match the schema ({err})")
    return value


# --------------------------------------------------------------------------------------------


class LLMClient:
    """Chat client over one OpenAI-compatible endpoint (``base_url`` ends in ``/v1``).

    Thread-safe for the sync methods (one pooled ``httpx.Client``); the async methods keep one
    ``httpx.AsyncClient`` per event loop, so many requests can be in flight at once.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        *,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        label: str | None = None,
        default_max_tokens: int | None = None,
        connect_timeout_s: float | None = None,
    ):
        if not base_url:
            raise ValueError("LLMClient needs a base_url such as http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key or "EMPTY"
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.label = label or f"OpenAI-compatible server at {self.base_url} (model {model})"
        self.default_max_tokens = default_max_tokens
        connect = min(self.timeout_s, connect_timeout_s if connect_timeout_s is not None else 10.0)
        self._timeout = httpx.Timeout(self.timeout_s, connect=connect)
        self._headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._aclients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = (
            weakref.WeakKeyDictionary())
        self._sleep = time.sleep  # replaceable in tests
        self._asleep = asyncio.sleep

    # ---- construction / description

    @classmethod
    def from_settings(cls, settings: Any, *, label: str | None = None) -> "LLMClient":
        """A client for ``settings.llm_base_url``. Use :func:`rag.local_llm.get_llm_client` to also
        cover the case of no configured endpoint (it starts the embedded server)."""
        if not settings.llm_base_url:
            raise ValueError("settings.llm_base_url is empty: set CRAG_LLM_BASE_URL, or use "
                             "rag.local_llm.get_llm_client() to start the embedded llama.cpp server")
        return cls(
            settings.llm_base_url,
            settings.llm_model,
            settings.api_key(),
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            default_max_tokens=getattr(settings, "llm_max_tokens", None),
            label=label or f"OpenAI-compatible server at {settings.llm_base_url.rstrip('/')} "
                           f"(model {settings.llm_model})",
        )

    def describe(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return (f"LLMClient(base_url={self.base_url!r}, model={self.model!r}, api_key='***', "
                f"timeout_s={self.timeout_s}, max_retries={self.max_retries}, label={self.label!r})")

    @property
    def attempts(self) -> int:
        return self.max_retries + 1

    # ---- plumbing

    def _http(self) -> httpx.Client:
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = httpx.Client(timeout=self._timeout, headers=self._headers, trust_env=False)
                client = self._client
        return client

    def _ahttp(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(timeout=self._timeout, headers=self._headers, trust_env=False,
                                       limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
            self._aclients[loop] = client
        return client

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._aclients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def __enter__(self) -> "LLMClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _payload(self, messages: Messages, *, max_tokens: int | None, temperature: float | None,
                 seed: int | None, response_format: Mapping[str, Any] | None, stream: bool,
                 stop: Sequence[str] | None, extra_body: Mapping[str, Any] | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages]}
        max_tokens = max_tokens if max_tokens is not None else self.default_max_tokens
        if max_tokens is not None:
            payload["max_tokens"] = int(max_tokens)
        if temperature is not None:
            payload["temperature"] = float(temperature)
        if seed is not None:
            payload["seed"] = int(seed)
        if response_format is not None:
            payload["response_format"] = dict(response_format)
        if stop:
            payload["stop"] = list(stop)
        if stream:
            payload["stream"] = True
        if extra_body:
            payload.update(extra_body)
        return payload

    def _delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Backoff before retry number ``attempt`` (1-based): backoff_s * 2**(attempt-1), with jitter
        in [0.5, 1.0) of that, capped; a server's Retry-After raises it (capped as well)."""
        base = min(MAX_BACKOFF_S, self.backoff_s * (2 ** (attempt - 1)))
        delay = base * (0.5 + 0.5 * random.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF_S))
        return delay

    def _final_error(self, exc: _Retry, attempts: int, what: str) -> LLMError:
        where = self.label if self.base_url in self.label else f"{self.label} (base_url {self.base_url})"
        if exc.kind == "unavailable":
            return LLMUnavailable(
                f"LLM server unavailable: {what} failed after {attempts} attempt(s) against {where}; "
                f"last error: {exc.detail}. Check that the server is up "
                f"and reachable, and that CRAG_LLM_BASE_URL points at it (empty = start the embedded "
                f"llama.cpp server); timeout is {self.timeout_s:g} s per attempt (CRAG_LLM_TIMEOUT_S).")
        return LLMBadResponse(
            f"bad response from the LLM server: {what} failed after {attempts} attempt(s) against "
            f"{where}; last error: {exc.detail}")

    def _log_retry(self, what: str, exc: _Retry, attempt: int, delay: float) -> None:
        log.warning("LLM %s attempt %d/%d failed (%s%s); retrying in %.2f s", what, attempt, self.attempts,
                    exc.kind, f", HTTP {exc.status}" if exc.status else "", delay)

    @staticmethod
    def _transport_error(exc: httpx.HTTPError) -> _Retry:
        if isinstance(exc, httpx.TimeoutException):
            return _Retry("unavailable", f"timed out ({type(exc).__name__})")
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return _Retry("unavailable", f"connection failed ({type(exc).__name__}: {exc})")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return _Retry("unavailable", f"connection dropped ({type(exc).__name__})")
        return _Retry("unavailable", f"transport error ({type(exc).__name__})")

    # ---- sync API

    def complete(self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = 0.0,
                 seed: int | None = None, response_format: Mapping[str, Any] | None = None,
                 stop: Sequence[str] | None = None, extra_body: Mapping[str, Any] | None = None) -> ChatResult:
        """One chat completion with the full result (text, finish_reason, usage, attempts, timing)."""
        payload = self._payload(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                response_format=response_format, stream=False, stop=stop, extra_body=extra_body)
        return self._run(lambda: self._post_once(payload), "chat")

    def chat(self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = 0.0,
             seed: int | None = None, response_format: Mapping[str, Any] | None = None,
             stop: Sequence[str] | None = None, extra_body: Mapping[str, Any] | None = None) -> str:
        """The assistant's text for ``messages``."""
        return self.complete(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                             response_format=response_format, stop=stop, extra_body=extra_body).text

    def chat_json(self, messages: Messages, schema: Mapping[str, Any], name: str = "output", *,
                  max_tokens: int | None = None, temperature: float | None = 0.0, seed: int | None = None,
                  extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Structured output: a dict parsed from the reply and checked against ``schema``.

        Sent as ``response_format={"type": "json_schema", "json_schema": {"name", "schema"}}``, which
        vLLM (xgrammar) and llama.cpp (llguidance) enforce while decoding. Output that is not JSON or
        does not match is retried, then raises LLMBadResponse; a reply cut off by max_tokens raises at
        once (a retry would be cut off the same way).
        """
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}
        payload = self._payload(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                response_format=rf, stream=False, stop=None, extra_body=extra_body)
        return self._run(lambda: _parse_json_output(self._post_once(payload), schema), "chat_json")

    def stream(self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = 0.0,
               seed: int | None = None, response_format: Mapping[str, Any] | None = None,
               stop: Sequence[str] | None = None, extra_body: Mapping[str, Any] | None = None) -> Iterator[str]:
        """Text deltas as the server produces them.

        Failures before the first delta are retried like :meth:`chat`; after it, a stream that breaks,
        stalls past the timeout or sends garbage raises LLMBadResponse immediately.
        """
        payload = self._payload(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                response_format=response_format, stream=True, stop=stop, extra_body=extra_body)
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            yielded = 0
            parser = _SSEParser()
            try:
                with self._http().stream("POST", f"{self.base_url}/chat/completions", json=payload) as resp:
                    if resp.status_code >= 300:
                        resp.read()
                    _check_status(resp)
                    for line in resp.iter_lines():
                        delta = parser.feed(line)
                        if delta:
                            if yielded == 0:
                                log.debug("LLM stream first token after %.3f s (attempt %d)",
                                          time.monotonic() - started, attempt)
                            yielded += 1
                            yield delta
                        if parser.done:
                            break
                    parser.check_end()
                log.debug("LLM stream done: %d deltas, finish_reason=%s, %.3f s, attempt %d",
                          yielded, parser.finish_reason, time.monotonic() - started, attempt)
                return
            except (httpx.HTTPError, _Retry) as exc:
                err = exc if isinstance(exc, _Retry) else self._transport_error(exc)
                if yielded:
                    log.warning("LLM stream broke after %d deltas (%s)", yielded, err.kind)
                    raise LLMBadResponse(
                        f"the LLM stream from {self.base_url} broke after {yielded} text deltas: "
                        f"{err.detail}") from None
                if attempt >= self.attempts:
                    log.warning("LLM stream failed after %d attempts (%s)", attempt, err.kind)
                    raise self._final_error(err, attempt, "stream") from None
                delay = self._delay(attempt, err.retry_after)
                self._log_retry("stream", err, attempt, delay)
                self._sleep(delay)

    def health(self, timeout_s: float = 5.0) -> bool:
        """True when GET {base_url}/models answers 200."""
        try:
            resp = self._http().get(f"{self.base_url}/models", timeout=min(timeout_s, self.timeout_s))
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def _post_once(self, payload: dict[str, Any]) -> ChatResult:
        try:
            resp = self._http().post(f"{self.base_url}/chat/completions", json=payload)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        _check_status(resp)
        return _parse_completion(resp)

    def _run(self, once: Any, what: str) -> Any:
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            t0 = time.monotonic()
            try:
                result = once()
            except _Retry as err:
                if attempt >= self.attempts:
                    log.warning("LLM %s failed after %d attempts (%s%s), %.2f s", what, attempt, err.kind,
                                f", HTTP {err.status}" if err.status else "", time.monotonic() - started)
                    raise self._final_error(err, attempt, what) from None
                delay = self._delay(attempt, err.retry_after)
                self._log_retry(what, err, attempt, delay)
                self._sleep(delay)
                continue
            if isinstance(result, ChatResult):
                result.attempts = attempt
                result.elapsed_s = time.monotonic() - started
            log.debug("LLM %s ok: attempt %d, %.3f s", what, attempt, time.monotonic() - t0)
            return result
        raise AssertionError("unreachable")

    # ---- async API

    async def acomplete(self, messages: Messages, *, max_tokens: int | None = None,
                        temperature: float | None = 0.0, seed: int | None = None,
                        response_format: Mapping[str, Any] | None = None, stop: Sequence[str] | None = None,
                        extra_body: Mapping[str, Any] | None = None) -> ChatResult:
        payload = self._payload(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                response_format=response_format, stream=False, stop=stop, extra_body=extra_body)

        async def once() -> ChatResult:
            return await self._apost_once(payload)

        return await self._arun(once, "chat")

    async def achat(self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = 0.0,
                    seed: int | None = None, response_format: Mapping[str, Any] | None = None,
                    stop: Sequence[str] | None = None, extra_body: Mapping[str, Any] | None = None) -> str:
        return (await self.acomplete(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                     response_format=response_format, stop=stop, extra_body=extra_body)).text

    async def achat_json(self, messages: Messages, schema: Mapping[str, Any], name: str = "output", *,
                         max_tokens: int | None = None, temperature: float | None = 0.0, seed: int | None = None,
                         extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}
        payload = self._payload(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                response_format=rf, stream=False, stop=None, extra_body=extra_body)

        async def once() -> dict[str, Any]:
            return _parse_json_output(await self._apost_once(payload), schema)

        return await self._arun(once, "chat_json")

    async def astream(self, messages: Messages, *, max_tokens: int | None = None,
                      temperature: float | None = 0.0, seed: int | None = None,
                      response_format: Mapping[str, Any] | None = None, stop: Sequence[str] | None = None,
                      extra_body: Mapping[str, Any] | None = None) -> AsyncIterator[str]:
        """Async twin of :meth:`stream` (same retry rule: only before the first delta)."""
        payload = self._payload(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                response_format=response_format, stream=True, stop=stop, extra_body=extra_body)
        for attempt in range(1, self.attempts + 1):
            yielded = 0
            parser = _SSEParser()
            try:
                async with self._ahttp().stream("POST", f"{self.base_url}/chat/completions", json=payload) as resp:
                    if resp.status_code >= 300:
                        await resp.aread()
                    _check_status(resp)
                    async for line in resp.aiter_lines():
                        delta = parser.feed(line)
                        if delta:
                            yielded += 1
                            yield delta
                        if parser.done:
                            break
                    parser.check_end()
                return
            except (httpx.HTTPError, _Retry) as exc:
                err = exc if isinstance(exc, _Retry) else self._transport_error(exc)
                if yielded:
                    raise LLMBadResponse(
                        f"the LLM stream from {self.base_url} broke after {yielded} text deltas: "
                        f"{err.detail}") from None
                if attempt >= self.attempts:
                    raise self._final_error(err, attempt, "stream") from None
                delay = self._delay(attempt, err.retry_after)
                self._log_retry("stream", err, attempt, delay)
                await self._asleep(delay)

    async def ahealth(self, timeout_s: float = 5.0) -> bool:
        try:
            resp = await self._ahttp().get(f"{self.base_url}/models", timeout=min(timeout_s, self.timeout_s))
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def _apost_once(self, payload: dict[str, Any]) -> ChatResult:
        try:
            resp = await self._ahttp().post(f"{self.base_url}/chat/completions", json=payload)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        _check_status(resp)
        return _parse_completion(resp)

    async def _arun(self, once: Any, what: str) -> Any:
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                result = await once()
            except _Retry as err:
                if attempt >= self.attempts:
                    log.warning("LLM %s failed after %d attempts (%s%s), %.2f s", what, attempt, err.kind,
                                f", HTTP {err.status}" if err.status else "", time.monotonic() - started)
                    raise self._final_error(err, attempt, what) from None
                delay = self._delay(attempt, err.retry_after)
                self._log_retry(what, err, attempt, delay)
                await self._asleep(delay)
                continue
            if isinstance(result, ChatResult):
                result.attempts = attempt
                result.elapsed_s = time.monotonic() - started
            return result
        raise AssertionError("unreachable")


__all__ = [
    "ChatResult",
    "LLMBadResponse",
    "LLMClient",
    "LLMError",
    "LLMRequestError",
    "LLMUnavailable",
]
