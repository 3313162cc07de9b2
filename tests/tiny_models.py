"""A tiny sentence-transformers model built locally in a few seconds: a fast stand-in embedder for tests.

WordPiece tokenizer trained on a handful of sentences + a randomly initialised 2-layer ``BertModel``
(the recipe in docs/design.md §4), wrapped as Transformer -> mean Pooling -> Normalize and saved with
``SentenceTransformer.save``. The vectors carry no meaning; use it where a test needs the plumbing
(shapes, prefixes, token offsets, index round trips), not retrieval quality. Deterministic: the
same arguments give the same weights.

    from tiny_models import build_tiny_st
    path = build_tiny_st(tmp_path / "tiny")          # then get_embedder(str(path))
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_CORPUS = [
    "Patient admitted with chest pain radiating to the left arm; troponin elevated.",
    "Die Patientin erhielt Metformin 1000 mg zweimal täglich.",
    "MRI of the brain showed no acute infarction or haemorrhage.",
    "Entlassung in gutem Allgemeinzustand, Wiedervorstellung bei Beschwerden.",
    "History of type 2 diabetes mellitus, hypertension and hyperlipidaemia.",
    "Z.n. Appendektomie 2015, keine Allergien bekannt.",
    "Blood pressure 145/90 mmHg, heart rate 88 bpm, temperature 37.8 C.",
    "Diagnose: ambulant erworbene Pneumonie, Therapie mit Ceftriaxon 2 g täglich.",
    "Discharge summary: the patient was started on aspirin and atorvastatin.",
    "query: what medication was given? passage: the patient received insulin.",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_st(out_dir: Path, corpus: list[str] | None = None, dim: int = 32, *,
                  vocab_size: int = 500, max_seq_length: int = 128,
                  prompts: dict[str, str] | None = None, seed: int = 0) -> Path:
    """Write a tiny sentence-transformers folder to ``out_dir`` and return it.

    ``dim`` is the hidden size and embedding dimension (even); ``prompts`` (e.g.
    ``{"query": "query: ", "document": "passage: "}``) is stored in config_sentence_transformers.json,
    where the embedder registry reads a folder's prefixes from.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    if dim % 2:
        raise ValueError("dim must be even (2 attention heads)")
    out_dir = Path(out_dir)
    hf_dir = out_dir.parent / f".{out_dir.name}-hf"
    corpus = list(corpus or DEFAULT_CORPUS)

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                                              show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_seq_length,
    ).save_pretrained(hf_dir)

    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=dim, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * dim,
                        max_position_embeddings=max(128, max_seq_length))
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            BertModel(config).save_pretrained(hf_dir)  # with pooler: loads without a MISSING report
        transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
        model = SentenceTransformer(
            modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()],
            device="cpu", prompts=prompts,
        )
        model.save(str(out_dir), create_model_card=False)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    import shutil

    shutil.rmtree(hf_dir, ignore_errors=True)
    return out_dir


def build_xlmr_st(out_dir: Path, texts: list[str], *, hidden: int = 32, layers: int = 2, heads: int = 2,
                  intermediate: int | None = None, vocab_size: int | None = None, tokenizer_vocab: int = 300,
                  max_seq_length: int = 64, prompts: dict[str, str] | None = None, seed: int = 0) -> Path:
    """An XLM-RoBERTa sentence-transformers folder (multilingual-e5's architecture), random weights.

    Tiny by default, for tests. With e5-large's sizes (hidden 1024, 24 layers, 16 heads, 4096
    intermediate, vocab 250,002) it has that model's parameter count, so memory and speed measured on
    it (bench/gpu_train_recipe.py) hold for the real weights; ``vocab_size`` above what the Unigram
    tokenizer learns only sizes the embedding matrix. Random weights give no retrieval quality.
    """
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    out_dir = Path(out_dir)
    hf = out_dir.parent / f".{out_dir.name}-hf"
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=tokenizer_vocab, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>",
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                            unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                            model_max_length=max_seq_length).save_pretrained(hf)
    config = XLMRobertaConfig(vocab_size=max(vocab_size or 0, tok.get_vocab_size()), hidden_size=hidden,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              intermediate_size=intermediate or 2 * hidden, max_position_embeddings=max_seq_length + 2,
                              pad_token_id=tok.token_to_id("<pad>"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        XLMRobertaModel(config).save_pretrained(hf)
    tr = Transformer(str(hf), max_seq_length=max_seq_length)
    SentenceTransformer(modules=[tr, Pooling(hidden, "mean"), Normalize()], device="cpu", prompts=prompts).save(
        str(out_dir), create_model_card=False)
    shutil.rmtree(hf, ignore_errors=True)
    return out_dir
