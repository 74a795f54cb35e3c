"""The judge: reads a world image back into (background, shape, color, position, size).

Deterministic image analysis, no learning: the background's colour is the border's
median; the shape's colour the median of the pixels farthest from the background. Each is
read as a continuous colour (RGB and HSL) and named by the nearest typical colour. A soft
coverage mask (alpha) comes from projecting each pixel onto the background->shape colour
line; position is the mask's centroid, size the radius that explains its area, and the
shape the template (drawn at that centroid and radius) that overlaps the mask best.
Soft edges and blur are tolerated by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from sdlab.tiny import world

ATTRIBUTES = ("background", "color", "shape", "position", "size")
MIN_CONTRAST = 40.0  # RGB distance below which no shape is seen
ALPHA_FLOOR = 0.15  # coverage below this is treated as background noise


@dataclass(frozen=True)
class Judgement:
    background: str
    color: str | None
    background_rgb: tuple[float, float, float]
    color_rgb: tuple[float, float, float] | None  # None when no shape is seen
    shape: str | None
    position: str | None
    size: str | None
    shape_scores: dict[str, float]  # soft IoU with each shape's template
    radius: float
    centroid: tuple[float, float]

    @property
    def found(self) -> bool:
        return self.shape is not None

    def attributes(self) -> dict[str, str | None]:
        return {k: getattr(self, k) for k in ATTRIBUTES}

    @property
    def background_hsl(self) -> tuple[float, float, float]:
        """(hue degrees, saturation, lightness) of the background."""
        return world.hsl(self.background_rgb)

    @property
    def color_hsl(self) -> tuple[float, float, float] | None:
        """(hue degrees, saturation, lightness) of the shape, None when no shape is seen."""
        return None if self.color_rgb is None else world.hsl(self.color_rgb)


def _as_array(image) -> np.ndarray:
    """PIL image or (H, W, 3) uint8/float array -> (64, 64, 3) float32 in 0..255."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    floats = arr.dtype != np.uint8
    arr = arr.astype(np.float32)
    if floats and arr.max() <= 1.0 + 1e-6:  # a float image in 0..1
        arr = arr * 255.0
    if arr.shape[:2] != (world.IMAGE_SIZE, world.IMAGE_SIZE):
        pil = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        size = (world.IMAGE_SIZE, world.IMAGE_SIZE)
        arr = np.asarray(pil.resize(size, Image.Resampling.BOX), dtype=np.float32)
    return arr


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


@cache
def _unit_area(shape: str) -> float:
    """Coverage area of a shape drawn with radius 1 (from a radius-10 drawing)."""
    return float(world.render_mask(shape, 32.0, 32.0, 10.0).sum()) / 100.0


BLURS = (0.0, 0.8, 1.6, 2.4)  # Gaussian sigmas (pixels) tried for the shape templates


def _blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    return gaussian_filter(mask, sigma, mode="nearest") if sigma > 0 else mask.copy()


def coverage(arr: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Per-pixel share of shape colour (alpha), projecting onto the bg->fg colour line."""
    axis = fg - bg
    alpha = ((arr - bg) @ axis) / max(float(axis @ axis), 1e-6)
    alpha = np.clip(alpha, 0.0, 1.0)
    alpha[alpha < ALPHA_FLOOR] = 0.0
    return alpha


def judge(image) -> Judgement:
    """Read an image of the world back into its attributes."""
    arr = _as_array(image)
    border = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    bg = np.median(border, axis=0)
    background = world.nearest_color(bg)
    dist = np.linalg.norm(arr - bg, axis=2)
    if dist.max() < MIN_CONTRAST:
        return Judgement(background, None, _rgb(bg), None, None, None, None, {}, 0.0, (0.0, 0.0))
    core = dist >= 0.8 * dist.max()
    fg = np.median(arr[core], axis=0)
    color = world.nearest_color(fg, exclude=background)
    alpha = coverage(arr, bg, fg)
    area = float(alpha.sum())
    ys, xs = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]]
    # pixel centres are at +0.5 in the drawing's coordinates
    cx = float((alpha * (xs + 0.5)).sum() / area)
    cy = float((alpha * (ys + 0.5)).sum() / area)
    position = min(world.POSITIONS, key=lambda p: np.hypot(cx - world.POSITIONS[p][0],
                                                           cy - world.POSITIONS[p][1]))
    scores, radii = {}, {}
    for shape in world.SHAPES:
        r = float(np.sqrt(area / _unit_area(shape)))
        sharp = world.render_mask(shape, cx, cy, r)
        best = 0.0
        for sigma in BLURS:  # blurry images are compared with equally blurred templates
            template = _blur(sharp, sigma)
            template[template < ALPHA_FLOOR] = 0.0
            iou = float(np.minimum(alpha, template).sum() / np.maximum(alpha, template).sum())
            best = max(best, iou)
        scores[shape] = best
        radii[shape] = r
    shape = max(scores, key=scores.get)
    radius = radii[shape]
    size = "large" if radius >= world.SIZE_THRESHOLD else "small"
    return Judgement(background, color, _rgb(bg), _rgb(fg), shape, position, size, scores,
                     radius, (cx, cy))


def score(judgement: Judgement, scene: world.Scene | dict[str, str]) -> dict[str, bool]:
    """Which attributes the judge read as the scene (or prompt) says."""
    target = scene.attributes if isinstance(scene, world.Scene) else scene
    got = judgement.attributes()
    return {k: got[k] == v for k, v in target.items() if k in ATTRIBUTES}
