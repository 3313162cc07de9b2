"""Fine-tune an embedder on (query, positive[, negatives]) pairs: ``python -m finetune.train``.

The recipe (docs/pipeline.md, fine-tuning): sentence-transformers' trainer with
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

Launched by ``torchrun --nproc_per_node N`` the trainer runs data-parallel (DDP; NCCL on GPUs, gloo
on CPU): the patient-aware sampler deals each global batch (N x ``batch_size``, one patient per
global batch) out to the ranks, the cached loss gathers the ranks' embeddings so the in-batch
negatives are the global batch's, and rank 0 alone writes the model, its card and manifest while the
other ranks wait for it (docs/scale_training.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.dev_sets import ChunkedSet, DevSet, make_evaluator
from finetune.distributed import (
    Launch,
    close_process_group,
    ddp_backend,
    launch_from_env,
    open_wait_group,
    share_from_main,
    supports_gather,
)
from finetune.distill import HybridTeacher, distilled_loss
from finetune.interpolation import choose_interpolation, interpolate_with_base
from finetune.model_card import write_embedder_metadata, write_model_card
from finetune.negatives import fill_missing
from finetune.pairs import read_pairs
from finetune.soup import average_weights, load_member, member_fingerprint, save_member
from finetune.train_sampler import find_patient_sampler, make_patient_sampler
from rag import embedders
from rag.beir import load_beir
from rag.config import Settings, load_settings
from rag.embedders import get_embedder, trained_models_dir
from rag.manifest import run_manifest, write_json

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from finetune.pairs import Pair

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Configuration


#: The similarity terms the cached contrastive loss can put in its softmax (query -> passage always).
LOSS_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")


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
    # which similarities share the contrastive softmax (sentence-transformers' names): the default is plain
    # InfoNCE; all four is GTE's "improved contrastive loss" (Li et al. 2023), where other questions and other
    # passages of the batch are negatives too, which spreads a model that scores every passage alike
    loss_directions: tuple[str, ...] = ("query_to_doc",)
    # hardness weighting (Lan et al. 2025, LLaVE): each in-batch negative's logit gains this x its own
    # (stop-gradient) cosine, so the negatives the model already confuses weigh more; 0 = off
    hardness_strength: float = 0.0
    # in-batch distillation from a hybrid teacher (BM25 + the base, finetune.distill): the weight of
    # KL(teacher || student) next to the contrastive loss; 0 = off. The teacher's fusion is min-max
    # scores, lexical_share x BM25 + the rest x base cosine, softened by the temperature
    distill_weight: float = 0.0
    distill_lexical_share: float = 0.5
    distill_temperature: float = 0.1
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
    # a uniform model soup: train this many runs (seeds seed, seed + 1, ...) and average their
    # weights before WiSE-FT (finetune.soup); 1 = one run
    soup: int = 1

    def __post_init__(self) -> None:
        self.loss_directions = tuple(self.loss_directions)  # JSON gives a list
        unknown = set(self.loss_directions) - set(LOSS_DIRECTIONS)
        if unknown or "query_to_doc" not in self.loss_directions:
            raise ValueError(f"loss_directions must include 'query_to_doc' and be among {LOSS_DIRECTIONS}, "
                             f"got {list(self.loss_directions)}")
        if self.hardness_strength < 0:
            raise ValueError(f"hardness_strength must be >= 0, got {self.hardness_strength}")
        if self.distill_weight > 0 and (self.loss_directions != ("query_to_doc",) or self.hardness_strength):
            raise ValueError("the distilled loss is plain query -> passage InfoNCE: leave loss_directions and "
                             "hardness_strength at their defaults")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**data)


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
    # processes of a torchrun launch: config.batch_size is per process, the batch the loss saw is this x it
    world_size: int = 1
    gathered_negatives: bool = False  # the cached loss gathered the global batch across processes
    # a soup's members: seed, kept checkpoint, its dev score, training seconds (empty for one run)
    soup_members: list[dict[str, Any]] = field(default_factory=list)

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


def _build_loss(model: "SentenceTransformer", cfg: TrainConfig, world_size: int = 1) -> Any:
    """Cached MNRL (optionally under Matryoshka); in DDP it gathers the global batch when it can.

    Gathering makes N ranks x B pairs train like one process with N x B pairs (the same negatives,
    the same loss, the same averaged gradient); without it each rank's negatives would be its own B.
    """
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MatryoshkaLoss,
    )

    extra: dict[str, Any] = {}
    if world_size > 1:
        if supports_gather(CachedMultipleNegativesRankingLoss):
            extra["gather_across_devices"] = True
        else:
            log.warning("this sentence-transformers cannot gather across ranks: in-batch negatives are per rank "
                        "(%d pairs, not %d)", cfg.batch_size, cfg.batch_size * world_size)
    if cfg.loss_directions != ("query_to_doc",):
        extra["directions"] = cfg.loss_directions
    if cfg.hardness_strength:
        extra.update(hardness_mode="in_batch_negatives", hardness_strength=cfg.hardness_strength)
    loss = CachedMultipleNegativesRankingLoss(model, scale=cfg.scale, mini_batch_size=cfg.mini_batch_size, **extra)
    if cfg.matryoshka_dims:
        dim = model.get_embedding_dimension()
        # the full dimension always trains; smaller ones only where the model has them
        dims = sorted({dim, *(d for d in cfg.matryoshka_dims if d < dim)}, reverse=True)
        loss = MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    return loss


def _gathers(loss: Any) -> bool:
    """Whether the contrastive loss (itself, or inside MatryoshkaLoss) gathers negatives across ranks."""
    while not hasattr(loss, "gather_across_devices") and hasattr(loss, "loss"):
        loss = loss.loss
    return bool(getattr(loss, "gather_across_devices", False))


def _dataset(pairs: Sequence["Pair"], num_negatives: int, rows: bool = False) -> Any:
    """The trainer's columns; ``rows`` adds a ``label`` column with each pair's position (the
    distilled loss looks its teacher scores up by it, whatever order the sampler draws)."""
    from datasets import Dataset

    data: dict[str, list[Any]] = {"anchor": [p.query for p in pairs], "positive": [p.positive for p in pairs]}
    for j in range(num_negatives):
        data[f"negative_{j + 1}"] = [p.negatives[j] for p in pairs]
    if rows:
        data["label"] = list(range(len(pairs)))
    return Dataset.from_dict(data)


def _check_distill(cfg: TrainConfig, world_size: int) -> None:
    if cfg.distill_weight < 0:
        raise ValueError(f"distill_weight must be >= 0, got {cfg.distill_weight}")
    if cfg.distill_weight and (cfg.num_negatives or cfg.matryoshka_dims or world_size > 1):
        raise ValueError("distillation (distill_weight > 0) grades (question, passage) pairs in one process: "
                         "it cannot be combined with hard-negative columns, Matryoshka or torchrun")


@dataclass
class _Fit:
    """What one training run reports (a soup has one per member)."""

    train_metrics: dict[str, float]
    best_checkpoint: str | None
    dev_best: float | None  # the dev score of the kept checkpoint (the trainer's document-level evaluator)
    dev_before: dict[str, float]  # the base on the same evaluator (scored by the first run only)
    history: list[dict[str, float]]
    seconds: float
    throughput: float
    trainable: int
    total: int
    dropped: int
    gathered: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "_Fit":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def _fit(pairs: Sequence["Pair"], cfg: TrainConfig, settings: Settings, launch: Launch, *, dev: DevSet | None,
         work_dir: Path, progress: bool, score_base: bool) -> tuple["SentenceTransformer", Any, Any, _Fit, Any]:
    """One training run from the base: (model at its best dev checkpoint, base entry, dev evaluator, report,
    the group the ranks wait in for rank 0's writes - None in one process)."""
    import torch
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    torch.manual_seed(cfg.seed)
    model, base_emb = load_trainable(cfg.base, settings, cfg.max_seq_length)
    qp, pp = base_emb.query_prefix, base_emb.passage_prefix
    total = sum(p.numel() for p in model.parameters())
    if cfg.freeze_embeddings:
        freeze_word_embeddings(model)
    if cfg.freeze_layers:
        freeze_lower_layers(model, cfg.freeze_layers)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    dataset = _dataset(pairs, cfg.num_negatives, rows=cfg.distill_weight > 0)
    prompts = {"anchor": qp, "positive": pp, **{f"negative_{j + 1}": pp for j in range(cfg.num_negatives)}}
    prompts = {k: v for k, v in prompts.items() if v}
    groups = [p.patient_id for p in pairs]
    sampler = make_patient_sampler(groups, cfg.max_per_patient, world_size=launch.world_size)
    probe = sampler(dataset, cfg.batch_size, False, None, None, cfg.seed)
    steps_per_epoch = probe.steps
    if steps_per_epoch == 0:
        raise ValueError(f"the patient-aware sampler makes no batch of >= {probe.min_batch} pairs: "
                         f"{len(set(groups))} patients, batch size {cfg.batch_size} x {launch.world_size} ranks")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    eval_steps = cfg.eval_steps or max(1, min(steps_per_epoch, total_steps))

    evaluator = make_evaluator(dev, qp, pp) if dev is not None and dev.queries else None
    metric_key = f"eval_{dev.name}_cosine_map@100" if evaluator else None
    dev_before = _score(evaluator, model) if evaluator and launch.is_main and score_base else {}

    history: list[dict[str, float]] = []

    class _Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs:
                history.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                               if isinstance(v, (int, float))}})

    class _SyncEpoch(TrainerCallback):
        """Sets the patient sampler's epoch where the trainer's set_epoch does not reach it (see
        find_patient_sampler): epoch k has its own batches, the same on every rank and after a resume."""

        def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):  # noqa: ANN001
            found = find_patient_sampler(train_dataloader)
            if found is not None:  # one optimizer step per batch: gradient_accumulation_steps is 1
                found.set_epoch(state.global_step // steps_per_epoch)

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
        ddp_backend=ddp_backend(torch.cuda.is_available()) if launch.distributed else None,
    )
    if args.world_size != launch.world_size:
        raise RuntimeError(f"the trainer runs {args.world_size} processes, the launch said {launch.world_size}")
    wait_group = open_wait_group(launch)  # now, while every rank is here (see open_wait_group)
    if cfg.distill_weight > 0:
        teacher = HybridTeacher.build(pairs, base_emb.model, qp, pp, lexical_share=cfg.distill_lexical_share,
                                      temperature=cfg.distill_temperature)
        loss = distilled_loss(model, teacher, weight=cfg.distill_weight, scale=cfg.scale,
                              mini_batch_size=cfg.mini_batch_size)
    else:
        loss = _build_loss(model, cfg, launch.world_size)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                         evaluator=evaluator,
                                         callbacks=[_Record(), _SyncEpoch(), _world_recorder(launch.world_size)])
    resume = resumable_checkpoint(work_dir, args, launch.world_size)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    elapsed = time.perf_counter() - t0
    seen = sum(min(len(b), cfg.batch_size) for b in probe._batches()) if total_steps else 0
    report = _Fit(
        train_metrics={k: float(v) for k, v in output.metrics.items()},
        best_checkpoint=trainer.state.best_model_checkpoint,
        dev_best=float(trainer.state.best_metric) if trainer.state.best_metric is not None else None,
        dev_before=dev_before, history=history, seconds=round(elapsed, 1),
        throughput=round(trainer.state.global_step * (seen / max(1, steps_per_epoch)) / elapsed, 3),
        trainable=trainable, total=total, dropped=probe.dropped, gathered=_gathers(loss),
    )
    return model, base_emb, evaluator, report, wait_group


def train(pairs: Sequence["Pair"], cfg: TrainConfig, settings: Settings | None = None, *,
          dev: DevSet | None = None, dev_chunks: ChunkedSet | None = None, guards: Sequence[ChunkedSet] = (),
          out_dir: Path | None = None, work_dir: Path | None = None, progress: bool = True,
          launch: Launch | None = None) -> TrainResult:
    """Train, keep the best dev checkpoint, save the model with its registry metadata and card.

    Under ``torchrun`` (``launch``, read from the environment by default) every rank calls this;
    ``cfg.batch_size`` is then per rank. Rank 0 chooses the interpolation weight and writes the model;
    the others wait for it and return its result, so every rank returns once the folder exists.

    ``dev`` chooses the checkpoint (the trainer's cheap document-level evaluator); ``dev_chunks``,
    the same questions scored at chunk level, chooses the interpolation weight (cross-patient
    MAP@100; without it the document-level score). ``guards`` are general-retrieval sets that bound
    that choice (see :func:`choose_interpolation`); all are used only with ``interpolate_choices``.

    ``pairs`` must already be restricted to training patients; with ``num_negatives`` > 0 each
    pair needs that many negatives (see ``finetune.negatives.fill_missing``).

    With ``cfg.soup`` > 1 the recipe runs that many times (seeds ``seed``, ``seed + 1``, ...), each
    finished run's weights are kept under ``work_dir/member-<seed>`` and reused on a rerun, and
    their average goes on to the interpolation (``finetune.soup``).
    """
    import torch

    settings = settings or load_settings()
    launch = launch or launch_from_env()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not pairs:
        raise ValueError("no training pairs")
    out_dir = Path(out_dir) if out_dir else trained_models_dir(settings) / cfg.name
    work_dir = Path(work_dir) if work_dir else out_dir.parent / f".{out_dir.name}.work"
    _check_distill(cfg, launch.world_size)
    if cfg.num_negatives:
        pairs = fill_missing(pairs, cfg.num_negatives, seed=cfg.seed)

    if cfg.soup < 1:
        raise ValueError(f"soup must be >= 1, got {cfg.soup}")
    if cfg.soup > 1 and launch.world_size > 1:
        raise ValueError("a soup (soup > 1) trains its members one after another in one process; "
                         "under torchrun train one member per launch instead")
    wait_group = None
    fits: list[_Fit] = []
    members: list[dict[str, Any]] = []  # the weights of the members not held in `model`
    model = base_emb = evaluator = None
    recipe = {k: v for k, v in asdict(cfg).items()
              if k not in ("name", "soup", "seed", "interpolate", "interpolate_choices", "guard_tolerance")}
    for k in range(cfg.soup):
        seed = cfg.seed + k
        member_dir = work_dir / f"member-{seed}"
        fingerprint = member_fingerprint(pairs, recipe, seed) if cfg.soup > 1 else ""
        cached = load_member(member_dir, fingerprint) if cfg.soup > 1 else None
        if cached is not None:
            log.info("soup member %d of %d (seed %d): finished earlier, reusing %s", k + 1, cfg.soup, seed, member_dir)
            members.append(cached[0])
            fits.append(_Fit.from_json(cached[1]))
            continue
        if cfg.soup > 1:
            log.info("soup member %d of %d: training with seed %d", k + 1, cfg.soup, seed)
        fit_dir = work_dir / f"seed-{seed}" if cfg.soup > 1 else work_dir
        trained, base_emb, evaluator, fit, wait_group = _fit(pairs, dataclasses.replace(cfg, seed=seed), settings,
                                                             launch, dev=dev, work_dir=fit_dir, progress=progress,
                                                             score_base=not fits)
        if cfg.soup > 1 and launch.is_main:
            save_member(trained, member_dir, fingerprint, fit.to_json())
            shutil.rmtree(fit_dir, ignore_errors=True)  # the member's checkpoints are no longer needed
        if model is None:
            model = trained
        else:
            members.append(trained[0].auto_model.state_dict())
        fits.append(fit)
    if model is None:  # every member had finished earlier: the first one carries the average
        model, base_emb = load_trainable(cfg.base, settings, cfg.max_seq_length)
        model[0].auto_model.load_state_dict(members.pop(0))
        evaluator = make_evaluator(dev, base_emb.query_prefix, base_emb.passage_prefix) \
            if dev is not None and dev.queries else None
    if members:
        average_weights(model, members)
        log.info("soup of %d members (seeds %d-%d): weights averaged", cfg.soup, cfg.seed, cfg.seed + cfg.soup - 1)
    first = fits[0]
    qp, pp = base_emb.query_prefix, base_emb.passage_prefix
    if not launch.is_main:
        # the model is the same on every rank; rank 0 alone chooses the weight and writes it
        result = share_from_main(wait_group, None)
        embedders.clear_cache()
        return result
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
    result = TrainResult(
        name=cfg.name, path=out_dir, config=cfg, train_metrics=first.train_metrics,
        dev_before=first.dev_before, dev_after=dev_after, best_checkpoint=first.best_checkpoint,
        throughput_pairs_per_s=round(sum(f.throughput for f in fits) / len(fits), 3),
        trainable_parameters=first.trainable, total_parameters=first.total, pairs=len(pairs),
        pair_sources=_count(p.source for p in pairs), patients=len({p.patient_id for p in pairs}),
        dropped_by_sampler_epoch0=first.dropped, loss_history=first.history, dev_before_interpolation=dev_tuned,
        interpolation=alpha, dev_map_by_interpolation=alpha_scores, guard_map_by_interpolation=guard_scores,
        dev_map_scoring=dev_scoring, world_size=launch.world_size,
        gathered_negatives=first.gathered,
        soup_members=[{"seed": cfg.seed + i, "best_checkpoint": f.best_checkpoint, "dev_best": f.dev_best,
                       "train_seconds": f.seconds} for i, f in enumerate(fits)] if cfg.soup > 1 else [],
    )
    write_embedder_metadata(tmp_out, name=cfg.name, base=base_emb, cfg=cfg, result=result)
    write_model_card(tmp_out, result, base_emb.label, qp, pp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_out.replace(out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)

    embedders.clear_cache()  # a re-trained model of the same name must not come from the cache
    return share_from_main(wait_group, result)  # the other ranks are waiting for the folder to exist


# next to training_args.bin in each checkpoint: the number of ranks that wrote it (absent: 1)
WORLD_FILE = "crag_world.json"


def _world_recorder(world_size: int) -> Any:
    """A trainer callback that records the world size in each checkpoint, so a resume can check it.

    Why: ``per_device_train_batch_size`` is per rank, so a checkpoint of 2 x 16 and a run of
    4 x 16 agree on it while their global batches, step counts and data order differ.
    """
    from transformers import TrainerCallback

    class RecordWorld(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    (ckpt / WORLD_FILE).write_text(json.dumps({"world_size": world_size}))

    return RecordWorld()


def resumable_checkpoint(work_dir: Path, args: Any, world_size: int = 1) -> Path | None:
    """The latest checkpoint in ``work_dir`` written with the same optimisation settings, if any.

    An interrupted training (or one re-run with fewer ``max_steps``) continues from there instead
    of starting over; a checkpoint of different settings (learning rate, batch size, seed, loss
    scale of the run, number of ranks) is ignored and will be overwritten.
    """
    import torch

    checkpoints = sorted(Path(work_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for ckpt in reversed(checkpoints):
        try:
            old = torch.load(ckpt / "training_args.bin", weights_only=False)
            world_file = ckpt / WORLD_FILE
            old_world = json.loads(world_file.read_text())["world_size"] if world_file.is_file() else 1
        except Exception:  # noqa: BLE001 - unreadable: not resumable
            continue
        same = all(getattr(old, k, None) == getattr(args, k, None)
                   for k in ("learning_rate", "per_device_train_batch_size", "seed", "weight_decay"))
        if same and old_world == world_size and (ckpt / "trainer_state.json").is_file():
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
    for f in ("epochs", "learning_rate", "warmup_ratio", "scale", "hardness_strength", "distill_weight",
              "distill_lexical_share", "distill_temperature"):
        parser.add_argument(f"--{f.replace('_', '-')}", type=float)
    for f in ("max_steps", "batch_size", "mini_batch_size", "max_seq_length", "num_negatives", "eval_steps", "seed",
              "threads", "freeze_layers", "soup"):
        parser.add_argument(f"--{f.replace('_', '-')}", type=int)
    parser.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--matryoshka-dims", help="comma-separated, e.g. 384,256,128,64 ('' = off)")
    parser.add_argument("--loss-directions", help=f"comma-separated among {','.join(LOSS_DIRECTIONS)}")
    args = parser.parse_args(list(argv) if argv is not None else None)
    launch = launch_from_env()
    # under torchrun only rank 0 reports progress; the others speak up only for problems
    logging.basicConfig(level=logging.INFO if launch.is_main else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s[rank {launch.rank}]: %(message)s"
                        if launch.distributed else "%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg_data = json.loads(args.config.read_text()) if args.config else {}
    for k, v in vars(args).items():
        if k in TrainConfig.__dataclass_fields__ and v is not None:
            cfg_data[k] = v
    if isinstance(cfg_data.get("matryoshka_dims"), str):
        cfg_data["matryoshka_dims"] = [int(x) for x in cfg_data["matryoshka_dims"].split(",") if x.strip()] or None
    if isinstance(cfg_data.get("loss_directions"), str):
        cfg_data["loss_directions"] = [x.strip() for x in cfg_data["loss_directions"].split(",") if x.strip()]
    cfg = TrainConfig.from_json(cfg_data)
    settings = load_settings()
    dev = dev_chunks = None
    if args.dev_dir:
        d = args.dev_dir
        beir = load_beir(d / "corpus.jsonl", d / "queries.jsonl", d / "qrels.tsv")
        dev = DevSet.from_beir(beir).limited(args.dev_queries)
        # the interpolation weight is chosen on dev scored like eval.ir, as in finetune.pipeline (by rank 0)
        if launch.is_main:
            dev_chunks = ChunkedSet.like_index(beir, cfg.base, settings, "dev", query_ids=set(dev.queries))
    pairs = read_pairs(args.pairs)
    t0 = time.perf_counter()
    result = train(pairs, cfg, settings, dev=dev, dev_chunks=dev_chunks, out_dir=args.out, launch=launch)
    close_process_group(launch)  # every rank has the result: no collective after this
    if not launch.is_main:
        return 0
    _manifest(result.path, args.pairs, cfg, result, args.dev_dir, time.perf_counter() - t0)
    print(json.dumps({"model": str(result.path), "dev_before": result.dev_before, "dev_after": result.dev_after,
                      "pairs_per_s": result.throughput_pairs_per_s}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
