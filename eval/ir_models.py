"""Which retrievers ``eval.ir`` scores: ``--models`` parsed into specs (embedder, kind, label)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.fusion import Fusion

# --------------------------------------------------------------------------------------------
# Which retrievers to evaluate


@dataclass(frozen=True)
class ModelSpec:
    """One column of the comparison: a dense embedder, BM25, or BM25 + a dense model fused by RRF.

    ``embedder`` is the registry name or folder whose index supplies the chunks (and, for dense and
    hybrid, the vectors); BM25 is scored over the chunks of that index.
    """

    label: str
    kind: str  # "dense" | "bm25" | "hybrid"
    embedder: str

    def describe(self, embedder_label: str, fusion: Fusion | None = None) -> str:
        if self.kind == "dense":
            return f"dense: {embedder_label}"
        if self.kind == "bm25":
            return f"BM25 (bm25s, English stemmer/stopwords) over the chunks of the {self.embedder} index"
        return f"hybrid: BM25 + {embedder_label}, weighted reciprocal rank fusion, {(fusion or Fusion()).describe()}"


def parse_models(text: str | Sequence[str], base: str = "me5-small") -> list[ModelSpec]:
    """``domain=PATH,me5-small,minilm,bm25,hybrid,hybrid:domain`` -> specs.

    ``label=name_or_path`` names a dense embedder; a bare registry name or folder is its own label.
    ``bm25`` uses the chunks of the base model's index (the first dense model when the base is not
    dense). ``hybrid`` fuses BM25 with the base model, ``hybrid:<label>`` with that dense model.
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ValueError("no models given (e.g. --models me5-small,minilm,bm25,hybrid)")
    dense: dict[str, str] = {}
    order: list[tuple[str, str, str]] = []  # (label, kind, target)
    for item in items:
        if item == "bm25":
            order.append(("bm25", "bm25", ""))
        elif item == "hybrid" or item.startswith("hybrid:"):
            target = item.partition(":")[2].strip()
            order.append((item, "hybrid", target))
        else:
            label, sep, target = item.partition("=")
            label, target = label.strip(), target.strip()
            if not sep:
                target = label
            if not label or not target:
                raise ValueError(f"bad model entry {item!r}: use NAME, LABEL=NAME_OR_PATH, bm25, hybrid or hybrid:LABEL")
            if label in dense:
                raise ValueError(f"model label {label!r} given twice")
            dense[label] = target
            order.append((label, "dense", target))
    default_dense = dense.get(base) or (next(iter(dense.values())) if dense else "me5-small")
    specs: list[ModelSpec] = []
    for label, kind, target in order:
        if kind == "dense":
            specs.append(ModelSpec(label, "dense", target))
        elif kind == "bm25":
            specs.append(ModelSpec(label, "bm25", default_dense))
        else:
            emb = dense.get(target, target) if target else (dense.get(base) or default_dense)
            specs.append(ModelSpec(label, "hybrid", emb))
    labels = [s.label for s in specs]
    dupes = {l for l in labels if labels.count(l) > 1}
    if dupes:
        raise ValueError(f"model labels must be unique, repeated: {sorted(dupes)}")
    return specs
