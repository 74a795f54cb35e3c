"""Filler words: random vocabulary words slipped into training captions.

The world's captions use a few dozen words; every other row of the 49,408-token table
keeps its random initial embedding, of the same size as a trained one. A prompt with an
unknown word ("a red circle, simple icon") then feeds the encoder noise it has never
learned to ignore. Inserting random whole words from the vocabulary into some training
captions (for the text encoder and for the UNet's caption pool alike) teaches both to
ignore what carries no attribute.

The benchmark's own wording is excluded from the filler words, so that its prompts stay
worded unlike anything seen in training.
"""

from __future__ import annotations

import json
import re
from functools import cache

import numpy as np

from sdlab.random_models import TOKENIZER_DIR
from sdlab.tiny import world

_WORD = re.compile(r"^[a-z]{3,}</w>$")


def _words_in(texts: list[str]) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


@cache
def reserved_words() -> frozenset[str]:
    """Words of the world's captions and of the benchmark's prompts: never filler."""
    from sdlab.tiny import benchmark

    texts = list(world._TEMPLATES) + list(benchmark._TEMPLATES)
    for table in (world._SIZE_WORDS, world._POSITION_PHRASES, world._POSITION_WORDS,
                  benchmark._POS, benchmark._SIZE):
        texts += [p for phrases in table.values() for p in phrases]
    texts += list(world._BACKGROUND_WORDS) + list(world.COLORS) + list(world.SHAPES)
    texts += list(world.POSITIONS) + list(world.SIZES)
    return frozenset(_words_in(texts))


@cache
def filler_words() -> tuple[str, ...]:
    """Alphabetic whole-word tokens of the CLIP vocabulary (3+ letters), minus reserved."""
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text())
    reserved = reserved_words()
    words = (token[:-4] for token in vocab if _WORD.match(token))
    return tuple(sorted(w for w in words if w not in reserved))


def add_filler(caption: str, rng: np.random.Generator, prob: float, max_words: int = 3) -> str:
    """With probability `prob`, insert 1..max_words random filler words between words."""
    if prob <= 0 or rng.random() >= prob:
        return caption
    words = caption.split(" ")
    pool = filler_words()
    for _ in range(int(rng.integers(1, max_words + 1))):
        words.insert(int(rng.integers(len(words) + 1)), pool[int(rng.integers(len(pool)))])
    return " ".join(words)
