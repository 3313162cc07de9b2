"""One settings object for the whole system.

Values come, lowest priority first, from the defaults below, an optional TOML file (``CRAG_CONFIG``
or ``clinical-rag.toml`` in the working directory) and environment variables ``CRAG_<FIELD>``.
Secrets (API key, pseudonymization key) are only ever read from the environment or a file named
here, never written into code or logs; ``Settings.__repr__`` hides them.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import rag  # noqa: F401  (applies the offline environment)

ENV_PREFIX = "CRAG_"
REPO_ROOT = Path(__file__).resolve().parent.parent
SECRET_FIELDS = {"llm_api_key"}


def _default_shared_data() -> Path:
    return REPO_ROOT.parent / "shared" / "data"


def _default_model_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "clinical-rag" / "models"


def read_secret(value: str | None, file: str | Path | None) -> str:
    """A secret from its variable or, when that is empty, from a file (first line, stripped): the
    one rule for every key the project reads, so none ends up in code or in a command line."""
    if value:
        return value
    if file:
        return Path(file).expanduser().read_text(encoding="utf-8").strip()
    return ""


@dataclass
class Settings:
    # data and storage
    data_dir: Path = field(default_factory=_default_shared_data)  # ../shared/data: the named sets
    demo_data_dir: Path = REPO_ROOT / "data"  # what ships with the project (synthea demo corpus)
    home: Path = REPO_ROOT / "var"  # run-time state: stores, users, audit log
    model_cache: Path = field(default_factory=_default_model_cache)  # converted models (me5-small)
    # retrieval
    corpus: str = "synthea"
    embedder: str = "me5-small"
    chunk_tokens: int = 256
    chunk_overlap_tokens: int = 32
    top_k: int = 5
    device: str = "cpu"
    # where the chunk store lives: empty = an on-disk Chroma under <home>/store; "http://host:8000" = a
    # Chroma server shared by several app or pipeline processes (docs/deployment.md, "Chroma server")
    chroma_url: str = ""
    # generator (OpenAI-compatible; empty base_url = start the embedded llama.cpp server)
    llm_base_url: str = ""
    llm_model: str = "clinical-llm"
    llm_api_key: str = ""
    llm_api_key_file: Path | None = None
    llm_timeout_s: float = 120.0
    llm_max_retries: int = 3
    llm_gguf: Path | None = None  # embedded server: a GGUF path; default is the bundled SmolLM2
    llm_threads: int = 1
    llm_ctx: int = 4096
    llm_max_tokens: int = 384
    # privacy and access
    privacy_key_file: Path | None = None
    phi_tagger: Path | None = None  # a finetune.phi_tagger folder added to the de-id rules (opt-in)
    phi_tagger_float32: bool = False  # run it in float32 even where the CPU has native bfloat16
    users_file: Path | None = None  # default: <home>/users.json
    audit_log: Path | None = None  # default: <home>/audit/audit.jsonl
    audit_include_text: bool = False
    # app
    host: str = "127.0.0.1"
    port: int = 7860

    def __post_init__(self) -> None:
        if self.users_file is None:
            self.users_file = self.home / "users.json"
        if self.audit_log is None:
            self.audit_log = self.home / "audit" / "audit.jsonl"

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    def api_key(self) -> str:
        """The generator API key: the variable wins, then the key file, else a placeholder servers accept."""
        return read_secret(self.llm_api_key, self.llm_api_key_file) or "EMPTY"

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(name: str, raw: Any, hint: Any) -> Any:
    text = str(raw)
    hint_s = str(hint)
    if raw is None or (text == "" and "None" in hint_s):
        return None
    if "Path" in hint_s:
        return Path(text).expanduser()
    if hint is bool or hint_s == "bool":
        if isinstance(raw, bool):
            return raw
        if text.lower() in {"1", "true", "yes", "on"}:
            return True
        if text.lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a boolean, got {text!r}")
    if hint is int or hint_s == "int":
        return int(raw)
    if hint is float or hint_s == "float":
        return float(raw)
    return text


def configured_values(config_file: str | Path | None = None) -> dict[str, Any]:
    """The raw values the TOML file and the ``CRAG_*`` environment set (environment wins).

    Separate from :func:`load_settings` so a caller can tell a chosen value from a default one
    (the app picks its embedder only where nobody chose one).
    """
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    path = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if path is None and Path("clinical-rag.toml").is_file():
        path = "clinical-rag.toml"
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        unknown = set(data) - set(hints)
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        values.update(data)
    for name in hints:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = env
    return values


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults < TOML file < ``CRAG_*`` environment < explicit keyword overrides."""
    hints = get_type_hints(Settings)
    values = configured_values(config_file)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
