"""Fine-tune an embedder on (query, positive[, negatives]) pairs: ``python -m finetune.train``.

The recipe (shared/reference/pipeline.md C): sentence-transformers' trainer with
CachedMultipleNegativesRankingLoss (GradCache: the batch size, i.e. the number of in-batch
negatives, is independent of memory), optionally wrapped in MatryoshkaLoss; the base entry's
``query: ``/``passage: `` prefixes as training prompts; a batch sampler that puts at most one pair
per patient in a batch (two notes of one patient are often near-duplicates, and as in-batch
negatives of each other they would be false negatives); evaluation on the dev split during training
with the best checkpoint kept. On CPU, freezing the word embeddings (96M of multilingual-e5-small's
118M parameters are the 250k-token embedding matrix) cuts optimizer memory and step time while the
transformer layers still adapt.

The result is saved under ``<settings.home>/models/<name>`` with ``crag_embedder.json`` (base entry,
prefixes, label), so the registry, the index, the app and ``eval.ir`` load it by name.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.negatives import fill_missing
from finetune.pairs import chunk_corpus, read_pairs
from rag import embedders
from rag.beir import load_beir
from rag.config import Settings, load_settings
from rag.embedders import get_embedder, trained_models_dir
from rag.index import index_chunking
from rag.manifest import run_manifest, write_json
from rag.metrics import average_precision

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from finetune.pairs import Pair

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (recorded in the manifest and model card)."""

    base: str = "me5-small"
    name: str = "domain-me5-small"
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    batch_size: int = 32  # pairs per batch = in-batch negatives + 1 (at most one pair per patient)
    mini_batch_size: int = 16  # GradCache chunk: memory, not the loss, depends on it
    max_seq_length: int = 256  # training length; the saved model keeps the base's inference length
    freeze_embeddings: bool = True
    freeze_layers: int = 0  # also freeze the lowest N transformer layers (CPU: less backward work)
    matryoshka_dims: list[int] | None = None  # e.g. [384, 256, 128, 64]; None: plain cached MNRL
    num_negatives: int = 1  # hard-negative columns per pair (0: in-batch negatives only)
    scale: float = 20.0
    max_per_patient: int = 1  # pairs of one patient per batch
    eval_steps: int = 0  # 0: evaluate once per epoch-equivalent (or at the end with max_steps)
    seed: int = 0
    bf16: bool = False
    threads: int | None = None  # torch threads (CPU); None = torch default
    # WiSE-FT (Wortsman et al. 2022): saved weights = (1 - a) * base + a * fine-tuned. 1.0 = plain
    # fine-tuning; smaller keeps more of the base's general retrieval (see interpolate_with_base)
    interpolate: float = 1.0
    # with a dev set: try these weights instead and keep the one with the best dev MAP@100 (the
    # first of equals). Including 0.0 means the base itself wins when fine-tuning did not help on dev.
    interpolate_choices: list[float] | None = None
    # with guard sets (general retrieval the fine-tuning must not forget): a choice is eligible only if
    # its MAP@100 on every guard set is at least (1 - guard_tolerance) x the base's; 0.0 always is
    guard_tolerance: float = 0.05

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Patient-aware batches


class _WeightedDraw:
    """``rng.choices(range(n), weights)[0]`` without replacement, in O(log n) per draw.

    Why: at study scale (10^4-10^5 patients, batches of 1024) rebuilding the cumulative weights for
    every draw made building one epoch's batches take minutes to hours. A Fenwick tree over the
    weights gives the same index for the same ``rng.random()`` as ``random.choices`` (first
    position whose running total exceeds ``random() * total``; drawn positions weigh 0), so the
    batches, and what was trained on them, are unchanged.
    """

    def __init__(self, weights: Sequence[int]):
        self.n = len(weights)
        self.tree = [0] * (self.n + 1)
        self.weights = list(weights)
        self.total = sum(self.weights)
        for i, w in enumerate(self.weights, 1):  # O(n) build
            self.tree[i] += w
            parent = i + (i & -i)
            if parent <= self.n:
                self.tree[parent] += self.tree[i]
        self.top = 1 << self.n.bit_length()

    def _first_above(self, x: float) -> int:
        """The first position whose running total is > x (0-based)."""
        pos, step = 0, self.top
        while step:
            nxt = pos + step
            if nxt <= self.n and self.tree[nxt] <= x:
                pos = nxt
                x -= self.tree[nxt]
            step >>= 1
        return pos

    def draw(self, rng: random.Random) -> int:
        total = self.total + 0.0
        x = rng.random() * total
        k = self._first_above(x) if x < total else self._first_above(total - 0.5)  # choices' clamp to the last
        w = self.weights[k]
        self.weights[k] = 0
        self.total -= w
        i = k + 1
        while i <= self.n:
            self.tree[i] -= w
            i += i & -i
        return k


def _patient_batches(groups: Sequence[str], batch_size: int, max_per_group: int, seed: int,
                     min_batch: int) -> tuple[list[list[int]], int]:
    """Batches of indices with at most ``max_per_group`` indices of one group each.

    Groups are drawn with probability proportional to what they have left, so large patients are
    spread over the epoch instead of piling up at its end. Once fewer groups remain than fit a
    batch, the last batches shrink; those below ``min_batch`` are dropped (returned as a count),
    because a batch of two has almost no negatives.
    """
    rng = random.Random(seed)
    left: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        left[g].append(i)
    for items in left.values():
        rng.shuffle(items)
    batches: list[list[int]] = []
    while left:
        names = list(left)
        draw = _WeightedDraw([len(left[n]) for n in names])
        chosen: list[str] = []
        slots = batch_size
        while len(chosen) < len(names) and slots > 0:
            chosen.append(names[draw.draw(rng)])
            slots -= max_per_group
        batch = []
        for name in chosen:
            take = min(max_per_group, len(left[name]), batch_size - len(batch))
            batch.extend(left[name][:take])
            del left[name][:take]
            if not left[name]:
                del left[name]
        batches.append(batch)
    kept = [b for b in batches if len(b) >= min_batch]
    dropped = sum(len(b) for b in batches) - sum(len(b) for b in kept)
    rng.shuffle(kept)
    return kept, dropped


_SAMPLER_CLASS: Any = None


def _sampler_class() -> Any:
    """The sampler class, defined on first use so importing this module does not import torch."""
    global _SAMPLER_CLASS
    if _SAMPLER_CLASS is None:
        from sentence_transformers.base.sampler import DefaultBatchSampler

        class PatientBatchSampler(DefaultBatchSampler):
            """At most ``max_per_group`` rows of one patient per batch (see :func:`_patient_batches`)."""

            def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0,
                         *, groups=(), max_per_group=1, min_batch=None):
                super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                                 valid_label_columns=valid_label_columns, generator=generator, seed=seed)
                if len(dataset) != len(groups):
                    raise ValueError(f"{len(groups)} patient ids for {len(dataset)} training rows")
                self.groups = list(groups)
                self.max_per_group = max_per_group
                self.min_batch = min_batch if min_batch is not None else max(2, batch_size // 4)
                self.dropped = 0

            def _batches(self) -> list[list[int]]:
                batches, self.dropped = _patient_batches(self.groups, self.batch_size, self.max_per_group,
                                                         (self.seed or 0) + self.epoch, self.min_batch)
                return batches

            def __iter__(self) -> Iterator[list[int]]:
                yield from self._batches()

            def __len__(self) -> int:
                return len(self._batches())

        _SAMPLER_CLASS = PatientBatchSampler
    return _SAMPLER_CLASS


def _build_patient_sampler(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0, *,
                           groups=(), max_per_group=1, min_batch=None):  # noqa: ANN001
    return _sampler_class()(dataset, batch_size, drop_last, valid_label_columns, generator, seed,
                            groups=groups, max_per_group=max_per_group, min_batch=min_batch)


def make_patient_sampler(groups: Sequence[str], max_per_group: int = 1, min_batch: int | None = None) -> Any:
    """A ``batch_sampler`` for SentenceTransformerTrainingArguments: one pair per patient per batch.

    ``groups[i]`` is the patient of training row i. The trainer calls the returned function with
    (dataset, batch_size, drop_last, valid_label_columns, generator, seed) - the signature its
    ``BatchSamplers`` documentation accepts. It is a ``functools.partial`` of a module-level
    function because the trainer pickles its arguments with every checkpoint.
    """
    import functools

    return functools.partial(_build_patient_sampler, groups=tuple(groups), max_per_group=max_per_group,
                             min_batch=min_batch)


# --------------------------------------------------------------------------------------------
# Dev evaluation


def _relevant(beir: Any) -> dict[str, set[str]]:
    """Relevant documents (grade >= 1) per query of a BEIR-like set."""
    return {q: {d for d, g in r.items() if g >= 1} for q, r in beir.qrels.items()}


@dataclass
class DevSet:
    """Queries, a corpus and relevance for the training-time evaluation (ids -> texts)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    name: str = "dev"

    @classmethod
    def from_beir(cls, beir: Any, name: str = "dev") -> "DevSet":
        rel = _relevant(beir)
        return cls({q.query_id: q.text for q in beir.queries if rel.get(q.query_id)},
                   {d.doc_id: d.text for d in beir.corpus.documents}, rel, name)

    def limited(self, n: int | None, seed: int = 0) -> "DevSet":
        if n is None or n >= len(self.queries):
            return self
        ids = sorted(self.queries)
        random.Random(seed).shuffle(ids)
        keep = set(ids[:n])
        return DevSet({q: t for q, t in self.queries.items() if q in keep}, self.corpus,
                      {q: r for q, r in self.relevant.items() if q in keep}, self.name)


@dataclass
class ChunkedSet:
    """A retrieval set scored the way ``eval.ir`` scores it: chunks embedded at the base's inference
    length, each document ranked by its best chunk, MAP@100 over documents, in the cross-patient
    scope and, where the set has real patients, the patient scope too. The interpolation choice
    scores the dev questions and the general-retrieval guards with it.

    Why not the trainer's dev evaluator: it embeds whole documents cut at the training length, a
    proxy that once rated a model +29% on synthea while the chunk-level evaluation measured -13%,
    and whose definition changes with the training length. Why the patient scope: a weight that
    kept synthea's cross-patient MAP lost 5.9% inside patients' records.
    """

    name: str
    queries: dict[str, str]
    passages: list[tuple[str, str]]  # (doc_id, chunk text), documents' chunks in order
    relevant: dict[str, set[str]]
    # patient scope: each query's patient and each document's; empty when the set has no patients
    query_patient: dict[str, str] = field(default_factory=dict)
    doc_patient: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_beir(cls, beir: Any, chunks: dict[str, list[Any]], name: str,
                  query_ids: Collection[str] | None = None) -> "ChunkedSet":
        """``chunks``: doc_id -> its chunks, as the index would cut them (``rag.index.index_chunking``);
        ``query_ids``: only these queries (all when None)."""
        rel = _relevant(beir)
        queries = {q.query_id: q.text for q in beir.queries
                   if rel.get(q.query_id) and (query_ids is None or q.query_id in query_ids)}
        native = beir.corpus.patient_structure == "native"  # one patient per document: no patient scope
        query_patient = {q.query_id: q.patient_id for q in beir.queries
                         if native and q.query_id in queries and q.patient_id is not None}
        doc_patient = {d.doc_id: d.patient_id for d in beir.corpus.documents} if query_patient else {}
        return cls(name, queries,
                   [(c.doc_id, c.text) for d in beir.corpus.documents for c in chunks.get(d.doc_id, [])], rel,
                   query_patient, doc_patient)

    @classmethod
    def like_index(cls, beir: Any, base: str, settings: Settings, name: str,
                   query_ids: Collection[str] | None = None) -> "ChunkedSet":
        """``beir`` cut into chunks as the index of embedder ``base`` would cut it."""

        emb = get_embedder(base, settings)
        return cls.from_beir(beir, chunk_corpus(beir.corpus, emb.token_offsets, index_chunking(emb, settings)),
                             name, query_ids)

    def scores(self, model: "SentenceTransformer", query_prefix: str, passage_prefix: str,
               max_seq_length: int) -> dict[str, float]:
        """MAP@100 as ``{name: cross}`` plus ``{name:patient: patient scope}`` where there are patients."""
        import numpy as np

        qids = list(self.queries)
        kept, model.max_seq_length = model.max_seq_length, max_seq_length
        try:
            q = model.encode([query_prefix + self.queries[i] for i in qids], normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
            p = model.encode([passage_prefix + t for _, t in self.passages], normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=False)
        finally:
            model.max_seq_length = kept
        owners = [d for d, _ in self.passages]
        docs = list(dict.fromkeys(owners))
        col = {d: j for j, d in enumerate(docs)}
        best = np.full((len(qids), len(docs)), -np.inf, dtype=np.float32)
        sims = q @ p.T
        for j, d in enumerate(owners):
            np.maximum(best[:, col[d]], sims[:, j], out=best[:, col[d]])

        def mean_ap(scores: "np.ndarray", ids: list[str]) -> float:
            aps = []
            for row, qid in zip(scores, ids):
                order = [j for j in np.argsort(-row)[:100] if np.isfinite(row[j])]
                aps.append(average_precision([docs[j] for j in order], self.relevant[qid]))
            return round(float(np.mean(aps)), 5) if aps else 0.0

        out = {self.name: mean_ap(best, qids)}
        scoped = [i for i, qid in enumerate(qids) if qid in self.query_patient]
        if scoped:
            owner = np.array([self.doc_patient.get(d) for d in docs], dtype=object)
            inside = np.stack([owner == self.query_patient[qids[i]] for i in scoped])
            out[f"{self.name}:patient"] = mean_ap(np.where(inside, best[scoped], -np.inf), [qids[i] for i in scoped])
        return out


def make_evaluator(dev: DevSet, query_prefix: str, passage_prefix: str, batch_size: int = 32):
    """sentence-transformers' InformationRetrievalEvaluator (MAP@100, nDCG@10, ...) on documents.

    Documents are embedded whole up to the training length: a cheap proxy for the chunk-level
    index that ``eval.ir`` measures, good enough to choose a checkpoint.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        queries=dev.queries, corpus=dev.corpus, relevant_docs=dev.relevant, name=dev.name,
        map_at_k=[100], ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100],
        query_prompt=query_prefix or None, corpus_prompt=passage_prefix or None, batch_size=batch_size,
        write_csv=False, score_functions=None, main_score_function="cosine",
    )


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    name: str
    path: Path
    config: TrainConfig
    train_metrics: dict[str, Any]
    dev_before: dict[str, float]
    dev_after: dict[str, float]
    best_checkpoint: str | None
    throughput_pairs_per_s: float
    trainable_parameters: int
    total_parameters: int
    pairs: int
    pair_sources: dict[str, int]
    patients: int
    dropped_by_sampler_epoch0: int
    loss_history: list[dict[str, float]] = field(default_factory=list)
    dev_before_interpolation: dict[str, float] = field(default_factory=dict)  # fine-tuned, before WiSE-FT
    interpolation: float = 1.0  # the weight of the fine-tuned model in the saved weights
    dev_map_by_interpolation: dict[str, float] = field(default_factory=dict)  # "0.3" -> dev MAP@100
    dev_map_scoring: str = ""  # how dev_map_by_interpolation was scored
    # "0.3" -> {guard set -> MAP@100}; "0" is the base, the reference of the tolerance
    guard_map_by_interpolation: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def load_trainable(base: str, settings: Settings, max_seq_length: int) -> tuple["SentenceTransformer", Any]:
    """A private, trainable copy of the base embedder's model plus the base Embedder (for prefixes)."""
    import copy


    base_emb = get_embedder(base, settings)
    model = copy.deepcopy(base_emb.model)
    model.max_seq_length = min(max_seq_length, base_emb.max_seq_length)  # never past the position table
    return model, base_emb


def freeze_lower_layers(model: "SentenceTransformer", n: int) -> int:
    """Freeze the lowest ``n`` encoder layers (BERT/XLM-R layout); returns frozen parameters."""
    auto = model[0].auto_model
    layers = getattr(getattr(auto, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"{type(auto).__name__}: no encoder.layer list to freeze")
    frozen = 0
    for layer in list(layers)[:n]:
        for p in layer.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def freeze_word_embeddings(model: "SentenceTransformer") -> int:
    """Freeze the token embedding matrix of the first (transformer) module; returns frozen parameters."""
    auto = model[0].auto_model
    emb = auto.get_input_embeddings()
    emb.weight.requires_grad_(False)
    return emb.weight.numel()


def interpolate_with_base(model: "SentenceTransformer", base_model: "SentenceTransformer", alpha: float) -> int:
    """WiSE-FT: move every floating-point weight to ``(1 - alpha) * base + alpha * fine-tuned``.

    Why: fine-tuning on one hospital's notes pulls the model away from what made the base good at
    general retrieval; averaging the two in weight space keeps most of the domain gain and much of
    the general skill (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022). It
    needs both models to share one architecture, which a fine-tuned copy always does. Returns the
    number of tensors changed.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"interpolate must be within [0, 1], got {alpha}")
    tuned, base = model[0].auto_model.state_dict(), base_model[0].auto_model.state_dict()
    if tuned.keys() != base.keys():
        raise ValueError("the fine-tuned model and its base differ in architecture; cannot interpolate")
    merged, changed = {}, 0
    for key, value in tuned.items():
        if value.is_floating_point() and alpha < 1.0:
            merged[key] = (1.0 - alpha) * base[key].to(value.dtype) + alpha * value
            changed += 1
        else:
            merged[key] = value
    model[0].auto_model.load_state_dict(merged)
    return changed


def choose_interpolation(model: "SentenceTransformer", base_model: "SentenceTransformer", choices: Sequence[float],
                         score: Callable[["SentenceTransformer"], float],
                         guards: Sequence[Callable[["SentenceTransformer"], dict[str, float]]] = (),
                         tolerance: float = 0.05) -> tuple[float, dict[str, float], dict[str, dict[str, float]]]:
    """The interpolation weight with the best dev score among the eligible ``choices`` (first of
    equals), every dev score, and every guard score. ``model`` comes back with its fine-tuned weights.

    Why guards: a dev set of a few dozen questions from three patients is noisy, and on its own it
    once picked a = 1 by 0.01 MAP while general retrieval fell by 38%. A choice is eligible only if
    each guard score is at least ``(1 - tolerance)`` times the base's (weight 0, measured here too).
    A guard returns named scores (e.g. one per retrieval scope); every one of them is bounded.
    The base itself always qualifies, so when 0 is not among the choices and none qualifies, the
    weight with the smallest worst guard loss is kept and a warning says so.
    """
    import copy

    tuned = copy.deepcopy(model[0].auto_model.state_dict())
    weights = [float(a) for a in choices]
    guard_scores: dict[str, dict[str, float]] = {}
    dev_scores: dict[str, float] = {}
    for alpha in ([0.0] if guards and 0.0 not in weights else []) + weights:
        interpolate_with_base(model, base_model, alpha)
        if alpha in weights:
            dev_scores[f"{alpha:g}"] = round(float(score(model)), 5)
        if guards:
            guard_scores[f"{alpha:g}"] = {name: round(float(v), 5) for g in guards for name, v in g(model).items()}
        model[0].auto_model.load_state_dict(tuned)

    def worst_ratio(alpha: float) -> float:
        if not guards:
            return 1.0
        ref, got = guard_scores["0"], guard_scores[f"{alpha:g}"]
        return min(got[n] / ref[n] if ref[n] > 0 else 1.0 for n in ref)

    eligible = [a for a in weights if worst_ratio(a) >= 1.0 - tolerance - 1e-9]
    if eligible:
        best = max(eligible, key=lambda a: (dev_scores[f"{a:g}"], -weights.index(a)))
    elif weights:
        best = max(weights, key=worst_ratio)
        log.warning("no interpolation weight keeps every guard within %.0f%% of the base; kept %s, the "
                    "smallest loss", 100 * tolerance, best)
    else:
        best = 1.0
    log.info("dev MAP@100 by interpolation weight: %s; guards: %s -> %s", dev_scores, guard_scores, best)
    return best, dev_scores, guard_scores


def _build_loss(model: "SentenceTransformer", cfg: TrainConfig) -> Any:
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MatryoshkaLoss

    loss = CachedMultipleNegativesRankingLoss(model, scale=cfg.scale, mini_batch_size=cfg.mini_batch_size)
    if cfg.matryoshka_dims:
        dim = model.get_embedding_dimension()
        # the full dimension always trains; smaller ones only where the model has them
        dims = sorted({dim, *(d for d in cfg.matryoshka_dims if d < dim)}, reverse=True)
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    return loss


def _dataset(pairs: Sequence["Pair"], num_negatives: int) -> Any:
    from datasets import Dataset

    data: dict[str, list[str]] = {"anchor": [p.query for p in pairs], "positive": [p.positive for p in pairs]}
    for j in range(num_negatives):
        data[f"negative_{j + 1}"] = [p.negatives[j] for p in pairs]
    return Dataset.from_dict(data)


def train(pairs: Sequence["Pair"], cfg: TrainConfig, settings: Settings | None = None, *,
          dev: DevSet | None = None, dev_chunks: ChunkedSet | None = None, guards: Sequence[ChunkedSet] = (),
          out_dir: Path | None = None, work_dir: Path | None = None, progress: bool = True) -> TrainResult:
    """Train, keep the best dev checkpoint, save the model with its registry metadata and card.

    ``dev`` chooses the checkpoint (the trainer's cheap document-level evaluator); ``dev_chunks``,
    the same questions scored at chunk level, chooses the interpolation weight (cross-patient
    MAP@100; without it the document-level score). ``guards`` are general-retrieval sets that bound
    that choice (see :func:`choose_interpolation`); all are used only with ``interpolate_choices``.

    ``pairs`` must already be restricted to training patients; with ``num_negatives`` > 0 each
    pair needs that many negatives (see ``finetune.negatives.fill_missing``).
    """
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback


    settings = settings or load_settings()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not pairs:
        raise ValueError("no training pairs")
    out_dir = Path(out_dir) if out_dir else trained_models_dir(settings) / cfg.name
    work_dir = Path(work_dir) if work_dir else out_dir.parent / f".{out_dir.name}.work"
    if cfg.num_negatives:
        pairs = fill_missing(pairs, cfg.num_negatives, seed=cfg.seed)

    torch.manual_seed(cfg.seed)
    model, base_emb = load_trainable(cfg.base, settings, cfg.max_seq_length)
    qp, pp = base_emb.query_prefix, base_emb.passage_prefix
    total = sum(p.numel() for p in model.parameters())
    if cfg.freeze_embeddings:
        freeze_word_embeddings(model)
    if cfg.freeze_layers:
        freeze_lower_layers(model, cfg.freeze_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    dataset = _dataset(pairs, cfg.num_negatives)
    prompts = {"anchor": qp, "positive": pp, **{f"negative_{j + 1}": pp for j in range(cfg.num_negatives)}}
    prompts = {k: v for k, v in prompts.items() if v}
    groups = [p.patient_id for p in pairs]
    sampler = make_patient_sampler(groups, cfg.max_per_patient)
    probe = sampler(dataset, cfg.batch_size, False, None, None, cfg.seed)
    steps_per_epoch = len(probe)
    if steps_per_epoch == 0:
        raise ValueError(f"the patient-aware sampler makes no batch of >= {probe.min_batch} pairs: "
                         f"{len(set(groups))} patients, batch size {cfg.batch_size}")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    eval_steps = cfg.eval_steps or max(1, min(steps_per_epoch, total_steps))

    evaluator = make_evaluator(dev, qp, pp) if dev is not None and dev.queries else None
    metric_key = f"eval_{dev.name}_cosine_map@100" if evaluator else None
    dev_before = _score(evaluator, model) if evaluator else {}

    history: list[dict[str, float]] = []

    class _Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs:
                history.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                               if isinstance(v, (int, float))}})

    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=cfg.epochs if cfg.max_steps <= 0 else 1,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=int(round(cfg.warmup_ratio * total_steps)),
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        prompts=prompts or None,
        batch_sampler=sampler,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=eval_steps if evaluator else None,
        save_strategy="steps" if evaluator else "no",
        save_steps=eval_steps,
        save_total_limit=1,
        load_best_model_at_end=bool(evaluator),
        metric_for_best_model=metric_key,
        greater_is_better=True,
        logging_steps=max(1, min(10, total_steps // 10 or 1)),
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=_build_loss(model, cfg), evaluator=evaluator, callbacks=[_Record()])
    resume = resumable_checkpoint(work_dir, args)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    elapsed = time.perf_counter() - t0
    best = trainer.state.best_model_checkpoint
    alpha, alpha_scores, guard_scores, dev_scoring = cfg.interpolate, {}, {}, ""
    if cfg.interpolate_choices and evaluator:
        length = base_emb.max_seq_length
        if dev_chunks is not None:
            dev_scoring = "chunks at the inference length, best chunk per document, cross-patient (as eval.ir)"
            dev_score = lambda m: dev_chunks.scores(m, qp, pp, length)[dev_chunks.name]  # noqa: E731
        else:
            dev_scoring = "whole documents cut at the training length"
            dev_score = lambda m: _score(evaluator, m).get("map@100", 0.0)  # noqa: E731
        alpha, alpha_scores, guard_scores = choose_interpolation(
            model, base_emb.model, cfg.interpolate_choices, dev_score,
            guards=[lambda m, g=g: g.scores(m, qp, pp, length) for g in guards], tolerance=cfg.guard_tolerance)
    dev_tuned = _score(evaluator, model) if evaluator and alpha < 1.0 else {}
    if alpha < 1.0:
        interpolate_with_base(model, base_emb.model, alpha)
    dev_after = _score(evaluator, model) if evaluator else {}

    model.max_seq_length = base_emb.max_seq_length  # inference length of the base entry
    model.prompts = {k: v for k, v in {"query": qp, "passage": pp}.items() if v}
    model.default_prompt_name = None
    tmp_out = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp_out, ignore_errors=True)
    model.save(str(tmp_out), create_model_card=False)
    seen = sum(min(len(b), cfg.batch_size) for b in probe._batches()) if total_steps else 0
    result = TrainResult(
        name=cfg.name, path=out_dir, config=cfg, train_metrics={k: float(v) for k, v in output.metrics.items()},
        dev_before=dev_before, dev_after=dev_after, best_checkpoint=best,
        throughput_pairs_per_s=round(trainer.state.global_step * (seen / max(1, steps_per_epoch)) / elapsed, 3),
        trainable_parameters=trainable, total_parameters=total, pairs=len(pairs),
        pair_sources=_count(p.source for p in pairs), patients=len(set(groups)),
        dropped_by_sampler_epoch0=probe.dropped, loss_history=history, dev_before_interpolation=dev_tuned,
        interpolation=alpha, dev_map_by_interpolation=alpha_scores, guard_map_by_interpolation=guard_scores,
        dev_map_scoring=dev_scoring,
    )
    write_embedder_metadata(tmp_out, name=cfg.name, base=base_emb, cfg=cfg, result=result)
    write_model_card(tmp_out, result, base_emb.label, qp, pp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_out.replace(out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)

    embedders.clear_cache()  # a re-trained model of the same name must not come from the cache
    return result


def resumable_checkpoint(work_dir: Path, args: Any) -> Path | None:
    """The latest checkpoint in ``work_dir`` written with the same optimisation settings, if any.

    An interrupted training (or one re-run with fewer ``max_steps``) continues from there instead
    of starting over; a checkpoint of different settings (learning rate, batch size, seed, loss
    scale of the run) is ignored and will be overwritten.
    """
    import torch

    checkpoints = sorted(Path(work_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for ckpt in reversed(checkpoints):
        try:
            old = torch.load(ckpt / "training_args.bin", weights_only=False)
        except Exception:  # noqa: BLE001 - unreadable: not resumable
            continue
        same = all(getattr(old, k, None) == getattr(args, k, None)
                   for k in ("learning_rate", "per_device_train_batch_size", "seed", "weight_decay"))
        if same and (ckpt / "trainer_state.json").is_file():
            return ckpt
    return None


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[x] += 1
    return dict(out)


def _score(evaluator: Any, model: "SentenceTransformer") -> dict[str, float]:
    raw = evaluator(model)
    prefix = f"{evaluator.name}_cosine_"
    return {k.removeprefix(prefix): round(float(v), 5) for k, v in raw.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------------------------
# What the registry and a reader need


METADATA_FILE = "crag_embedder.json"


def write_embedder_metadata(folder: Path, *, name: str, base: Any, cfg: TrainConfig, result: TrainResult) -> Path:
    """``crag_embedder.json``: how the registry describes this model (prefixes come from the base)."""
    meta = {
        "name": name,
        "label": f"{name} (fine-tuned from {base.label})",
        "base": base.name,
        "base_label": base.label,
        "query_prefix": base.query_prefix,
        "passage_prefix": base.passage_prefix,
        "max_seq_length": base.max_seq_length,
        "pooling": base.spec.pooling,
        "trained_max_seq_length": cfg.max_seq_length,
        "pairs": result.pairs,
        "pair_sources": result.pair_sources,
        "patients": result.patients,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(folder) / METADATA_FILE
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_model_card(folder: Path, result: TrainResult, base_label: str, query_prefix: str = "",
                     passage_prefix: str = "") -> Path:
    """README.md in the model folder: data, parameters, dev metrics, throughput."""
    cfg = result.config
    rows = "\n".join(f"| {k} | {result.dev_before.get(k, float('nan')):.4f} | {v:.4f} |"
                     for k, v in sorted(result.dev_after.items()) if k in {"map@100", "ndcg@10", "mrr@10", "recall@10", "recall@100"})
    text = f"""# {result.name}

Fine-tuned from **{base_label}** with sentence-transformers
(`CachedMultipleNegativesRankingLoss`{' in `MatryoshkaLoss` ' + str(cfg.matryoshka_dims) if cfg.matryoshka_dims else ''},
scale {cfg.scale}) by `python -m finetune.train` of this project.

## Data
- {result.pairs} training pairs from {result.patients} training patients; sources: {result.pair_sources}
  (qa = synthetic question -> chunk holding its evidence; ict = inverse cloze, a sentence -> its chunk;
  description = a document's own summary -> its best-matching chunk).
- Hard negatives per pair: {cfg.num_negatives} (mined with the base model, same-patient and same-document
  candidates removed; missing ones filled with random passages of other patients).
- Patient-disjoint split: no document, question or sentence of a dev or test patient was used for training.
- Batches hold at most {cfg.max_per_patient} pair(s) per patient; {result.dropped_by_sampler_epoch0} pairs fell into
  too-small tail batches in epoch 0 and were skipped there.

## Parameters
```json
{json.dumps(asdict(cfg), indent=2)}
```
Trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,}
(word embeddings {'frozen' if cfg.freeze_embeddings else 'trained'}; lowest {cfg.freeze_layers} layers frozen).

## Dev metrics (InformationRetrievalEvaluator on whole documents, cosine; before -> after)
| metric | base | fine-tuned |
|---|---|---|
{rows or '| (no dev set) | | |'}

Best checkpoint: {result.best_checkpoint or 'last step'}.
{_interpolation_note(result)}
## Training
{json.dumps({k: round(v, 4) for k, v in result.train_metrics.items()})}
Throughput: {result.throughput_pairs_per_s} pairs/s on this machine.

## Use
Queries take the prefix {json.dumps(query_prefix)}, passages {json.dumps(passage_prefix)} (from the base entry; stored in
`crag_embedder.json` and in the model's prompts, applied by the registry). Load by name:
`rag.embedders.get_embedder("{result.name}")`.
"""
    path = Path(folder) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def _interpolation_note(result: TrainResult) -> str:
    alpha = result.interpolation
    chosen = (f" Chosen on dev MAP@100 ({result.dev_map_scoring}) among {result.dev_map_by_interpolation}."
              if result.dev_map_by_interpolation else "")
    if result.guard_map_by_interpolation:
        chosen += (f" Eligible only within {100 * result.config.guard_tolerance:g}% of the base (weight 0) on "
                   f"the general-retrieval guard sets, MAP@100 by weight: {result.guard_map_by_interpolation}.")
    if alpha >= 1.0:
        return f"\nNo weight interpolation with the base.{chosen}\n" if chosen else ""
    before = result.dev_before_interpolation.get("map@100")
    return (f"\nWeights interpolated with the base (WiSE-FT): {1 - alpha:.2f} x base + {alpha:.2f} x fine-tuned"
            + (f"; dev MAP@100 of the fine-tuned weights before interpolation: {before:.4f}." if before is not None
               else ".") + chosen + "\n")


# --------------------------------------------------------------------------------------------
# CLI


def _manifest(out: Path, pairs_path: Path, cfg: TrainConfig, result: TrainResult, dev_dir: Path | None,
              elapsed: float) -> None:

    files = {"pairs": pairs_path}
    if dev_dir:
        files.update({f"dev_{n.split('.')[0]}": dev_dir / n for n in ("corpus.jsonl", "queries.jsonl", "qrels.tsv")})
    manifest = run_manifest(stage="finetune.train", inputs=files, parameters=asdict(cfg),
                            result=result.to_json(), seconds=round(elapsed, 1))
    write_json(manifest, out / "manifest.json")


def main(argv: Sequence[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m finetune.train", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", required=True, type=Path, help="pairs.jsonl (finetune.pairs / finetune.negatives)")
    parser.add_argument("--dev-dir", type=Path, help="BEIR-like dev set: corpus.jsonl, queries.jsonl, qrels.tsv")
    parser.add_argument("--dev-queries", type=int, default=None, help="evaluate on at most this many dev queries")
    parser.add_argument("--config", type=Path, help="JSON file with TrainConfig fields")
    parser.add_argument("--out", type=Path, help="output folder (default <home>/models/<name>)")
    for f in ("base", "name"):
        parser.add_argument(f"--{f}")
    for f in ("epochs", "learning_rate", "warmup_ratio", "scale"):
        parser.add_argument(f"--{f.replace('_', '-')}", type=float)
    for f in ("max_steps", "batch_size", "mini_batch_size", "max_seq_length", "num_negatives", "eval_steps", "seed",
              "threads", "freeze_layers"):
        parser.add_argument(f"--{f.replace('_', '-')}", type=int)
    parser.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--matryoshka-dims", help="comma-separated, e.g. 384,256,128,64 ('' = off)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg_data = json.loads(args.config.read_text()) if args.config else {}
    for k, v in vars(args).items():
        if k in TrainConfig.__dataclass_fields__ and v is not None:
            cfg_data[k] = v
    if isinstance(cfg_data.get("matryoshka_dims"), str):
        cfg_data["matryoshka_dims"] = [int(x) for x in cfg_data["matryoshka_dims"].split(",") if x.strip()] or None
    cfg = TrainConfig.from_json(cfg_data)
    settings = load_settings()
    dev = dev_chunks = None
    if args.dev_dir:
        d = args.dev_dir
        beir = load_beir(d / "corpus.jsonl", d / "queries.jsonl", d / "qrels.tsv")
        dev = DevSet.from_beir(beir).limited(args.dev_queries)
        # the interpolation weight is chosen on dev scored like eval.ir, as in finetune.pipeline
        dev_chunks = ChunkedSet.like_index(beir, cfg.base, settings, "dev", query_ids=set(dev.queries))
    pairs = read_pairs(args.pairs)
    t0 = time.perf_counter()
    result = train(pairs, cfg, settings, dev=dev, dev_chunks=dev_chunks, out_dir=args.out)
    _manifest(result.path, args.pairs, cfg, result, args.dev_dir, time.perf_counter() - t0)
    print(json.dumps({"model": str(result.path), "dev_before": result.dev_before, "dev_after": result.dev_after,
                      "pairs_per_s": result.throughput_pairs_per_s}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
