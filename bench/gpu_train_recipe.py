"""Speed and memory of the ``gpu-e5-large`` training recipe at multilingual-e5-large's real size.

The e5-large weights cannot be had here, so the model is an XLM-RoBERTa with e5-large's exact shape
(24 layers, hidden 1024, 16 heads, vocab 250,002: 560M parameters) and random weights. Memory and
step time depend on the shape and the sequence lengths, not on the weight values, so the figures
hold for the real model; retrieval quality does not (none is measured). The training pairs are
inverse-cloze pairs (a sentence as query, its chunk of up to 512 tokens as positive, another note's chunk as
hard negative) from the synthea demo notes shipped in ``data/synthea``; each pair counts as its own
patient so that batches of 1024 fill (the patient rule itself is covered by tests/test_train.py).
It runs ``finetune.train.train`` with the preset's TrainConfig, changing only the base, the name
and the number of steps.

    python bench/gpu_train_recipe.py --steps 6 --out var/bench/gpu-recipe     # on a GPU
    python bench/gpu_train_recipe.py --tiny --steps 2                          # plumbing check on CPU

Prints one table (step time, pairs/s, tokens/s, peak GPU memory, hours per million pairs) and
writes it as JSON to ``--out`` (``figures-mini<N>[-fill].json``).

    python bench/gpu_train_recipe.py --steps 4 --mini-batch 16                  # smaller GradCache chunks
    python bench/gpu_train_recipe.py --steps 4 --fill --max-pairs 2048           # every passage 512 tokens
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rag  # noqa: E402,F401  (offline environment first)
from finetune.pairs import Pair, chunk_corpus, inverse_cloze_pairs  # noqa: E402
from finetune.presets import GPU_E5_LARGE  # noqa: E402
from rag.chunking import ChunkingConfig  # noqa: E402
from rag.config import load_settings  # noqa: E402
from rag.corpus import load_corpus  # noqa: E402

E5_LARGE_SHAPE = dict(hidden=1024, layers=24, heads=16, intermediate=4096, vocab_size=250_002)
TINY_SHAPE = dict(hidden=32, layers=2, heads=2, intermediate=64, vocab_size=None)


def make_pairs(corpus, tokenizer, max_tokens: int, seed: int = 0, fill: bool = False,
               limit: int | None = None) -> list[Pair]:
    """Inverse-cloze pairs over ``corpus``, chunked to ``max_tokens`` of ``tokenizer``.

    ``fill``: positives and negatives are lengthened with other chunks' text up to ``max_tokens``,
    the worst case for time and memory (clinical notes are often longer than the demo's).
    """

    def offsets(text: str) -> list[tuple[int, int]]:
        return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    chunks = chunk_corpus(corpus, offsets, ChunkingConfig(max_tokens=max_tokens, overlap_tokens=32))
    pairs = inverse_cloze_pairs(chunks, per_chunk=2, seed=seed)[:limit]
    rng = random.Random(seed)
    others = [c.text for cs in chunks.values() for c in cs]
    def filled(text: str) -> str:
        while fill and len(tokenizer(text, add_special_tokens=False)["input_ids"]) < max_tokens:
            text += "\n" + rng.choice(others)
        return text

    out = []
    for i, p in enumerate(pairs):
        negative = rng.choice(others)
        while negative == p.positive:
            negative = rng.choice(others)
        out.append(dataclasses.replace(p, patient_id=f"pair{i}", positive=filled(p.positive),
                                       negatives=[filled(negative)]))
    return out


def token_stats(tokenizer, pairs: list[Pair], max_len: int) -> dict[str, float]:
    def lengths(texts: list[str], prefix: str) -> list[int]:
        enc = tokenizer([prefix + t for t in texts], truncation=True, max_length=max_len)["input_ids"]
        return [len(e) for e in enc]

    q = lengths([p.query for p in pairs], "query: ")
    d = lengths([p.positive for p in pairs] + [p.negatives[0] for p in pairs], "passage: ")
    return {"query_tokens_mean": statistics.mean(q), "passage_tokens_mean": statistics.mean(d),
            "passages_at_max_length": sum(n >= max_len for n in d) / len(d)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and batch 16: checks the script on CPU")
    ap.add_argument("--mini-batch", type=int, default=None, help="GradCache mini-batch (default: the preset's)")
    ap.add_argument("--fill", action="store_true", help="passages filled to the full length (worst case)")
    ap.add_argument("--max-pairs", type=int, default=None, help="use only the first N pairs (a faster --fill)")
    ap.add_argument("--out", default="var/bench/gpu-recipe")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from finetune.train import train
    from tests.tiny_models import build_xlmr_st

    cuda = torch.cuda.is_available()
    recipe = GPU_E5_LARGE.train
    shape = TINY_SHAPE if args.tiny else E5_LARGE_SHAPE
    seq = 64 if args.tiny else recipe.max_seq_length
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = load_settings(home=Path(tempfile.mkdtemp(prefix="gpu-recipe-")))

    t0 = time.perf_counter()
    demo = load_corpus("synthea", settings=settings)
    texts = [d.text for d in demo.documents]
    base = build_xlmr_st(Path(settings.home) / "base", texts, tokenizer_vocab=8000, max_seq_length=seq,
                         prompts={"query": "query: ", "passage": "passage: "}, **shape)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    pairs = make_pairs(demo, tokenizer, max_tokens=seq - 8, fill=args.fill, limit=args.max_pairs)
    build_s = time.perf_counter() - t0

    batch = 16 if args.tiny else recipe.batch_size
    mini = args.mini_batch or (8 if args.tiny else recipe.mini_batch_size)
    cfg = dataclasses.replace(recipe, base=str(base), name="bench-gpu-recipe", max_steps=args.steps,
                              batch_size=batch, mini_batch_size=mini, max_seq_length=seq, bf16=recipe.bf16 and cuda,
                              eval_steps=0, interpolate_choices=None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    result = train(pairs, cfg, settings, progress=True)
    train_s = time.perf_counter() - t1
    runtime = result.train_metrics.get("train_runtime", train_s)
    step_s = runtime / args.steps
    stats = token_stats(tokenizer, pairs[: 4 * batch], seq)
    tokens_per_step = batch * (stats["query_tokens_mean"] + 2 * stats["passage_tokens_mean"])
    figures = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "model": "XLM-R, e5-large shape, random weights" if not args.tiny else "XLM-R tiny",
        "parameters": result.total_parameters,
        "trainable_parameters": result.trainable_parameters,
        "batch_size": batch, "mini_batch_size": mini, "max_seq_length": seq, "bf16": cfg.bf16,
        "matryoshka_dims": cfg.matryoshka_dims, "num_negatives": cfg.num_negatives,
        "steps": args.steps, "pairs_available": len(pairs),
        "build_s": round(build_s, 1), "train_call_s": round(train_s, 1), "trainer_runtime_s": round(runtime, 1),
        "step_s": round(step_s, 2), "pairs_per_s": round(batch / step_s, 1),
        "tokens_per_s": round(tokens_per_step / step_s), **{k: round(v, 2) for k, v in stats.items()},
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "hours_per_million_pairs": round(1e6 / (batch / step_s) / 3600, 2),
        "loss_history": [h.get("loss") for h in result.loss_history if "loss" in h],
    }
    tag = f"mini{mini}{'-fill' if args.fill else ''}"
    (out / f"figures-{tag}.json").write_text(json.dumps(figures, indent=2))
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
