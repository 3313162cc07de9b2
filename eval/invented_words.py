"""Invented names and places for training a learned PHI layer on contexts instead of values.

The detector's gazetteers hold 702 usable town names, nearly all German-speaking; a tagger trained
on copies filled from them can learn what those towns look like rather than where a town stands in
a note. Pronounceable words that exist nowhere, built from the spelling habits of many languages
(Nordic "ø", Czech "ř", Polish "ł", Dutch "ij", Finnish vowel runs...), give it values it cannot
memorise, so only the context and the word's shape are left to learn from.

No word here is one the detector knows (its safe lists would hide it from the tagger anyway), and
none is a value of the stress pools (``eval.deid_stress.build_pools``): training never sees a
value the evaluation draws.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Container
from dataclasses import dataclass


@dataclass(frozen=True)
class Orthography:
    """Spelling habits: word-initial and inner consonant clusters, vowels, and endings per kind."""

    onsets: tuple[str, ...]
    vowels: tuple[str, ...]
    inner: tuple[str, ...]
    place_endings: tuple[str, ...]
    name_endings: tuple[str, ...]


def _t(words: str) -> tuple[str, ...]:
    return tuple(words.split())


ORTHOGRAPHIES: tuple[Orthography, ...] = (
    Orthography(_t("b c d f g l m n p r s t v br ch gl pr tr"), _t("a e i o u a o"), _t("l ll n nn r rr s ss t tt g c"),
                _t("ano ello ino ona ara ate esi ola uzzo"), _t("elli ini etti one ardo esco uzzi")),
    Orthography(_t("b d f g h k l m n r s t v bj kn sk st sv"), _t("a e i o u y å ä ö ø æ"), _t("l ll n nd r s st t g k"),
                _t("by rup holm strup sted lev vik ø borg ås"), _t("sen son strøm lund dahl gren vik")),
    Orthography(_t("b č d h k l m n p r ř s š t v z ž ch kr pr sl br"), _t("a e i o u y á é í ý ů"),
                _t("l n r s š t v k č ř ch"), _t("ov ín any ice ec ka ná ov"), _t("ová ský ek ák ič ík")),
    Orthography(_t("b c d g k l ł m n p r s ś t w z ż cz sz rz dz"), _t("a e i o u y ą ę ó"),
                _t("ł n r s w z cz sz rz k"), _t("owo ice ów ek in no yn"), _t("ski cka ak ek czyk ewicz")),
    Orthography(_t("b d g h k l m n r s t v w z gr kr st sch"), _t("a e i o u aa ee oo ui ij ou"),
                _t("l n r s t d k ng nk"), _t("dam hem ingen kerke rode gem dijk hout"), _t("ens ink ma stra sma de")),
    Orthography(_t("h j k l m n p r s t v"), _t("a e i o u y ä ö aa ii uu"), _t("k kk l ll n nn r s t tt"),
                _t("la nen järvi koski niemi salo"), _t("nen inen lä mäki")),
    Orthography(_t("b c d f g h l m n p r s t v w br st th"), _t("a e i o u ea ou"), _t("l n r s t d ck ng"),
                _t("ton ford ham field ley bury wick stead"), _t("ton son ley well worth er")),
    Orthography(_t("b d g j k l m n s t w z mb nd ng ny"), _t("a e i o u"), _t("b k l m n s t w nd ng"),
                _t("ani aba ele oro ungu ali"), _t("wa ola emi uke ani")),
    Orthography(_t("b c d f g l m n p r s t v z"), _t("a e i o u ă â î"), _t("l n r s t c g ș ț"),
                _t("ești eni oasa ița ul"), _t("escu eanu aru ache")),
    Orthography(_t("b c d f g h j l m n p r s t v z ch"), _t("a e i o u á é í ó ú"), _t("l n r s t d rr ll ñ"),
                _t("ejo illa ares ena uela"), _t("ez ero ina ado ano")),
)


def _word(rng: random.Random, kind: str) -> str:
    o = rng.choice(ORTHOGRAPHIES)
    parts = [rng.choice(o.onsets), rng.choice(o.vowels)]
    for _ in range(rng.choice((0, 1, 1, 2))):
        parts += [rng.choice(o.inner), rng.choice(o.vowels)]
    endings = o.place_endings if kind == "place" else o.name_endings
    if rng.random() < 0.6:
        parts.append(rng.choice(endings))
    elif rng.random() < 0.5:
        parts.append(rng.choice(o.inner))
    word = "".join(parts)
    return word[0].upper() + word[1:]


def invented_words(n: int, kind: str, seed: int, excluded: Callable[[str], bool] | Container[str] = ()) -> list[str]:
    """``n`` distinct invented words of ``kind`` ("name" or "place"), sorted; a place is sometimes two
    words or hyphenated, as towns are. ``excluded`` (a container or a predicate) rejects words."""
    if kind not in ("name", "place"):
        raise ValueError(f"kind must be 'name' or 'place', got {kind!r}")
    reject = excluded if callable(excluded) else excluded.__contains__
    rng = random.Random(f"{kind}:{seed}")
    out: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise RuntimeError(f"could only invent {len(out)} of {n} {kind} words")
        word = _word(rng, kind)
        if kind == "place" and rng.random() < 0.15:
            word += rng.choice((" ", "-")) + _word(rng, kind)
        if not 4 <= len(word) <= 24 or any(reject(w) for w in word.replace("-", " ").split()) or reject(word):
            continue
        out.add(word)
    return sorted(out)
