"""Patient-aware batches for contrastive training: at most ``max_per_group`` pairs of one patient per batch.

In-batch negatives are the other pairs of the batch; two notes of the same patient are near
duplicates, so a batch with both teaches the model to push apart what belongs together. The sampler
draws patients by their remaining pairs (a Fenwick tree over the weights, so building an epoch stays
fast at study scale: 100,000 patients in about a second) and plugs into sentence-transformers'
trainer as its batch sampler.

Under ``torchrun`` (``world_size`` > 1) the sampler builds *global* batches of ``world_size`` x the
per-rank batch with the same rule (one patient per global batch, same seed on every rank), cuts each
into ``world_size`` equal contiguous slices and yields them in dealing order: global batch 0's slice
for rank 0, its slice for rank 1, ..., then global batch 1. Accelerate's ``BatchSamplerShard``
(which the trainer wraps around any batch sampler in a distributed run) hands position ``k`` to
rank ``k % world_size``, so rank ``r`` trains on slice ``r`` of every global batch. Slices are equal
because the cached loss gathers the ranks' embeddings into one global batch (all-gather needs equal
shapes, and every rank must run as many GradCache mini-batches); the pairs of a global batch beyond
a multiple of ``world_size`` are left out of that epoch and counted as dropped.
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger(__name__)


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


def _sharded_batches(groups: Sequence[str], batch_size: int, max_per_group: int, seed: int, min_batch: int,
                     world_size: int) -> tuple[list[list[int]], int]:
    """Per-rank batches in dealing order: slice ``r`` of global batch ``k`` is at ``k * world_size + r``.

    The global batch (``batch_size`` x ``world_size`` pairs, at most ``max_per_group`` per patient) is
    what the gathered loss sees, so the patient rule holds across ranks. With ``world_size`` 1 this
    is :func:`_patient_batches` unchanged (same seed, same batches as before sharding existed).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1:
        return _patient_batches(groups, batch_size, max_per_group, seed, min_batch)
    # a global batch is kept when each rank's slice would be kept on its own (and is never empty)
    global_batches, dropped = _patient_batches(groups, batch_size * world_size, max_per_group, seed,
                                               max(1, min_batch) * world_size)
    dealt: list[list[int]] = []
    for batch in global_batches:
        size = len(batch) // world_size
        dropped += len(batch) - size * world_size
        dealt.extend(batch[r * size:(r + 1) * size] for r in range(world_size))
    return dealt, dropped


_SAMPLER_CLASS: Any = None


def _sampler_class() -> Any:
    """The sampler class, defined on first use so importing this module does not import torch."""
    global _SAMPLER_CLASS
    if _SAMPLER_CLASS is None:
        from sentence_transformers.base.sampler import DefaultBatchSampler

        class PatientBatchSampler(DefaultBatchSampler):
            """At most ``max_per_group`` rows of one patient per batch (see :func:`_patient_batches`)."""

            def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0,
                         *, groups=(), max_per_group=1, min_batch=None, world_size=1):
                super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                                 valid_label_columns=valid_label_columns, generator=generator, seed=seed)
                if len(dataset) != len(groups):
                    raise ValueError(f"{len(groups)} patient ids for {len(dataset)} training rows")
                self.groups = list(groups)
                self.max_per_group = max_per_group
                self.min_batch = min_batch if min_batch is not None else max(2, batch_size // 4)
                self.rank_batch_size = batch_size
                self.world_size = world_size
                self.dropped = 0
                if world_size > 1:
                    # BatchSamplerShard yields a round of world_size batches only when the round's
                    # last batch is exactly ``batch_size`` long, unless batch_size is None ("batches
                    # of dynamic length"); the patient rule shrinks the batches at an epoch's end
                    self.batch_size = None

            @property
            def steps(self) -> int:
                """Batches per rank in an epoch: what one optimizer step per batch makes of it."""
                return len(self) // self.world_size

            def _batches(self) -> list[list[int]]:
                batches, self.dropped = _sharded_batches(self.groups, self.rank_batch_size, self.max_per_group,
                                                         (self.seed or 0) + self.epoch, self.min_batch,
                                                         self.world_size)
                return batches

            def __iter__(self) -> Iterator[list[int]]:
                yield from self._batches()

            def __len__(self) -> int:
                return len(self._batches())

        _SAMPLER_CLASS = PatientBatchSampler
    return _SAMPLER_CLASS


def _build_patient_sampler(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0, *,
                           groups=(), max_per_group=1, min_batch=None, world_size=1):  # noqa: ANN001
    return _sampler_class()(dataset, batch_size, drop_last, valid_label_columns, generator, seed,
                            groups=groups, max_per_group=max_per_group, min_batch=min_batch, world_size=world_size)


def find_patient_sampler(loader: Any, depth: int = 6) -> Any:
    """The patient sampler inside a (prepared, possibly batch-skipping) data loader, or None.

    Why: on a resume in a distributed run the trainer's loader is DataLoaderShard ->
    SkipBatchSampler -> BatchSamplerShard -> this sampler, and neither the trainer nor accelerate's
    ``set_epoch`` reaches three levels down, so the resumed epoch would replay epoch 0's batches.
    ``finetune.train`` sets the epoch through this at each epoch's start instead.
    """
    cls = _SAMPLER_CLASS
    for _ in range(depth):
        if loader is None or (cls is not None and isinstance(loader, cls)):
            return loader
        inner = getattr(loader, "batch_sampler", None)  # not `or`: truth would call len(), i.e. build an epoch
        loader = inner if inner is not None else getattr(loader, "sampler", None)
    return None


def make_patient_sampler(groups: Sequence[str], max_per_group: int = 1, min_batch: int | None = None,
                         world_size: int = 1) -> Any:
    """A ``batch_sampler`` for SentenceTransformerTrainingArguments: one pair per patient per batch.

    ``groups[i]`` is the patient of training row i. The trainer calls the returned function with
    (dataset, batch_size, drop_last, valid_label_columns, generator, seed) - the signature its
    ``BatchSamplers`` documentation accepts; ``batch_size`` is per rank. With ``world_size`` > 1 the
    sampler yields every rank's batches in dealing order (see :func:`_sharded_batches`) and relies
    on the trainer's accelerate shard to deal them. It is a ``functools.partial`` of a module-level
    function because the trainer pickles its arguments with every checkpoint.
    """
    import functools

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return functools.partial(_build_patient_sampler, groups=tuple(groups), max_per_group=max_per_group,
                             min_batch=min_batch, world_size=world_size)
