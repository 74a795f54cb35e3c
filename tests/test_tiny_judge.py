"""The judge reads the world's own images back (>= 99% per attribute) and tolerates blur."""

import numpy as np
from PIL import Image, ImageFilter

from sdlab.tiny import world
from sdlab.tiny.judge import ATTRIBUTES, judge, score


def _accuracy(images, scenes):
    hits = {k: 0 for k in ATTRIBUTES}
    for image, scene in zip(images, scenes, strict=True):
        for k, ok in score(judge(image), scene).items():
            hits[k] += ok
    return {k: v / len(scenes) for k, v in hits.items()}


def test_judge_reads_world_images():
    rng = np.random.default_rng(11)
    scenes = [world.sample_scene(rng, "all") for _ in range(240)]
    acc = _accuracy([world.render(s) for s in scenes], scenes)
    assert min(acc.values()) >= 0.99, acc


def test_judge_tolerates_blur_and_noise():
    rng = np.random.default_rng(12)
    scenes = [world.sample_scene(rng, "all") for _ in range(60)]
    images = []
    for s in scenes:
        blurred = Image.fromarray(world.render(s)).filter(ImageFilter.GaussianBlur(1.0))
        noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0, 5, (64, 64, 3))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    acc = _accuracy(images, scenes)
    assert min(acc.values()) >= 0.95, acc


def test_judge_accepts_pil_float_and_other_sizes():
    scene = world.make_scene("star", "yellow", "purple", "top", "large")
    arr = world.render(scene)
    expected = scene.attributes
    assert judge(Image.fromarray(arr)).attributes() == expected
    assert judge(arr.astype(np.float32) / 255.0).attributes() == expected
    big = Image.fromarray(arr).resize((128, 128), Image.Resampling.BICUBIC)
    assert judge(big).attributes() == expected


def test_blank_image_has_no_shape():
    blank = np.full((64, 64, 3), world.COLORS["green"], dtype=np.uint8)
    j = judge(blank)
    assert j.background == "green" and not j.found and j.shape is None
