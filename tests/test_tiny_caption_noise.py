"""Caption noise for the UNet's training pool: each attribute named wrongly at about the
set rate, never a held-out colour x shape pair, never a shape the colour of its background;
the images (scenes) themselves are untouched."""

import functools
import itertools
import math

import numpy as np
import pytest

from sdlab.tiny import world
from sdlab.tiny.caption import parse_caption
from training.unet import mislabel, pool_scenes

_SPLIT = ("shape", "color", "background")  # the attributes the training split depends on


@functools.cache
def _wrong_given_kept(shape: str, color: str, background: str, rate: float
                      ) -> dict[str, float]:
    """P(each of shape, colour, background named wrongly) for a scene with these, every
    attribute changed with probability `rate` and the draw kept only in the training split:
    a little under `rate`, since changes that leave the split are drawn again."""
    own = dict(zip(_SPLIT, (shape, color, background), strict=True))
    kept, wrong = 0.0, dict.fromkeys(_SPLIT, 0.0)
    for values in itertools.product(*(world.ATTRIBUTE_VALUES[k] for k in _SPLIT)):
        said = dict(zip(_SPLIT, values, strict=True))
        if not world.in_training_split(said):
            continue
        p = math.prod(1 - rate if said[k] == own[k]
                      else rate / (len(world.ATTRIBUTE_VALUES[k]) - 1) for k in _SPLIT)
        kept += p
        for k in _SPLIT:
            wrong[k] += p * (said[k] != own[k])
    return {k: v / kept for k, v in wrong.items()}


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_each_attribute_is_wrong_at_about_the_rate(rate):
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng) for _ in range(3000)]
    said = [mislabel(s, rng, rate) for s in scenes]
    expected = {k: np.mean([_wrong_given_kept(s.shape, s.color, s.background, rate)[k]
                            for s in scenes]) for k in _SPLIT}
    expected |= {"position": rate, "size": rate}  # never the reason to draw again
    for name in ("shape", "color", "background", "position", "size"):
        wrong = np.mean([a.attributes[name] != b.attributes[name]
                         for a, b in zip(scenes, said, strict=True)])
        assert abs(wrong - expected[name]) < 0.03, (name, wrong, expected[name])
    for a, b in zip(scenes, said, strict=True):
        assert b.color != b.background
        assert not world.is_held_out(b.color, b.shape)
        assert (a.cx, a.cy, a.radius) == (b.cx, b.cy, b.radius)


def test_pool_images_do_not_depend_on_the_noise():
    """With caption noise the pool's scenes (its images) stay the same and its captions
    name the shape's colour and the shape wrongly about as often as mislabel does. (The
    wording changes too: a caption's random draws shift whenever a wrong position offers
    another number of words to choose from.)"""
    clean_scenes, clean = pool_scenes(3, 300)
    noisy_scenes, noisy = pool_scenes(3, 300, caption_noise=0.3)
    assert clean_scenes == noisy_scenes
    for key in ("color", "shape"):
        assert all(parse_caption(c)[key] == getattr(s, key)
                   for c, s in zip(clean, clean_scenes, strict=True))
        wrong = np.mean([parse_caption(c)[key] != getattr(s, key)
                         for c, s in zip(noisy, noisy_scenes, strict=True)])
        expected = np.mean([_wrong_given_kept(s.shape, s.color, s.background, 0.3)[key]
                            for s in noisy_scenes])
        assert abs(wrong - expected) < 0.08, (key, wrong, expected)  # 300 captions: 3 sd
    words = " ".join(noisy)
    for color, shape in world.HELD_OUT:
        assert f"{color} {shape}" not in words
