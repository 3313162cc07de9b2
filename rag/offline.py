"""The environment that keeps every library we use off the network (docs/design.md §8).

Set with ``setdefault`` so an operator can still override a value deliberately (for example
``HF_HUB_OFFLINE=0`` on a GPU host that may download e5-large). Kept free of heavy imports: it runs
on every ``import rag``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "RAGAS_DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "DO_NOT_TRACK": "1",
}


def _llama_index_tiktoken_cache() -> str | None:
    """The tiktoken encodings llama-index-core ships; without this, tiktoken downloads them."""
    try:
        spec = importlib.util.find_spec("llama_index.core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    cache = Path(spec.origin).parent / "_static" / "tiktoken_cache"
    return str(cache) if cache.is_dir() else None


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        cache = _llama_index_tiktoken_cache()
        if cache:
            os.environ["TIKTOKEN_CACHE_DIR"] = cache
    # NLTK_DATA pointing at an empty folder makes llama-index download into it; unset is safe.
