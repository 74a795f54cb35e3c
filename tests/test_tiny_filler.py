"""Filler words for training captions: random vocabulary words, never the world's or
the benchmark's own words, inserted without disturbing the caption's words."""

import numpy as np

from sdlab.tiny import world
from sdlab.tiny.benchmark import benchmark_prompts
from training.filler import add_filler, filler_words, reserved_words


def test_benchmark_and_world_words_are_never_filler():
    fillers = set(filler_words())
    assert len(fillers) > 20_000
    for prompt in benchmark_prompts(200):
        words = set(prompt.text.replace(",", " ").replace(";", " ").replace(":", " ").split())
        assert not words & fillers, prompt.text
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = set(world.caption(world.sample_scene(rng), rng).replace(",", " ").split())
        assert words <= reserved_words()


def test_insertion_keeps_the_caption_in_order():
    caption = "a small red circle on the left, blue background"
    rng = np.random.default_rng(1)
    changed = 0
    for _ in range(100):
        filled = add_filler(caption, rng, prob=0.5, max_words=3)
        extra = len(filled.split()) - len(caption.split())
        assert 0 <= extra <= 3
        changed += extra > 0
        kept = [w for w in filled.split() if w not in set(filler_words())]
        assert kept == caption.split()
    assert 30 <= changed <= 70  # about half


def test_deterministic_and_off_at_zero():
    caption = "a red circle"
    a = [add_filler(caption, np.random.default_rng(5), 1.0) for _ in range(3)]
    assert a[0] == a[1] == a[2] != caption
    assert add_filler(caption, np.random.default_rng(5), 0.0) == caption
