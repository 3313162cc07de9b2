"""How the hybrid retriever weighs its dense and BM25 rankings, per scope.

Why weights at all, and why per scope: plain reciprocal-rank fusion gives both lists the same say,
and what is best depends on the embedder and the scope. Within one patient's few hundred chunks a
dense model is strong and BM25 adds little; across all patients exact terms (drug names, lab names)
separate the right patient's note from many similar ones, so BM25 deserves more. The weights are
chosen on a dev split by ``python -m eval.fusion`` (the grid includes the pure components, so the
chosen fusion is never below either of them on dev) and stored where the embedder lives:

* a trained model carries its own ``fusion.json`` in its folder (written by ``eval.fusion --write``
  or the ``fuse`` stage of ``eval.pipeline``);
* registry embedders use :data:`TUNED` below, committed with the command that produced it;
* anything else gets equal weights, i.e. classic RRF.

And per question language where it matters: a German question over English notes shares few words
with them (drug names and abbreviations), so BM25 may deserve less say than for an English one.
Weights chosen on German dev questions live under ``languages``; the hybrid retriever detects the
question's language (``rag.language``) and uses them, and every other language gets the main ones.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag.embedders import Embedder

FUSION_FILE = "fusion.json"
RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al. 2009)


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the dense and the BM25 ranking in ``w / (RRF_K + rank)``; only their ratio matters."""

    dense: float = 0.5
    bm25: float = 0.5

    def __post_init__(self) -> None:
        if self.dense < 0 or self.bm25 < 0 or self.dense + self.bm25 <= 0:
            raise ValueError(f"fusion weights must be >= 0 and not both 0, got dense={self.dense}, bm25={self.bm25}")


@dataclass(frozen=True)
class Fusion:
    """Weights for cross-patient and for patient-scoped queries, and where they came from;
    ``languages`` maps a query language to its own weights (no deeper nesting)."""

    cross: FusionWeights = field(default_factory=FusionWeights)
    patient: FusionWeights = field(default_factory=FusionWeights)
    source: str = "equal weights (plain RRF)"
    languages: Mapping[str, "Fusion"] = field(default_factory=dict)

    def for_scope(self, cross_patient: bool, language: str | None = None) -> FusionWeights:
        chosen = self.languages.get(language, self) if language else self
        return chosen.cross if cross_patient else chosen.patient

    def with_language(self, language: str, fusion: "Fusion") -> "Fusion":
        """These weights, with ``fusion``'s for questions in ``language``."""
        plain = Fusion(fusion.cross, fusion.patient, fusion.source)
        return Fusion(self.cross, self.patient, self.source, {**self.languages, language: plain})

    def _describe_own(self) -> str:
        return (f"dense:bm25 {self.cross.dense:.2f}:{self.cross.bm25:.2f} cross, "
                f"{self.patient.dense:.2f}:{self.patient.bm25:.2f} patient ({self.source})")

    def describe(self) -> str:
        return "; ".join([self._describe_own(), *(f"{lang} questions: {f._describe_own()}"
                                                  for lang, f in sorted(self.languages.items()))])

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cross": asdict(self.cross), "patient": asdict(self.patient), "source": self.source}
        if self.languages:
            data["languages"] = {lang: f.to_json() for lang, f in sorted(self.languages.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Fusion":
        languages = {lang: cls.from_json({**f, "languages": {}}) for lang, f in (data.get("languages") or {}).items()}
        return cls(FusionWeights(**data["cross"]), FusionWeights(**data["patient"]), data.get("source", ""), languages)


EQUAL = Fusion()

#: Chosen with ``python -m eval.fusion --qa-split dev --embedder me5-small`` on the QA dev split of
#: physionet_deid_dev (79 questions about patients whose notes never trained a model): every share
#: from 0.2 to 0.7 lies within the noise of the best, so plain RRF stays (docs/results.md has the curve).
TUNED: dict[str, Fusion] = {
    "me5-small": Fusion(source="eval.fusion on physionet_deid_dev-dev (79 queries): equal weights within noise"),
}


def write_fusion(folder: str | Path, fusion: Fusion) -> Path:
    path = Path(folder) / FUSION_FILE
    path.write_text(json.dumps(fusion.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def fusion_for(embedder: "Embedder") -> Fusion:
    """The fusion tuned for ``embedder``: its folder's ``fusion.json``, else :data:`TUNED`, else equal."""
    if embedder.path is not None:
        path = Path(embedder.path) / FUSION_FILE
        if path.is_file():
            try:
                return Fusion.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: not a fusion file ({exc})") from exc
    return TUNED.get(embedder.name, EQUAL)
