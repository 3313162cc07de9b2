"""A loopback stand-in for an OpenAI-compatible server, with switchable misbehaviours.

Stdlib only (``http.server`` on a daemon thread). Serves ``GET /v1/models`` and
``POST /v1/chat/completions`` (plain JSON and SSE streaming) and counts requests, so tests can
assert how many attempts a client made.

Behaviours (``double.mode``):

``ok``              fixed text (``double.text``); ``"stream": true`` gets SSE chunks, one per word.
``http_error``      answers ``double.status`` (500 by default) ``double.fail_times`` times, then ok
                    (``fail_times=None``: always fails). ``double.retry_after`` adds that header.
``hang``            accepts the request and sends nothing for ``double.hang_s`` seconds.
``malformed``       200 with a body that is not JSON.
``empty_choices``   200 with ``{"choices": []}``.
``broken_stream``   streams ``double.stream_chunks_before_break`` deltas, then drops the connection
                    mid-body (no terminating chunk, no ``[DONE]``).
``truncated_stream`` streams a few deltas and ends the body cleanly but without ``[DONE]`` or a
                    ``finish_reason``.
``garbage_stream``  streams ``double.stream_chunks_before_break`` deltas, then a line that is not SSE.
``stream_error_first`` the first ``fail_times`` streams send garbage before any delta, then ok.

:func:`closed_port` gives a loopback port nothing listens on (connection refused).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = {"ok", "http_error", "hang", "malformed", "empty_choices", "broken_stream", "truncated_stream",
         "garbage_stream", "stream_error_first"}


def closed_port() -> int:
    """A loopback port that refuses connections (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenAIDouble:
    def __init__(self, mode: str = "ok", *, text: str = "Hello from the double, all good.",
                 status: int = 500, fail_times: int | None = None, hang_s: float = 30.0,
                 stream_chunks_before_break: int = 2, retry_after: float | None = None, model: str = "double"):
        self.text = text
        self.status = status
        self.fail_times = fail_times
        self.hang_s = hang_s
        self.stream_chunks_before_break = stream_chunks_before_break
        self.retry_after = retry_after
        self.model = model
        self.mode = mode
        self.requests: list[dict[str, Any]] = []  # {"method", "path", "body", "time", "auth"}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- configuration

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; one of {sorted(MODES)}")
        self._mode = value

    def set(self, mode: str, **attrs: Any) -> "OpenAIDouble":
        """Switch behaviour and reset the request log."""
        self.mode = mode
        for key, value in attrs.items():
            if not hasattr(self, key):
                raise AttributeError(key)
            setattr(self, key, value)
        self.reset()
        return self

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    @property
    def count(self) -> int:
        """Chat-completion requests received since the last reset."""
        return len(self.chat_requests)

    # ---- lifecycle

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "OpenAIDouble":
        double = self

        class Handler(_Handler):
            owner = double

        self._stop.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "OpenAIDouble":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- internal

    def _record(self, method: str, path: str, body: Any, auth: str | None) -> int:
        with self._lock:
            self.requests.append({"method": method, "path": path, "body": body, "time": time.monotonic(),
                                  "auth": auth})
            return sum(1 for r in self.requests if r["path"].endswith("/chat/completions"))


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- helpers

    def _send_json(self, status: int, obj: Any, extra_headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _send_raw(self, status: int, raw: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _event(self, obj: Any) -> None:
        self._chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _delta(self, content: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if content is not None:
            delta["content"] = content
        return {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.owner.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _pieces(self) -> list[str]:
        words = self.owner.text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    def _completion(self) -> dict[str, Any]:
        return {"id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()),
                "model": self.owner.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.owner.text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(self._pieces()),
                          "total_tokens": 7 + len(self._pieces())}}

    # -- routes

    def do_GET(self) -> None:
        self.owner._record("GET", self.path, None, self.headers.get("Authorization"))
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": self.owner.model, "object": "model"}]})
        elif self.path.rstrip("/").endswith("/health"):
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, {"error": {"message": "not found", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self.owner._record("POST", self.path, body, self.headers.get("Authorization"))
            self._send_json(404, {"error": {"message": "not found", "type": "not_found"}})
            return
        n = self.owner._record("POST", self.path, body, self.headers.get("Authorization"))
        stream = bool(isinstance(body, dict) and body.get("stream"))
        owner = self.owner
        mode = owner.mode
        failing = owner.fail_times is None or n <= owner.fail_times

        if mode == "http_error" and failing:
            headers = {"Retry-After": str(owner.retry_after)} if owner.retry_after is not None else None
            self._send_json(owner.status, {"error": {"message": f"double says {owner.status}",
                                                     "type": "server_error", "code": owner.status}}, headers)
            return
        if mode == "hang":
            owner._stop.wait(owner.hang_s)
            try:
                self._send_json(200, self._completion())
            except OSError:
                pass
            return
        if mode == "malformed":
            self._send_raw(200, b'{"choices": [{"message": {"content": "unterminated')
            return
        if mode == "empty_choices":
            self._send_json(200, {"id": "x", "object": "chat.completion", "choices": []})
            return
        if stream:
            self._stream(mode, failing)
            return
        self._send_json(200, self._completion())

    def _stream(self, mode: str, failing: bool) -> None:
        owner = self.owner
        pieces = self._pieces()
        self._start_stream()
        if mode == "stream_error_first" and failing:
            self._chunk(b"this is not an event stream\n\n")
            self._end_chunks()
            return
        self._event(self._delta(None, role=True))
        if mode in ("broken_stream", "garbage_stream", "truncated_stream"):
            for piece in pieces[: owner.stream_chunks_before_break]:
                self._event(self._delta(piece))
                time.sleep(0.01)
            if mode == "garbage_stream":
                self._chunk(b"<html>502 Bad Gateway</html>\n\n")
                self._end_chunks()
            elif mode == "truncated_stream":
                self._end_chunks()
            else:  # broken: a chunk header promising more bytes than ever arrive, then a hard close
                self.wfile.write(b"400\r\ndata: {\"choi")
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return
        for piece in pieces:
            self._event(self._delta(piece))
        self._event(self._delta(None, finish="stop"))
        self._chunk(b"data: [DONE]\n\n")
        self._end_chunks()
