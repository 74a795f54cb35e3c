"""Colour-mix samples (training/mixes.py): the blend walks the short hue arc between the two
words, the two captions differ only in the colour word, and no sample shows a held-out
pair or a shape the colour of its background."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from sdlab.tiny import world
from sdlab.tiny.graded import arc_fraction
from training.mixes import CHROMATIC, blend, mix_samples


@pytest.mark.parametrize("pair", [("red", "blue"), ("red", "yellow"), ("green", "purple")])
def test_the_blend_walks_the_short_arc_from_one_word_to_the_other(pair):
    a, b = pair
    assert math.dist(blend(a, b, 0.0), world.COLORS[a]) <= 2.0  # HSL round trip
    assert math.dist(blend(a, b, 1.0), world.COLORS[b]) <= 2.0
    fractions = [arc_fraction(world.hsl(blend(a, b, w))[0], a, b) for w in (0.25, 0.5, 0.75)]
    assert fractions == pytest.approx([0.25, 0.5, 0.75], abs=0.03)
    middle = world.hsl(blend(a, b, 0.5))
    assert middle[1] >= world.GREY_SATURATION and world.color_name(blend(a, b, 0.5)) not in (
        "white", "black")


def test_mix_samples_pair_captions_that_differ_only_in_the_colour_word():
    samples = mix_samples(np.random.default_rng(0), 300, filler_prob=0.5)
    assert len(samples.scenes) == len(samples.captions_a) == len(samples.weights) == 300
    for scene, cap_a, cap_b, w in zip(*samples, strict=True):
        assert 0.0 <= w <= 1.0
        word_a = scene.color
        assert word_a in CHROMATIC
        words_a, words_b = ([re.sub(r"\W", "", w) for w in c.split()] for c in (cap_a, cap_b))
        changed = [(x, y) for x, y in zip(words_a, words_b, strict=True)
                   if x != y and {x, y} != {"a", "an"}]  # "an orange"
        assert len(changed) == 1, (cap_a, cap_b)
        (x, word_b), = changed
        assert x == word_a and word_b in CHROMATIC and word_b != word_a
        assert word_b != scene.background
        assert not world.is_held_out(word_b, scene.shape)
        assert not world.is_held_out(world.nearest_color(scene.rgb), scene.shape)
        assert math.dist(scene.rgb, scene.bg_rgb) >= world.MIN_CONTRAST
        assert scene.rgb == blend(word_a, word_b, w)
