"""The synthetic world: deterministic, held-out pairs excluded, captions name the scene."""

import numpy as np
import pytest

from sdlab.tiny import world


def test_dataset_is_deterministic_from_seed():
    a_images, a_scenes, a_captions = world.make_dataset(20, seed=3)
    b_images, b_scenes, b_captions = world.make_dataset(20, seed=3)
    c_images, _, _ = world.make_dataset(20, seed=4)
    assert np.array_equal(a_images, b_images)
    assert a_scenes == b_scenes and a_captions == b_captions
    assert not np.array_equal(a_images, c_images)
    assert a_images.shape == (20, 64, 64, 3) and a_images.dtype == np.uint8


def test_vocabulary_sizes():
    assert len(world.SHAPES) >= 5 and len(world.COLORS) >= 8
    assert {"left", "right", "top", "bottom", "center"} <= set(world.POSITIONS)
    assert set(world.SIZES) == {"small", "large"}
    pairs = len(world.SHAPES) * len(world.COLORS)
    assert 0.05 <= len(world.HELD_OUT) / pairs <= 0.15


def test_splits_respect_held_out_pairs():
    rng = np.random.default_rng(0)
    train = [world.sample_scene(rng, "train") for _ in range(500)]
    held = [world.sample_scene(rng, "held_out") for _ in range(50)]
    assert not any(world.is_held_out(s.color, s.shape) for s in train)
    assert all(world.is_held_out(s.color, s.shape) for s in held)
    assert all(s.color != s.background for s in train + held)


def test_render_shows_colors_and_is_antialiased():
    scene = world.make_scene("circle", "red", "blue", "center", "large")
    img = world.render(scene).astype(int)
    assert tuple(img[0, 0]) == world.COLORS["blue"]
    assert tuple(img[32, 32]) == world.COLORS["red"]
    # edge pixels are blends, not only the two colours
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert len(colours) > 2


def test_captions_name_color_shape_and_background():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = world.sample_scene(rng)
        text = world.caption(scene, rng)
        assert scene.color in text and scene.shape in text


def test_make_scene_rejects_bad_input():
    with pytest.raises(ValueError, match="differ"):
        world.make_scene("circle", "red", "red", "left", "small")
    with pytest.raises(ValueError, match="unknown shape"):
        world.make_scene("hexagon", "red", "blue", "left", "small")
