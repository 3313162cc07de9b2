"""What a trained embedder carries with it: the metadata the registry reads, and a model card for people."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from finetune.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)


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


def _distilled(cfg: TrainConfig) -> str:
    if not cfg.distill_weight:
        return ""
    return (f", plus {cfg.distill_weight} x KL to a hybrid teacher (BM25 share {cfg.distill_lexical_share} + the "
            f"base's cosine, min-max fused per batch, temperature {cfg.distill_temperature}; `finetune.distill`)")


def write_model_card(folder: Path, result: TrainResult, base_label: str, query_prefix: str = "",
                     passage_prefix: str = "") -> Path:
    """README.md in the model folder: data, parameters, dev metrics, throughput."""
    cfg = result.config
    rows = "\n".join(f"| {k} | {result.dev_before.get(k, float('nan')):.4f} | {v:.4f} |"
                     for k, v in sorted(result.dev_after.items()) if k in {"map@100", "ndcg@10", "mrr@10", "recall@10", "recall@100"})
    text = f"""# {result.name}

Fine-tuned from **{base_label}** with sentence-transformers
(`CachedMultipleNegativesRankingLoss`{' in `MatryoshkaLoss` ' + str(cfg.matryoshka_dims) if cfg.matryoshka_dims else ''},
scale {cfg.scale}){_distilled(cfg)} by `python -m finetune.train` of this project.

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
{_soup_note(result)}{_interpolation_note(result)}
## Training
{json.dumps({k: round(v, 4) for k, v in result.train_metrics.items()})}
Throughput: {result.throughput_pairs_per_s} pairs/s on this machine.
{_processes_note(result)}
## Use
Queries take the prefix {json.dumps(query_prefix)}, passages {json.dumps(passage_prefix)} (from the base entry; stored in
`crag_embedder.json` and in the model's prompts, applied by the registry). Load by name:
`rag.embedders.get_embedder("{result.name}")`.
"""
    path = Path(folder) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def _processes_note(result: TrainResult) -> str:
    """How many processes trained it: under torchrun ``batch_size`` is per process, so the card says
    what batch (and how many in-batch negatives) the loss actually saw."""
    n = result.world_size
    if n <= 1:
        return ""
    b = result.config.batch_size
    negatives = (f"negatives gathered across processes: each query saw the {n * b}-pair global batch"
                 if result.gathered_negatives else f"negatives not gathered: each query saw its process's {b} pairs")
    return (f"Data-parallel over {n} processes (torchrun, DDP): {b} pairs per process, global batch {n * b} "
            f"(at most {result.config.max_per_patient} pair(s) per patient in it); {negatives}.\n")


def _soup_note(result: TrainResult) -> str:
    """A soup's members: the weights above are their average, so each member's own dev score is shown."""
    if not result.soup_members:
        return ""
    members = "; ".join(f"seed {m['seed']}: dev MAP@100 {m['dev_best']:.4f} at {Path(str(m['best_checkpoint'])).name}"
                        if m.get("dev_best") is not None else f"seed {m['seed']}"
                        for m in result.soup_members)
    return (f"A uniform soup of {len(result.soup_members)} runs of this recipe (weights averaged before the "
            f"interpolation below): {members}.\n")


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
