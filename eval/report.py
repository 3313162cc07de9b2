"""Result files every harness writes: JSON, a markdown table, a PNG chart, and a run manifest.

One place for the output formats, so ``eval.ir``, ``eval.ragas_suite`` and the pipeline produce
reports that look and hash the same way (project standard: JSON + markdown table + PNG plot +
``manifest.json`` with inputs, hashes, versions, timings).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

#: Packages whose versions every manifest records (missing ones are left out).
MANIFEST_PACKAGES: tuple[str, ...] = (
    "clinical-rag", "torch", "sentence-transformers", "transformers", "chromadb", "llama-index-core",
    "bm25s", "numpy", "ragas", "xllamacpp", "matplotlib",
)


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | Path) -> Path:
    """Pretty JSON, written atomically (a reader never sees half a file); NaN becomes null."""
    path = Path(path)
    text = json.dumps(_nan_to_none(obj), indent=2, ensure_ascii=False, default=_to_jsonable, allow_nan=False)
    _atomic_write(path, text + "\n")
    return path


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table; floats with 3 decimals, missing cells as ``-``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_markdown_table(rows: list[dict], columns: list[str], path: str | Path | None, *,
                         title: str | None = None, notes: Sequence[str] = ()) -> str:
    """Write (when ``path`` is given) and return a markdown document: optional title, table, notes."""
    parts = []
    if title:
        parts.append(f"## {title}\n")
    parts.append(markdown_table(rows, columns))
    if notes:
        parts.append("\n" + "\n".join(notes))
    text = "\n".join(parts) + "\n"
    if path is not None:
        _atomic_write(Path(path), text)
    return text


def bar_chart(data: Mapping[str, Mapping[str, tuple[float, float, float]]], path: str | Path, *,
              metric_name: str, title: str) -> Path:
    """Grouped bars: one group per key of ``data`` (a scope, a set), one bar per model inside it,
    error bars from ``(value, lo, hi)`` confidence intervals. Written as PNG with the Agg backend
    (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(data)
    models = list(dict.fromkeys(m for g in groups for m in data[g]))
    if not groups or not models:
        raise ValueError("bar_chart needs at least one group with one model")
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(groups) * len(models) * 0.55), 4.2))
    for i, model in enumerate(models):
        xs, ys, err_lo, err_hi = [], [], [], []
        for g_i, group in enumerate(groups):
            if model not in data[group]:
                continue
            value, lo, hi = data[group][model]
            xs.append(g_i - 0.4 + width * (i + 0.5))
            ys.append(value)
            err_lo.append(max(0.0, value - lo) if not math.isnan(lo) else 0.0)
            err_hi.append(max(0.0, hi - value) if not math.isnan(hi) else 0.0)
        bars = ax.bar(xs, ys, width * 0.95, yerr=[err_lo, err_hi], capsize=3, label=model)
        for bar, y, up in zip(bars, ys, err_hi):  # the value sits above its error bar, not on it
            ax.annotate(f"{y:.3f}", (bar.get_x() + bar.get_width() / 2, y + up), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(metric_name)
    ax.set_title(title, fontsize=10)
    top = max((v[2] if not math.isnan(v[2]) else v[0]) for g in groups for v in data[g].values())
    ax.set_ylim(0, max(0.05, min(1.12, top * 1.1 + 0.05)))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_input(path: str | Path) -> dict[str, Any]:
    """Path, size and SHA-256 of a file; for a folder, a hash over its files' relative paths and hashes."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.relative_to(p).as_posix()}:{sha256_file(f)}\n".encode())
        return {"path": str(p), "files": len(files), "bytes": sum(f.stat().st_size for f in files),
                "sha256": digest.hexdigest()}
    return {"path": str(p), "missing": True}


def package_versions(packages: Sequence[str] = MANIFEST_PACKAGES) -> dict[str, str]:
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def run_manifest(**fields: Any) -> dict[str, Any]:
    """A ``manifest.json`` body: the caller's fields plus environment facts.

    ``inputs`` (``{label: path}``) is expanded into path, size and SHA-256 per input; everything
    else (``parameters``, ``models``, ``counts``, ``timings`` ...) is kept as given. Added: UTC
    time, git commit, Python, platform, CPU count and package versions.
    """
    manifest: dict[str, Any] = {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": package_versions(),
    }
    for key, value in fields.items():
        if key == "inputs" and isinstance(value, Mapping):
            manifest["inputs"] = {label: describe_input(p) for label, p in value.items()}
        else:
            manifest[key] = value
    return manifest
