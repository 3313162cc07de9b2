"""The layering contract: rag/ (runtime) <- finetune/ (builder) <- eval/ (judges both).

import-linter checks every import, function-level ones included, against ``[tool.importlinter]`` in
pyproject.toml; a new back-edge (rag importing finetune, finetune importing eval) fails here.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from rag.config import REPO_ROOT


def test_no_import_goes_against_the_layers() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout
