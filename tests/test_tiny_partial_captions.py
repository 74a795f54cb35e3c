"""Partial captions for the UNet's guidance tune: a caption that leaves out the shape's
colour or the shape itself, so that each must be drawn from its own word."""

import re

import numpy as np
import pytest
import torch

from sdlab.tiny import world
from sdlab.tiny.common import UnetConfig
from sdlab.tiny.train_unet import Pool, ddpm_scheduler, pool_scenes, training_batch


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


def test_leaving_out_the_colour_keeps_the_rest():
    rng = np.random.default_rng(0)
    for _ in range(500):
        scene = world.sample_scene(rng)
        words = _words(world.partial_caption(scene, rng, "color"))
        assert scene.color not in words  # never the background's colour, so not named at all
        assert scene.shape in words
        assert "painted" not in words  # "painted {color}" goes with its colour
        assert set(world.COLOR_NAMES) & words <= {scene.background}


def test_leaving_out_the_shape_names_a_generic_one():
    rng = np.random.default_rng(1)
    for _ in range(500):
        scene = world.sample_scene(rng)
        words = _words(world.partial_caption(scene, rng, "shape"))
        assert not words & set(world.SHAPES)
        assert words & {"shape", "thing", "figure"}
        assert scene.color in words


def test_partial_captions_read_like_the_others():
    """No stray commas or spaces where the colour was cut out."""
    rng = np.random.default_rng(2)
    for _ in range(500):
        text = world.partial_caption(world.sample_scene(rng), rng, "color")
        assert "  " not in text and ",," not in text and " ," not in text
        assert not text.startswith((" ", ",")) and "\x00" not in text
        assert not re.search(r"\ba [aeiou]", text)


def test_leave_out_rejects_other_attributes():
    scene = world.sample_scene(np.random.default_rng(0))
    with pytest.raises(ValueError, match="color or shape"):
        world.partial_caption(scene, np.random.default_rng(0), "size")


def test_partial_pool_describes_the_same_images():
    scenes, full = pool_scenes(4, 400)
    same, partial = pool_scenes(4, 400, partial=True)
    assert scenes == same
    left_out_colour = [s.color not in _words(c) for s, c in zip(scenes, partial, strict=True)]
    assert 0.4 < np.mean(left_out_colour) < 0.6
    for s, c in zip(scenes, partial, strict=True):
        assert (s.color in _words(c)) != (s.shape in _words(c))  # exactly one left out


def test_tune_batches_use_partial_captions_at_every_t():
    """In the tune, partial_prob of the clean captions left are partial ones, at every t;
    phase 1 never uses them."""
    n, d = 50, 4
    pool = Pool(latents=torch.zeros(n, 4, 8, 8), states=torch.zeros(n, 77, d),
                empty=-torch.ones(1, 77, d), noisy_states=torch.ones(n, 77, d),
                partial_states=2 * torch.ones(n, 77, d))
    cfg = UnetConfig(batch_size=4000, partial_prob=0.5)
    scheduler = ddpm_scheduler()
    _, _, ctx, *_ = training_batch(pool, cfg, 0, 7, 0.1, 0.0, scheduler)
    assert not (ctx == 2).any()
    _, t, ctx, *_ = training_batch(pool, cfg, 0, 7, 0.1, 1.0, scheduler)
    kind = ctx[:, 0, 0]
    clean_or_partial = (kind == 0) | (kind == 2)
    high = clean_or_partial & (t >= 700)
    assert abs((kind[high] == 2).float().mean().item() - 0.5) < 0.07
    assert (kind[(t < 500)] != 0).all()  # below t = 500 every caption is noisy or empty
    without = dict(vars(pool), partial_states=None)
    _, _, plain, *_ = training_batch(Pool(**without), cfg, 0, 7, 0.1, 1.0, scheduler)
    assert torch.equal(plain[kind != 2], ctx[kind != 2])  # the rest of the batch is unchanged
