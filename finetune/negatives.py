"""Hard negatives for the training pairs, mined with the embedder's own prefixes.

``sentence_transformers.util.mine_hard_negatives`` finds passages the current model ranks close to
each query, but it has no notion of patients: on clinical notes the closest "negatives" are often
another note of the same patient (a follow-up that repeats the finding) or another chunk of the
source document - false negatives that teach the model to push away right answers. So we mine more
candidates than we keep (``mine``), map each candidate back to the documents and patients whose
passages have that text, drop any candidate shared with the anchor's patient or document, and keep
the first ``keep`` (1-3) in rank order. A pair for which nothing survives keeps no negative; the
trainer then pads it with a random passage of another patient (see :func:`fill_missing`).
"""
from __future__ import annotations

import hashlib
import logging
import random
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from finetune.pairs import Pair

if TYPE_CHECKING:  # pragma: no cover
    from rag.chunking import Chunk
    from rag.embedders import Embedder

log = logging.getLogger(__name__)

#: Which candidates may be negatives: at most (1 - margin) x the positive's score, among the base's top
#: ``RANGE_MAX``. These suit models with spread-out scores; e5 models score every passage in a narrow band,
#: so on the cpu-demo pairs they leave 878 of 913 pairs without a mined negative (margin 0 and range None,
#: every passage, find one for each: docs/results.md).
RELATIVE_MARGIN = 0.05
RANGE_MAX = 50

#: ``vectors(texts, kind)``: L2-normalised vectors of ``texts`` as "query" or "passage", in order.
Embed = Callable[[Sequence[str], str], np.ndarray]


@dataclass
class MiningReport:
    pairs: int = 0
    candidates: int = 0
    dropped_same_patient: int = 0
    dropped_same_document: int = 0
    dropped_unknown: int = 0
    kept: int = 0
    pairs_without_negative: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def passage_owners(pairs: Sequence[Pair], chunks: Iterable["Chunk"] = ()) -> dict[str, set[tuple[str, str]]]:
    """Passage text -> every (doc_id, patient_id) it occurs in. Templated notes repeat text across
    documents and patients, so one text can have many owners."""
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for c in chunks:
        owners[c.text].add((c.doc_id, c.patient_id))
    for p in pairs:
        owners[p.positive].add((p.doc_id, p.patient_id))
    return owners


def filter_negatives(pair: Pair, candidates: Sequence[str], owners: dict[str, set[tuple[str, str]]],
                     keep: int, report: MiningReport | None = None) -> list[str]:
    """The first ``keep`` candidates that belong to neither the pair's patient nor its document.

    A candidate whose owners are unknown is dropped too: we cannot prove it is a true negative.
    """
    out: list[str] = []
    for text in candidates:
        who = owners.get(text)
        if report is not None:
            report.candidates += 1
        if not who:
            if report is not None:
                report.dropped_unknown += 1
            continue
        if any(doc == pair.doc_id for doc, _ in who):
            if report is not None:
                report.dropped_same_document += 1
            continue
        if any(pid == pair.patient_id for _, pid in who):
            if report is not None:
                report.dropped_same_patient += 1
            continue
        if text in out or text == pair.positive:
            continue
        out.append(text)
        if len(out) >= keep:
            break
    return out


def mine_negatives(pairs: Sequence[Pair], embedder: "Embedder", corpus_chunks: Sequence["Chunk"] = (), *,
                   mine: int = 10, keep: int = 1, relative_margin: float | None = RELATIVE_MARGIN,
                   range_max: int | None = RANGE_MAX, batch_size: int = 32, verbose: bool = False,
                   vectors: "Embed | None" = None) -> tuple[list[Pair], MiningReport]:
    """Pairs with ``negatives`` filled in (new objects; input untouched) and counts of what was dropped.

    Candidates come from the pairs' positives plus ``corpus_chunks`` (pass the chunks of the
    training patients only: mining must not see dev/test text). Prefixes come from the embedder
    entry, the same ones used by the index and the trainer. ``vectors(texts, kind)`` computes the
    query and passage vectors elsewhere (``finetune.engine.embed_on``: Ray workers, or this process
    in the same batches), so a distributed run mines the same negatives; the search and the
    selection stay sentence-transformers' own, fed through its embedding cache. ``range_max=None``
    searches every passage (fine for a few thousand; at study scale give a number).
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    if not 1 <= keep <= mine:
        raise ValueError(f"need 1 <= keep ({keep}) <= mine ({mine})")
    report = MiningReport(pairs=len(pairs), params={
        "mine": mine, "keep": keep, "relative_margin": relative_margin, "range_max": range_max,
        "sampling_strategy": "top", "query_prompt": embedder.query_prefix, "corpus_prompt": embedder.passage_prefix,
        "model": embedder.label,
    })
    chunk_list = list(corpus_chunks)
    owners = passage_owners(pairs, chunk_list)
    corpus = list(dict.fromkeys([c.text for c in chunk_list] + [p.positive for p in pairs]))
    n_candidates = min(mine, max(1, len(corpus) - 1))
    ds = Dataset.from_dict({"anchor": [p.query for p in pairs], "positive": [p.positive for p in pairs]})
    with tempfile.TemporaryDirectory(prefix="crag-mine-") as cache:
        if vectors is not None:
            report.params["vectors"] = "precomputed"
            _fill_cache(Path(cache), embedder, [p.query for p in pairs], corpus, vectors)
        mined = mine_hard_negatives(
            ds, embedder.model, anchor_column_name="anchor", positive_column_name="positive", corpus=corpus,
            range_max=max(range_max, n_candidates) if range_max else len(corpus) - 1,
            relative_margin=relative_margin, num_negatives=n_candidates, sampling_strategy="top",
            query_prompt=embedder.query_prefix or None, corpus_prompt=embedder.passage_prefix or None,
            output_format="labeled-list", batch_size=batch_size, verbose=verbose,
            cache_folder=cache if vectors is not None else None,
        )
        if vectors is not None and len(list(Path(cache).iterdir())) != 2:
            # sentence-transformers computed (and saved) vectors itself: its cache naming changed
            raise RuntimeError("mine_hard_negatives did not use the precomputed vectors; check the "
                               "sentence-transformers version against finetune.negatives._fill_cache")
    found: dict[tuple[str, str], list[str]] = {}
    for row in mined:
        texts = row["positive"]
        found[(row["anchor"], texts[0])] = list(texts[1:])
    out: list[Pair] = []
    for p in pairs:
        negs = filter_negatives(p, found.get((p.query, p.positive), []), owners, keep, report)
        report.kept += len(negs)
        report.pairs_without_negative += not negs
        out.append(Pair(**{**p.to_json(), "negatives": negs}))
    log.info("hard negatives: %s", report.to_json())
    return out, report


def _fill_cache(folder: Path, embedder: "Embedder", queries: Sequence[str], corpus: Sequence[str],
                vectors: "Embed") -> None:
    """Write query and corpus vectors where ``mine_hard_negatives`` looks for its cache.

    The file names are the library's (sentence-transformers 5.x ``util/hard_negatives.py``): a
    sha256 of the model name, prompt, prompt name and the de-duplicated texts. The queries and the
    corpus are de-duplicated the way it does (positives appended to the corpus, first copy kept)."""
    model_name = embedder.model.model_card_data.base_model or ""
    unique_queries = list(dict.fromkeys(queries))
    unique_corpus = list(dict.fromkeys(corpus))
    for name, texts, prompt, kind in (("query", unique_queries, embedder.query_prefix or None, "query"),
                                      ("corpus", unique_corpus, embedder.passage_prefix or None, "passage")):
        key = hashlib.sha256(repr((model_name, prompt, None, texts)).encode(), usedforsecurity=False).hexdigest()
        np.save(folder / f"{name}_embeddings_{key}.npy", vectors(texts, kind))


def fill_missing(pairs: Sequence[Pair], n: int, seed: int = 0) -> list[Pair]:
    """Give every pair exactly ``n`` negatives: top up with passages of *other* patients, chosen at
    random, so the training table has a fixed number of columns. Pairs are copied."""
    if n <= 0:
        return [Pair(**{**p.to_json(), "negatives": []}) for p in pairs]
    rng = random.Random(seed)
    pool = [(p.positive, p.patient_id) for p in pairs]
    out = []
    for p in pairs:
        negs = list(p.negatives[:n])
        tries = 0
        while len(negs) < n and tries < 50 * n:
            text, pid = pool[rng.randrange(len(pool))]
            tries += 1
            if pid != p.patient_id and text not in negs and text != p.positive:
                negs.append(text)
        if len(negs) < n:
            raise ValueError(f"cannot find {n} negatives from other patients for a pair of patient "
                             f"{p.patient_id}: the training set needs at least two patients")
        out.append(Pair(**{**p.to_json(), "negatives": negs}))
    return out
