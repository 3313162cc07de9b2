"""A uniform model soup: fine-tune the same recipe under several seeds and average the weights.

Why: on a few hundred training pairs two runs that differ only in their seed (data order, dropout)
differ on dev by about as much as most recipe changes gain. Averaging the weights of runs that
start from the same pre-trained model keeps them in one basin and is meant to cancel part of that
variance (Wortsman et al., "Model soups", ICML 2022); WiSE-FT then interpolates the soup with the
base as it would a single run. On the cpu-demo preset it did not pay (docs/results.md: a two-seed
soup 0.334 on dev, one seed 0.342), so ``TrainConfig.soup`` defaults to 1. Each member's weights are
kept in the work folder until the model is saved, so an interrupted soup trains only the members it
had not finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from finetune.pairs import Pair

log = logging.getLogger(__name__)

MEMBER_WEIGHTS = "weights.safetensors"
MEMBER_INFO = "member.json"


def average_weights(model: "SentenceTransformer", others: Sequence[dict[str, Any]]) -> int:
    """Set ``model``'s floating-point weights to the mean of its own and each state dict in ``others``.

    Returns the number of tensors averaged; integer buffers (position ids) stay as they are.
    """
    own = model[0].auto_model.state_dict()
    for other in others:
        if other.keys() != own.keys():
            raise ValueError("soup members differ in architecture; cannot average them")
    n = 1 + len(others)
    merged, changed = {}, 0
    for key, value in own.items():
        if value.is_floating_point() and others:
            total = value.clone()
            for other in others:
                total += other[key].to(value.dtype)
            merged[key] = total / n
            changed += 1
        else:
            merged[key] = value
    model[0].auto_model.load_state_dict(merged)
    return changed


def member_fingerprint(pairs: Sequence["Pair"], recipe: dict[str, Any], seed: int) -> str:
    """What decides a member's weights: the pairs (in order), the recipe and the seed.

    ``recipe`` is the training configuration without what only names or post-processes the
    result (the model name, the soup size, the interpolation options), so a member trained for
    one soup is reused by a larger one with the same recipe.
    """
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.query, p.positive, list(p.negatives), p.patient_id]).encode())
        digest.update(b"\n")
    digest.update(json.dumps({"recipe": recipe, "seed": seed}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def save_member(model: "SentenceTransformer", folder: Path, fingerprint: str, info: dict[str, Any]) -> None:
    """Write a finished member's weights and what its training reported (atomically: info last)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / MEMBER_INFO).unlink(missing_ok=True)
    state = {k: v.detach().contiguous() for k, v in model[0].auto_model.state_dict().items()}
    save_file(state, str(folder / MEMBER_WEIGHTS))
    tmp = folder / (MEMBER_INFO + ".partial")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, **info}, indent=1, default=str))
    tmp.replace(folder / MEMBER_INFO)


def load_member(folder: Path, fingerprint: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A finished member's (state dict, info) if ``folder`` holds one for this fingerprint, else None."""
    from safetensors.torch import load_file

    info_path = folder / MEMBER_INFO
    if not info_path.is_file() or not (folder / MEMBER_WEIGHTS).is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("fingerprint") != fingerprint:
        log.info("%s was trained on other pairs or another recipe: training it again", folder)
        return None
    return load_file(str(folder / MEMBER_WEIGHTS)), info
