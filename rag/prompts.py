"""Loading the versioned prompt templates in ``prompts/`` (format described in prompts/README.md)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"
_SECTION = re.compile(r"^### (system|user)\s*$", re.MULTILINE)


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    name: str
    language: str
    version: str
    system: str
    user: str

    def messages(self, **values: str) -> list[dict[str, str]]:
        try:
            return [
                {"role": "system", "content": self.system.format(**values)},
                {"role": "user", "content": self.user.format(**values)},
            ]
        except KeyError as exc:
            raise PromptError(f"prompt {self.name}.{self.language} needs a value for {exc}") from None


@lru_cache(maxsize=None)
def load_prompt(name: str, language: str = "en", prompt_dir: Path = PROMPT_DIR) -> Prompt:
    path = prompt_dir / f"{name}.{language}.txt"
    if not path.is_file():
        path = prompt_dir / f"{name}.en.txt"
        language = "en"
    if not path.is_file():
        raise PromptError(f"no prompt file {name}.<lang>.txt in {prompt_dir}")
    raw = path.read_text(encoding="utf-8")
    first, _, rest = raw.partition("\n")
    if not first.startswith("version:"):
        raise PromptError(f"{path}:1: the first line must be 'version: <id>'")
    parts = _SECTION.split(rest)
    sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"}:
        raise PromptError(f"{path}: needs exactly one '### system' and one '### user' section")
    return Prompt(name, language, first.split(":", 1)[1].strip(), sections["system"], sections["user"])
