"""Colour-mix samples for the UNet: a shape whose colour lies between two colour words'
typical colours, conditioned on the same blend of the two captions' encoder states.

The world draws every colour from one word's region, so a UNet trained on it alone has
never been asked what (1 - w) enc("a red X ...") + w enc("a blue X ...") looks like, and
answers with a colour of neither (a dull grey or black at w = 0.5). These samples teach it
the answer the deep dive's prompt mixing and interpolation expect: the colour that far
along the short hue arc from the one word to the other.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from typing import NamedTuple

import numpy as np

from sdlab.tiny import world
from training.filler import add_filler

CHROMATIC = ("red", "orange", "yellow", "green", "blue", "purple")


def blend(a: str, b: str, w: float) -> tuple[int, int, int]:
    """The colour a fraction `w` of the way from word `a`'s typical colour to word `b`'s,
    along the short arc of hue (saturation and lightness linearly)."""
    ha, sa, la = world.hsl(world.COLORS[a])
    hb, sb, lb = world.hsl(world.COLORS[b])
    hue = (ha + w * ((hb - ha + 180.0) % 360.0 - 180.0)) % 360.0
    sat, lit = (1 - w) * sa + w * sb, (1 - w) * la + w * lb
    return tuple(int(round(255.0 * v)) for v in colorsys.hls_to_rgb(hue / 360.0, lit, sat))  # type: ignore[return-value]


class MixSamples(NamedTuple):
    scenes: list[world.Scene]  # drawn in the blended colour
    captions_a: list[str]  # naming the scene's own colour word
    captions_b: list[str]  # the same wording, naming the other colour
    weights: list[float]  # w: the blend's (and the conditioning's) weight of caption b


def mix_samples(rng: np.random.Generator, n: int, filler_prob: float) -> MixSamples:
    """`n` mix samples between two different chromatic words, w ~ U(0, 1). Never a pair of
    the held-out split, in either word or in the blend's nearest name (which would show a
    held-out pair without naming it), and never a blend too close to the background."""
    out = MixSamples([], [], [], [])
    while len(out.scenes) < n:
        scene = world.sample_scene(rng)
        other = CHROMATIC[rng.integers(len(CHROMATIC))]
        w = float(rng.uniform(0.0, 1.0))
        if scene.color not in CHROMATIC or other in (scene.color, scene.background):
            continue
        rgb = blend(scene.color, other, w)
        if (world.is_held_out(other, scene.shape)
                or world.is_held_out(world.nearest_color(rgb), scene.shape)
                or math.dist(rgb, scene.bg_rgb) < world.MIN_CONTRAST):
            continue
        wording = int(rng.integers(2**62))
        for scene_words, captions in ((scene, out.captions_a),
                                      (dataclasses.replace(scene, color=other), out.captions_b)):
            caption = world.caption(scene_words, np.random.default_rng(wording))
            captions.append(add_filler(caption, np.random.default_rng(wording + 1), filler_prob))
        out.scenes.append(dataclasses.replace(scene, rgb=rgb))
        out.weights.append(w)
    return out
