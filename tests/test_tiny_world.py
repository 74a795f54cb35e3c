"""The synthetic world: deterministic, held-out pairs excluded, captions name the scene."""

import re

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


def _template_words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", t))}


def test_captions_put_the_colour_on_both_sides_of_the_shape():
    """Not every caption reads "{color} {shape}": some name the colour after the shape,
    so the text encoder has to read the words, not their order."""
    before = [t for t in world._TEMPLATES if "{color} {shape}" in t]
    after = [t for t in world._TEMPLATES if t.index("{shape}") < t.index("{color}")]
    assert before and after


def test_benchmark_wording_stays_out_of_the_training_captions():
    """The benchmark's prompts are worded unlike training: its templates share only glue
    and position words with the world's caption grammar (so "colored", "against",
    "backdrop;", "icon", "solid", ... stay unseen)."""
    from sdlab.tiny import benchmark

    training = _template_words(list(world._TEMPLATES) + [
        p for table in (world._POSITION_PHRASES, world._POSITION_WORDS, world._SIZE_WORDS)
        for phrases in table.values() for p in phrases] + list(world._BACKGROUND_WORDS))
    bench = _template_words(benchmark._TEMPLATES)
    glue = {"a", "an", "of", "on", "in", "the", "with", "at", "background", "backdrop"}
    assert training & bench <= glue
    assert {"colored", "against", "icon", "solid", "over", "placed"} <= bench - training


HUE_ORDER = ("red", "orange", "yellow", "green", "blue", "purple")


def _drawn(name: str, n: int = 600, seed: int = 0) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [world.sample_color(name, rng) for _ in range(n)]


@pytest.mark.parametrize("name", world.COLOR_NAMES)
def test_drawn_colours_are_named_as_the_judge_reads_them(name: str) -> None:
    drawn = _drawn(name)
    assert {world.nearest_color(rgb) for rgb in drawn} == {name}
    assert {world.color_name(rgb) for rgb in drawn} == {name}
    assert len(set(drawn)) > len(drawn) // 2  # a spread of colours, not the typical one


def test_neighbouring_hues_meet() -> None:
    """Walking round the hue circle, each word's draws come within a few degrees of the next
    word's: the manifold between two colour words is filled, not a jump."""
    def offsets(name: str) -> np.ndarray:
        typical = world.hsl(world.COLORS[name])[0]
        hues = np.array([world.hsl(rgb)[0] for rgb in _drawn(name, 2000)])
        return (hues - typical + 180.0) % 360.0 - 180.0, typical

    for a, b in zip(HUE_ORDER, HUE_ORDER[1:] + HUE_ORDER[:1], strict=True):
        (oa, ta), (ob, tb) = offsets(a), offsets(b)
        gap = ((tb + ob.min()) - (ta + oa.max())) % 360.0
        assert gap < 6.0, (a, b, gap)


def test_scenes_keep_shape_and_background_apart() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        scene = world.sample_scene(rng)
        assert np.linalg.norm(np.subtract(scene.rgb, scene.bg_rgb)) >= world.MIN_CONTRAST
        assert world.nearest_color(scene.rgb) == scene.color
        assert world.nearest_color(scene.bg_rgb) == scene.background
