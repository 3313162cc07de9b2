"""Does an unknown word look like a name or like a mangled word? A character n-gram classifier.

A word on no safe list is a name, a place, or clinical shorthand and typos ("prauuations",
"kaltostat"). Context settles most cases ("Dr. X", "X, RN", "from X"); where there is none, the
letters still tell: "Kipkosgei" and "Ogunwobi" are spelled like names, "diasolayte" like a word.

The model is naive Bayes over character 2-4-grams, trained on word lists only, never on notes:
names are the name words of the project's gazetteers, the census and Philter; words are the safe
words that are clinical or common, each also with one random typo (a typo must still read as a
word). Training takes a few seconds; the fitted model is cached on disk under the model cache,
keyed by the inputs, so a process loads it in well under a second.
"""
from __future__ import annotations

import hashlib
import pickle
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from finetune.phi_vocabulary import Vocabulary, _zipf_table, load_vocabulary
from rag.config import load_settings

#: Words need this much evidence of a name to be masked without context (probability of "name").
NAME_SHAPE_THRESHOLD = 0.5
N_FEATURES = 2 ** 19
#: Only words of at least this Zipf frequency (or clinical ones) teach what words look like.
WORD_MIN_ZIPF = 2.0
VERSION = 1


@dataclass
class NameShape:
    """P(name | letters) from two class-conditional n-gram distributions."""

    log_prob: np.ndarray  # (2, N_FEATURES): word, name
    log_prior: np.ndarray  # (2,)

    def _vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=N_FEATURES,
                                 alternate_sign=False, norm=None, lowercase=True)

    def probability(self, words: list[str]) -> np.ndarray:
        counts = self._vectorizer().transform(words)
        joint = counts @ self.log_prob.T + self.log_prior
        joint -= joint.max(axis=1, keepdims=True)
        odds = np.exp(joint)
        return odds[:, 1] / odds.sum(axis=1)

    def is_name_like(self, word: str) -> bool:
        return bool(self.probability([word])[0] >= NAME_SHAPE_THRESHOLD)


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word))
    kind = rng.choice("sdir")
    if kind == "s" and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "d":
        return word[:i] + word[i + 1:]
    letter = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return word[:i] + letter + word[i:] if kind == "i" else word[:i] + letter + word[i + 1:]


def training_lists(vocab: Vocabulary) -> tuple[list[str], list[str]]:
    """(names, words): the two classes, sorted, typos included, for one language's vocabulary."""

    zipf = _zipf_table(vocab.language)
    names = sorted(n for n in vocab.names if n.isalpha() and len(n) >= 3 and not vocab.is_safe(n))
    words = sorted(w for w in vocab.safe if w.isalpha() and len(w) >= 3
                   and (w in vocab.clinical or zipf.get(w, 0.0) >= WORD_MIN_ZIPF))
    rng = random.Random(0)
    typos = [t for t in (_typo(w, rng) for w in words if len(w) >= 5) if t not in vocab.names]
    return names, words + typos


def train(vocab: Vocabulary) -> NameShape:
    from sklearn.naive_bayes import MultinomialNB

    names, words = training_lists(vocab)
    shape = NameShape(np.zeros((2, N_FEATURES)), np.zeros(2))
    counts = shape._vectorizer().transform(words + names)
    model = MultinomialNB(alpha=0.1).fit(counts, [0] * len(words) + [1] * len(names))
    return NameShape(model.feature_log_prob_.astype(np.float32), model.class_log_prior_)


def _cache_path(vocab: Vocabulary) -> Path:
    key = hashlib.sha256(f"{VERSION}:{vocab.language}:{len(vocab.names)}:{len(vocab.safe)}:{len(vocab.clinical)}:"
                         f"{N_FEATURES}:{WORD_MIN_ZIPF}".encode()).hexdigest()[:16]
    return load_settings().model_cache / "phi" / f"name_shape-{vocab.language}-{key}.pkl"


@lru_cache(maxsize=2)
def load_name_shape(language: str) -> NameShape:
    """The fitted classifier for a language: from the cache, or trained and cached (a few seconds)."""
    vocab = load_vocabulary(language)
    path = _cache_path(vocab)
    if path.is_file():
        try:
            with open(path, "rb") as f:
                return pickle.load(f)  # noqa: S301 (written by this function)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            pass  # a torn or stale file: train again
    shape = train(vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(shape, f)
    tmp.replace(path)
    return shape
