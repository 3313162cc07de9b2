"""RAGAS components backed by the project's own LLM client and embedder registry.

Why adapters instead of ``ragas.llms.llm_factory``: the factory drives a second, OpenAI-SDK client
through instructor's JSON mode (``response_format={"type": "json_object"}``), which only asks for
*some* JSON. Our :class:`rag.llm.LLMClient` sends RAGAS's pydantic schema as
``response_format={"type": "json_schema"}``, which llama.cpp (llguidance) and vLLM (xgrammar)
enforce while decoding, so even a 135M-parameter judge returns parseable verdicts; and the project
keeps one LLM client (timeouts, retries, no prompt text in logs) for the app, synthesis and judges.

Importing this module imports ragas (several seconds): import it lazily, only when judging.
"""
from __future__ import annotations

import copy
import typing as t

from pydantic import BaseModel
from ragas.embeddings.base import BaseRagasEmbedding
from ragas.llms.base import InstructorBaseRagasLLM

if t.TYPE_CHECKING:
    from rag.embedders import Embedder
    from rag.llm import LLMClient

M = t.TypeVar("M", bound=BaseModel)

BINARY_FIELDS = ("verdict", "noncommittal")  # RAGAS documents these integers as 0/1


def bounded_schema(schema: dict[str, t.Any], *, max_chars: int = 160, max_items: int = 5) -> dict[str, t.Any]:
    """RAGAS's output schema with limits a constrained decoder enforces.

    A small judge fills an unbounded ``reason`` string until ``max_tokens`` cuts it off and the
    verdict is lost; capping free text (``maxLength``), lists (``maxItems``) and binary fields
    (``enum [0, 1]``) keeps every reply parseable. The field names and types RAGAS validates stay
    the same, so its pydantic models still accept the result.
    """
    out = copy.deepcopy(schema)

    def visit(node: t.Any) -> None:
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "string":
                node.setdefault("maxLength", max_chars)
            elif kind == "array":
                node.setdefault("maxItems", max_items)
            for name, sub in (node.get("properties") or {}).items():
                if name in BINARY_FIELDS and isinstance(sub, dict) and sub.get("type") == "integer":
                    sub["enum"] = [0, 1]
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(out)
    return out


class ClientRagasLLM(InstructorBaseRagasLLM):
    """A RAGAS "modern" LLM that answers every structured prompt through ``LLMClient.chat_json``."""

    def __init__(self, client: "LLMClient", *, max_tokens: int = 512, seed: int = 0,
                 max_chars: int = 160, max_items: int = 5) -> None:
        self.client = client
        self.max_tokens = max_tokens
        self.seed = seed
        self.max_chars = max_chars
        self.max_items = max_items

    def _schema(self, response_model: type[BaseModel]) -> dict[str, t.Any]:
        return bounded_schema(response_model.model_json_schema(), max_chars=self.max_chars, max_items=self.max_items)

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}]

    def generate(self, prompt: str, response_model: type[M]) -> M:
        data = self.client.chat_json(self._messages(prompt), self._schema(response_model),
                                     name=response_model.__name__, max_tokens=self.max_tokens,
                                     temperature=0.0, seed=self.seed)
        return response_model.model_validate(data)

    async def agenerate(self, prompt: str, response_model: type[M]) -> M:
        data = await self.client.achat_json(self._messages(prompt), self._schema(response_model),
                                            name=response_model.__name__, max_tokens=self.max_tokens,
                                            temperature=0.0, seed=self.seed)
        return response_model.model_validate(data)

    def __repr__(self) -> str:
        return f"ClientRagasLLM({self.client.describe()!r}, max_tokens={self.max_tokens})"


class QueryEmbedding(BaseRagasEmbedding):
    """RAGAS embeddings from a registry embedder. RAGAS uses them (answer relevancy) to compare the
    user's question with questions regenerated from the answer, so both get the *query* prefix."""

    def __init__(self, embedder: "Embedder") -> None:
        super().__init__(cache=None)
        self.embedder = embedder

    def embed_text(self, text: str, **kwargs: t.Any) -> list[float]:
        return self.embedder.embed_queries([text])[0].tolist()

    async def aembed_text(self, text: str, **kwargs: t.Any) -> list[float]:
        return self.embed_text(text)

    def embed_texts(self, texts: list[str], **kwargs: t.Any) -> list[list[float]]:
        return self.embedder.embed_queries(list(texts)).tolist()

    async def aembed_texts(self, texts: list[str], **kwargs: t.Any) -> list[list[float]]:
        return self.embed_texts(texts)
