"""Caption noise for the UNet's training pool: each attribute named wrongly at the set
rate, never a held-out colour x shape pair, never a shape the colour of its background;
the images (scenes) themselves are untouched."""

import numpy as np
import pytest

from sdlab.tiny import world
from training.unet import mislabel, pool_scenes


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_each_attribute_is_wrong_at_about_the_rate(rate):
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng) for _ in range(3000)]
    said = [mislabel(s, rng, rate) for s in scenes]
    for name in ("shape", "color", "background", "position", "size"):
        wrong = np.mean([a.attributes[name] != b.attributes[name]
                         for a, b in zip(scenes, said, strict=True)])
        assert abs(wrong - rate) < 0.04, (name, wrong)
    for a, b in zip(scenes, said, strict=True):
        assert b.color != b.background
        assert not world.is_held_out(b.color, b.shape)
        assert (a.cx, a.cy, a.radius) == (b.cx, b.cy, b.radius)


def test_pool_images_do_not_depend_on_the_noise():
    clean_scenes, clean = pool_scenes(3, 300)
    noisy_scenes, noisy = pool_scenes(3, 300, caption_noise=0.3)
    assert clean_scenes == noisy_scenes
    differ = np.mean([a != b for a, b in zip(clean, noisy, strict=True)])
    assert 0.5 < differ < 0.95  # 1 - 0.7**5 of the scenes get some wrong attribute
    words = " ".join(noisy)
    for color, shape in world.HELD_OUT:
        assert f"{color} {shape}" not in words
