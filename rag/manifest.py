"""Run records every stage writes: atomic JSON files and ``manifest.json`` bodies.

Lives in ``rag/`` because every layer writes manifests (docs/design.md §3: inputs with hashes, parameters,
models, versions, counts, timings) and ``finetune/`` may depend on ``rag/`` but not on ``eval/``.
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temp file and rename, so a reader never sees half a file. The file gets the
    mode a plain ``open`` would give (mkstemp's 0600 would hide manifests from the next stage's user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it process-wide, racing threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_json(obj: Any, path: str | Path) -> Path:
    """Pretty JSON, written atomically (a reader never sees half a file); NaN becomes null."""
    path = Path(path)
    text = json.dumps(_nan_to_none(obj), indent=2, ensure_ascii=False, default=_to_jsonable, allow_nan=False)
    atomic_write_text(path, text + "\n")
    return path


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


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
