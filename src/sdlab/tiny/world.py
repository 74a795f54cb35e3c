"""The synthetic world the bundled model is trained on.

One flat-coloured shape on a plain background, 64x64 RGB, with a caption. Everything is
deterministic from a seed and drawn with PIL at 4x, then box-downsampled (anti-aliased).
A fixed set of colour x shape pairs is held out of training to test generalisation.

Colours are continuous: each named colour is a region of HSL space (a hue sector for the
six hues, the light and dark ends for white and black), and a scene's shape and background
colours are drawn from a triangular distribution over their region, peaked at the name's
typical colour and reaching the region's edges, where it meets its neighbours. A caption
names the region (`color_name` reads it back), so between "red" and "blue" lie purples,
between "red" and "yellow" oranges: the manifold a mix or a guide can move along.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

# Each name's typical colour (the mode of its distribution; well separated in RGB).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_PALETTE = np.array([COLORS[n] for n in COLOR_NAMES], dtype=np.float32)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (32.0, 32.0),
    "left": (20.0, 32.0),
    "right": (44.0, 32.0),
    "top": (32.0, 20.0),
    "bottom": (32.0, 44.0),
}
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)
# "radius" in pixels. A small shape must still span ~2.5 latent cells of an 8x-downsampling
# VAE: at radius 6.5 (2 cells) the VAE returned small stars, crosses and squares as blobs.
SIZES: dict[str, float] = {"small": 9.0, "large": 14.5}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
SIZE_THRESHOLD = 11.75  # radius between small and large, used by the judge
POSITION_JITTER = 2.0
RADIUS_JITTER = 0.5

# ---- colour regions (HSL: hue in degrees, saturation and lightness in 0..1) ------------------
# Hue sectors of the six hues: each runs from the previous boundary to its own.
HUE_BOUNDARIES: dict[str, float] = {
    "red": 17.0, "orange": 43.0, "yellow": 80.0, "green": 185.0, "blue": 255.0,
    "purple": 330.0,
}  # fmt: skip
WHITE_LIGHTNESS = 0.75  # at or above: white, whatever the hue
BLACK_LIGHTNESS = 0.2  # at or below: black
GREY_SATURATION = 0.35  # below: white or black by lightness (the world draws no greys)
CHROMA_SATURATION = (0.4, 1.0)  # saturation range of the six hues
MIN_CONTRAST = 60.0  # a shape differs from its background by at least this RGB distance


def hsl(rgb) -> tuple[float, float, float]:
    """(hue in degrees 0..360, saturation 0..1, lightness 0..1) of an RGB colour in 0..255."""
    r, g, b = (float(v) / 255.0 for v in rgb)
    h, lightness, s = colorsys.rgb_to_hls(min(max(r, 0.0), 1.0), min(max(g, 0.0), 1.0),
                                          min(max(b, 0.0), 1.0))
    return 360.0 * h, s, lightness


def hue_name(hue: float) -> str:
    """The named hue whose sector holds `hue` (degrees)."""
    hue %= 360.0
    for name, upper in HUE_BOUNDARIES.items():
        if hue < upper:
            return name
    return "red"  # the sector wraps round through 0


def color_name(rgb) -> str:
    """The name of the region an RGB colour (0..255) lies in."""
    hue, s, lightness = hsl(rgb)
    if lightness >= WHITE_LIGHTNESS:
        return "white"
    if lightness <= BLACK_LIGHTNESS:
        return "black"
    if s < GREY_SATURATION:
        return "white" if lightness >= 0.5 else "black"
    return hue_name(hue)


def nearest_color(rgb, exclude: str | None = None) -> str:
    """The colour word whose typical colour is nearest in RGB (other than `exclude`): the
    judge's reading, which every drawn colour agrees with."""
    d = np.linalg.norm(_PALETTE - np.asarray(rgb, np.float32)[None, :], axis=1)
    if exclude is not None:
        d[COLOR_NAMES.index(exclude)] = np.inf
    return COLOR_NAMES[int(np.argmin(d))]


def _sector(name: str) -> tuple[float, float]:
    names = list(HUE_BOUNDARIES)
    k = names.index(name)
    return HUE_BOUNDARIES[names[k - 1]] - (360.0 if k == 0 else 0.0), HUE_BOUNDARIES[name]


def _triangular(rng: np.random.Generator, lo: float, mode: float, hi: float) -> float:
    return float(rng.triangular(lo, min(max(mode, lo), hi), hi))


def sample_color(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A colour drawn from the region `name` names, peaked at COLORS[name]."""
    hue, s, lightness = hsl(COLORS[name])
    while True:
        if name in ("white", "black"):
            h = float(rng.uniform(0.0, 360.0))
            sat = _triangular(rng, 0.0, 0.0, 0.6)
            lit = (_triangular(rng, WHITE_LIGHTNESS, lightness, 1.0) if name == "white"
                   else _triangular(rng, 0.0, lightness, BLACK_LIGHTNESS))
        else:
            lo, hi = _sector(name)
            h = _triangular(rng, lo, hue if hue < hi else hue - 360.0, hi) % 360.0
            sat = _triangular(rng, *CHROMA_SATURATION[:1], s, CHROMA_SATURATION[1])
            lit = _triangular(rng, BLACK_LIGHTNESS, lightness, WHITE_LIGHTNESS)
        rgb = tuple(int(round(255.0 * v)) for v in colorsys.hls_to_rgb(h / 360.0, lit, sat))
        if color_name(rgb) == name == nearest_color(rgb):  # the region's part nearest its own
            return rgb  # type: ignore[return-value]

# Colour x shape pairs never shown in training (one per colour/shape at most, ~10%).
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "triangle"),
        ("yellow", "cross"),
        ("white", "diamond"),
        ("purple", "circle"),
    }
)


@dataclass(frozen=True)
class Scene:
    """One image's content: the attributes a caption names, plus the exact geometry."""

    shape: str
    color: str
    background: str
    position: str
    size: str
    cx: float
    cy: float
    radius: float
    rgb: tuple[int, int, int]  # the shape's colour, in the region `color` names
    bg_rgb: tuple[int, int, int]  # the background's, in the region `background` names

    @property
    def attributes(self) -> dict[str, str]:
        return {
            "shape": self.shape,
            "color": self.color,
            "background": self.background,
            "position": self.position,
            "size": self.size,
        }


# Every attribute a caption names, and the values it can take (this order is the order of
# the CLIP attribute read-out heads).
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "color": COLOR_NAMES, "background": COLOR_NAMES,
    "position": POSITION_NAMES, "size": SIZE_NAMES,
}  # fmt: skip


def is_held_out(color: str, shape: str) -> bool:
    return (color, shape) in HELD_OUT


def in_training_split(attrs: dict[str, str]) -> bool:
    """Whether scene attributes may appear in training: a shape not the colour of its
    background, and not a held-out colour x shape pair."""
    return attrs["color"] != attrs["background"] and not is_held_out(attrs["color"],
                                                                     attrs["shape"])


def make_scene(
    shape: str,
    color: str,
    background: str,
    position: str,
    size: str,
    rng: np.random.Generator | None = None,
) -> Scene:
    """A scene with the given attributes. Without `rng` it is drawn exactly: the names'
    typical colours, the position's centre and the size's radius; `rng` draws the colours
    from their regions and adds small position/size jitter."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    for c in (color, background):
        if c not in COLORS:
            raise ValueError(f"unknown color {c!r}; choose from {COLOR_NAMES}")
    if color == background:
        raise ValueError("shape color and background color must differ")
    cx, cy = POSITIONS[position]
    radius = SIZES[size]
    if rng is not None:
        cx += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        cy += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        radius += rng.uniform(-RADIUS_JITTER, RADIUS_JITTER)
    rgb, bg_rgb = _scene_colors(color, background, rng)
    return Scene(shape, color, background, position, size, float(cx), float(cy), float(radius),
                 rgb, bg_rgb)


def _scene_colors(color: str, background: str, rng: np.random.Generator | None
                  ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    if rng is None:
        return COLORS[color], COLORS[background]
    while True:
        rgb, bg_rgb = sample_color(color, rng), sample_color(background, rng)
        if math.dist(rgb, bg_rgb) >= MIN_CONTRAST:
            return rgb, bg_rgb



def sample_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """A random scene. split: "train" (no held-out pairs), "held_out" (only those), "all"."""
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be train, held_out or all, not {split!r}")
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        held = is_held_out(color, shape)
        if (split == "train" and held) or (split == "held_out" and not held):
            continue
        background = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        if background == color:
            continue
        position = POSITION_NAMES[rng.integers(len(POSITION_NAMES))]
        size = SIZE_NAMES[rng.integers(len(SIZE_NAMES))]
        return make_scene(shape, color, background, position, size, rng)


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The outline of a shape as polygon vertices (pixels, y down), centroid at (cx, cy)."""

    def ring(radii: list[float], start_deg: float) -> list[tuple[float, float]]:
        n = len(radii)
        pts = []
        for k, rad in enumerate(radii):
            a = math.radians(start_deg + 360.0 * k / n)
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts

    if shape == "circle":
        return ring([r] * 96, 0.0)
    if shape == "square":
        h = 0.88 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up
        return ring([1.15 * r] * 3, -90.0)
    if shape == "star":  # five points, pointing up
        return ring([1.2 * r, 0.5 * r] * 5, -90.0)
    if shape == "diamond":
        return ring([1.15 * r] * 4, -90.0)
    if shape == "cross":  # a plus sign
        a, w = r, r / 3.0
        return [
            (cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w),
            (cx + a, cy + w), (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a),
            (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def render_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Anti-aliased coverage of a shape, (size, size) float32 in [0, 1]."""
    s = SUPERSAMPLE
    big = Image.new("L", (size * s, size * s), 0)
    pts = [(x * s, y * s) for x, y in shape_polygon(shape, cx, cy, r)]
    ImageDraw.Draw(big).polygon(pts, fill=255)
    small = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as an (size, size, 3) uint8 RGB array."""
    alpha = render_mask(scene.shape, scene.cx, scene.cy, scene.radius, size)[..., None]
    fg = np.array(scene.rgb, dtype=np.float32)
    bg = np.array(scene.bg_rgb, dtype=np.float32)
    img = alpha * fg + (1.0 - alpha) * bg
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---- captions -------------------------------------------------------------------------

_SIZE_WORDS = {"small": ["small", "small", "little", "tiny"], "large": ["large", "large", "big"]}
_POSITION_PHRASES = {
    "center": ["in the center", "in the middle", "centered", "at the center"],
    "left": ["on the left", "at the left", "on the left side", "to the left"],
    "right": ["on the right", "at the right", "on the right side", "to the right"],
    "top": ["at the top", "on top", "near the top", "in the upper part"],
    "bottom": ["at the bottom", "near the bottom", "in the lower part", "on the bottom"],
}
_POSITION_WORDS = {
    "center": ["center", "middle"],
    "left": ["left"],
    "right": ["right"],
    "top": ["top"],
    "bottom": ["bottom"],
}
_BACKGROUND_WORDS = ["background", "background", "backdrop"]
_TEMPLATES = [
    "a {size} {color} {shape} on a {bg} background",
    "a {size} {color} {shape} {pos_phrase}, {bg} background",
    "{size} {color} {shape}, {pos_word}, {bg} {bgword}",
    "a {color} {shape} {pos_phrase} on a {bg} {bgword}",
    "a {color} {shape} on {bg}",
    "{color} {shape}, {size}, {pos_word}, {bg} {bgword}",
    "an image of a {size} {color} {shape} {pos_phrase} on a {bg} {bgword}",
    "{bg} {bgword} with a {size} {color} {shape} {pos_phrase}",
    "a {color} {shape} on a {bg} {bgword}",
    "a drawing of a {color} {shape}, {size}, {pos_phrase}, on {bg}",
    "a {size} {color} {shape}",
    "{color} {shape} {pos_phrase}",
    "a {bg} {bgword}, a {color} {shape} {pos_phrase}",
    "{size} {color} {shape} on {bg} {pos_phrase}",
    # The shape's colour after the shape, and the background named without "on": without
    # these every caption reads "{color} {shape}", and the text encoder learns word order
    # instead of what the words say.
    "a {size} {shape} in {color}, {pos_phrase}, {bg} {bgword}",
    "a {shape} painted {color} on a {bg} {bgword}",
    "{size} {shape}, {color}, {pos_word}, {bg} {bgword}",
    "a {shape} in {color} {pos_phrase} on {bg}",
    "a {size} {shape} painted {color} {pos_phrase}, in front of {bg}",
    "{bg} all around a {size} {color} {shape} {pos_phrase}",
    "a {color} {shape} {pos_phrase} with {bg} behind it",
]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption for the scene, from a randomly chosen template and wording."""
    return caption_and_mentions(scene, rng)[0]


def caption_and_mentions(scene: Scene, rng: np.random.Generator) -> tuple[str, frozenset[str]]:
    """A caption and the attributes it names (some templates leave out size/position/bg)."""
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    mentions = {"shape", "color"}
    mentions |= {"size"} if "{size}" in template else set()
    mentions |= {"position"} if "{pos_" in template else set()
    mentions |= {"background"} if "{bg}" in template else set()

    def pick(options: list[str]) -> str:
        return options[rng.integers(len(options))]

    text = template.format(
        size=pick(_SIZE_WORDS[scene.size]),
        color=scene.color,
        shape=scene.shape,
        bg=scene.background,
        bgword=pick(_BACKGROUND_WORDS),
        pos_phrase=pick(_POSITION_PHRASES[scene.position]),
        pos_word=pick(_POSITION_WORDS[scene.position]),
    )
    return text.replace("a orange", "an orange"), frozenset(mentions)


_GENERIC_SHAPES = ["shape", "shape", "thing", "figure"]
_GONE = "\x00"  # stands for the left-out colour until its words are cut out


def partial_caption(scene: Scene, rng: np.random.Generator, leave_out: str) -> str:
    """A caption that does not name the shape's colour (leave_out="color") or what shape it
    is (leave_out="shape": "shape", "thing" or "figure" stands in for it)."""
    if leave_out == "shape":
        generic = _GENERIC_SHAPES[rng.integers(len(_GENERIC_SHAPES))]
        return caption(dataclasses.replace(scene, shape=generic), rng)
    if leave_out != "color":
        raise ValueError(f"leave_out must be color or shape, not {leave_out!r}")
    text = caption(dataclasses.replace(scene, color=_GONE), rng)
    for words in (" in " + _GONE, " painted " + _GONE, ", " + _GONE, _GONE + " "):
        text = text.replace(words, "")
    return text


def make_dataset(
    n: int, seed: int, split: str = "train"
) -> tuple[np.ndarray, list[Scene], list[str]]:
    """n images (n, 64, 64, 3) uint8, their scenes and one caption each, from a seed."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, split) for _ in range(n)]
    images = np.stack([render(s) for s in scenes]) if n else np.zeros((0, 64, 64, 3), np.uint8)
    captions = [caption(s, rng) for s in scenes]
    return images, scenes, captions
