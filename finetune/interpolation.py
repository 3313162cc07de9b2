"""Interpolating the fine-tuned weights with the base model's (WiSE-FT), and choosing how much.

A small in-domain training set can overfit its questions and lose what the base knew about other
text; averaging the weights keeps both. The weight is chosen on the dev set, bounded by guard sets
the domain model must not get worse on.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


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
