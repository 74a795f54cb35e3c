"""Graded-behaviour benchmark of sdlab-tiny: do the deep dive's continuous controls -- a
prompt mix, an interpolation, a loss guide's scale, an img2img strength -- move the picture
by degrees?

Each measure runs through sdlab's own library (recipes, `generate`, `img2img`, the blue
loss guide, `surgery.interpolation_mixes`), on prompts worded as the quality benchmark
words them (never as the training captions) and on seeds that benchmark does not use;
every image is read back by the judge. LMS, 30 steps, guidance 7.5.

- mix: `--mix` weights 0, 0.25, 0.5, 0.75, 1 between "a <start> X ..." and "a <end> X ..."
  (white background; the same wording but the colour word). Each judged shape hue is put on
  the short hue arc from the start name's typical hue to the end name's (`arc_fraction`:
  0 at the start, 1 at the end). Monotone: the judge names the start colour at weight 0 and
  the end colour at 1, every frame's shape is chromatic (not black, white or grey: a black
  shape has no hue to move), and the fraction never steps back by more than
  HUE_TOLERANCE. In between: the 0.5 frame's shape is chromatic and 0 < fraction < 1.
- interpolation: the same, on the frames `sdlab interpolate` draws (5 frames), from other
  seeds and wordings.
- blue: the deep dive's blue loss every 5 steps through the full VAE decoder, over
  BLUE_SCALES. Monotone: the image's blue mean (0..1) never falls by more than
  BLUE_TOLERANCE from one scale to the next and ends above where it started (by more than
  the tolerance). Shape kept: at the first scale that raises the blue mean by BLUE_RISE
  over the unguided image the judge reads the prompt's shape (a prompt no scale raises
  that much fails).
- img2img: a world image of one scene, the prompt of another (other shape, other colour),
  strengths 0.2 ... 1.0. Monotone: the mean absolute pixel distance (0..1) to the input
  never falls by more than DISTANCE_TOLERANCE and ends above its start. At 0.2 the judge
  reads the input's shape and colour; at 1.0 the prompt's.

    python -m sdlab.tiny.benchmark [FOLDER] --graded [--no-write]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sdlab.generate import generate
from sdlab.img2img import img2img
from sdlab.models import Parts
from sdlab.outputs import atomic_write
from sdlab.recipe import GenerateParams, Img2ImgParams, parse, parse_mix
from sdlab.surgery import interpolation_mixes
from sdlab.tiny import world
from sdlab.tiny.benchmark import _POS, _SIZE, _TEMPLATES
from sdlab.tiny.judge import Judgement, judge

STEPS = 30
GUIDANCE = 7.5
SCHEDULER = "lms"

# Seeds: the quality benchmark uses 10_000 + i; each measure here has its own range.
SEEDS = {"mix": 20_000, "interpolation": 21_000, "blue": 22_000, "img2img": 23_000}

MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the end prompt's weight
INTERPOLATION_FRAMES = 5
# red -> blue runs through purple; red -> yellow (the shortest arc, 54 degrees) through
# orange; green -> purple (151 degrees) through blue: each arc crosses one named colour
# region, a different one each, and together they cover most of the hue circle.
MIX_PAIRS = (("red", "blue"), ("red", "yellow"), ("green", "purple"))
MIX_BACKGROUND = "white"
HUE_TOLERANCE = 0.1  # of the arc: a step back smaller than this still counts as monotone
HUE_BAR = 0.8

# The blue guide's scale ladder, from "no change" to "clearly bluer", measured on sdlab-tiny
# trained on the graded world: over the unguided image its 20 cases' median blue mean rises
# by 0.03 at scale 1, 0.11 at 3, 0.45 at 10 and 0.68 at 30, where the mean reaches the
# loss's target (0.9). Past that the guide overshoots and the mean falls again (0.96 at
# 100, 0.87 at 300, 0.79 at 1000).
BLUE_SCALES = (0.0, 1.0, 3.0, 10.0, 30.0)
BLUE_EVERY = 5
BLUE_DECODER = "full"
BLUE_TARGET = 0.9  # guidance.blue_loss pulls the blue channel towards this
BLUE_RISE = 0.1  # of the blue mean, 0..1: "clearly bluer"
BLUE_TOLERANCE = 0.01  # a fall smaller than this still counts as monotone
BLUE_BAR = 0.8

IMG2IMG_STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
DISTANCE_TOLERANCE = 0.005  # of the mean pixel distance, 0..1
IMG2IMG_BAR = 0.9

# How many cases each measure runs (mix and interpolation: seed x pair, the pairs in turn).
CASES = {"mix": 30, "interpolation": 30, "blue": 20, "img2img": 20}


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """How many cases pass a measure, and the bar it must reach."""

    name: str
    hits: int
    n: int
    rate: float
    bar: float
    met: bool

    @classmethod
    def of(cls, name: str, oks: Sequence[bool], bar: float) -> Rate:
        hits = sum(bool(ok) for ok in oks)
        rate = hits / len(oks) if oks else 0.0  # no case: not met
        return cls(name, hits, len(oks), rate, bar, bool(oks) and rate >= bar)


@dataclass(frozen=True)
class HueCase:
    """One seed x pair of a mix or an interpolation: what the judge read at each weight."""

    start: str
    end: str
    prompt_start: str
    prompt_end: str
    shape: str
    seed: int
    weights: tuple[float, ...]  # the end prompt's weight, frame by frame
    colors: tuple[str | None, ...]  # the judge's colour name (None: no shape found)
    hsl: tuple[tuple[float, float, float] | None, ...]  # the shape's (hue, sat, lightness)
    fractions: tuple[float | None, ...]  # arc_fraction of chromatic shapes, else None
    monotone: bool
    in_between: bool  # at weight 0.5


@dataclass(frozen=True)
class HueMeasure:
    name: str
    monotone: Rate
    in_between: Rate
    cases: tuple[HueCase, ...]

    @property
    def rates(self) -> tuple[Rate, ...]:
        return self.monotone, self.in_between


@dataclass(frozen=True)
class BlueCase:
    prompt: str
    shape: str
    seed: int
    blue_means: tuple[float, ...]  # per scale of the ladder, 0..1
    shapes: tuple[str | None, ...]  # the judge's shape per scale
    monotone: bool
    first_rise: float | None  # the first scale raising the blue mean by BLUE_RISE
    shape_kept: bool  # the judge reads the prompt's shape at first_rise


@dataclass(frozen=True)
class BlueMeasure:
    scales: tuple[float, ...]
    monotone: Rate
    shape_kept: Rate
    cases: tuple[BlueCase, ...]

    @property
    def rates(self) -> tuple[Rate, ...]:
        return self.monotone, self.shape_kept


@dataclass(frozen=True)
class Img2ImgCase:
    source: dict[str, str]  # the input scene's attributes
    target: dict[str, str]  # the prompt's
    prompt: str
    seed: int
    distances: tuple[float, ...]  # mean |output - input| per strength, 0..1
    colors: tuple[str | None, ...]
    shapes: tuple[str | None, ...]
    monotone: bool
    keeps_source: bool  # at the lowest strength
    follows_prompt: bool  # at the highest


@dataclass(frozen=True)
class Img2ImgMeasure:
    strengths: tuple[float, ...]
    monotone: Rate
    keeps_source: Rate
    follows_prompt: Rate
    cases: tuple[Img2ImgCase, ...]

    @property
    def rates(self) -> tuple[Rate, ...]:
        return self.monotone, self.keeps_source, self.follows_prompt


@dataclass(frozen=True)
class GradedResult:
    model: str
    steps: int
    guidance: float
    scheduler: str
    mix: HueMeasure
    interpolation: HueMeasure
    blue: BlueMeasure
    img2img: Img2ImgMeasure

    @property
    def rates(self) -> tuple[Rate, ...]:
        return (*self.mix.rates, *self.interpolation.rates, *self.blue.rates,
                *self.img2img.rates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- hue arcs ----------------------------------------------------------------------------


def wrap_degrees(angle: float) -> float:
    """An angle in degrees, wrapped into (-180, 180]."""
    wrapped = (angle + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 else wrapped


def typical_hue(name: str) -> float:
    """The hue (degrees) of a colour name's typical colour."""
    return world.hsl(world.COLORS[name])[0]


def arc_fraction(hue: float, start: str, end: str) -> float:
    """Where a hue lies on the short arc from `start`'s typical hue (0) to `end`'s (1),
    measured from the arc's middle (0.5) so that the half circle centred on the arc maps
    continuously: a hue past either end stays on that end's side of the arc."""
    arc = wrap_degrees(typical_hue(end) - typical_hue(start))
    middle = typical_hue(start) + 0.5 * arc
    return 0.5 + wrap_degrees(hue - middle) / arc


def chromatic(hsl: tuple[float, float, float] | None) -> bool:
    """A saturated colour, neither black, white nor grey (the world's own thresholds)."""
    if hsl is None:
        return False
    _, saturation, lightness = hsl
    return (saturation >= world.GREY_SATURATION
            and world.BLACK_LIGHTNESS < lightness < world.WHITE_LIGHTNESS)


def fractions_of(hsls: Sequence[tuple[float, float, float] | None], start: str, end: str
                 ) -> tuple[float | None, ...]:
    return tuple(arc_fraction(h[0], start, end) if chromatic(h) else None for h in hsls)


def hue_monotone(colors: Sequence[str | None], fractions: Sequence[float | None], start: str,
                 end: str, tolerance: float = HUE_TOLERANCE) -> bool:
    """The start colour first, the end colour last, a hue in every frame, never stepping
    back along the arc by more than `tolerance`."""
    if colors[0] != start or colors[-1] != end or any(f is None for f in fractions):
        return False
    return all(b >= a - tolerance for a, b in zip(fractions, fractions[1:], strict=False))


def in_between(hsl: tuple[float, float, float] | None, fraction: float | None) -> bool:
    """A saturated colour strictly inside the arc."""
    return chromatic(hsl) and fraction is not None and 0.0 < fraction < 1.0


def hue_case(spec: HueSpec, weights: Sequence[float], judgements: Sequence[Judgement]
             ) -> HueCase:
    """Score what the judge read at each weight."""
    hsls = tuple(j.color_hsl for j in judgements)
    colors = tuple(j.color if j.found else None for j in judgements)
    fractions = fractions_of(hsls, spec.start, spec.end)
    middle = list(weights).index(0.5)
    return HueCase(spec.start, spec.end, spec.prompt_start, spec.prompt_end, spec.shape,
                   spec.seed, tuple(weights), colors, hsls, fractions,
                   hue_monotone(colors, fractions, spec.start, spec.end),
                   in_between(hsls[middle], fractions[middle]))


# --- rising series (blue mean, img2img distance) -------------------------------------------


def rises(values: Sequence[float], tolerance: float) -> bool:
    """Never falls by more than `tolerance`, and ends more than `tolerance` above its start."""
    steps_ok = all(b >= a - tolerance for a, b in zip(values, values[1:], strict=False))
    return steps_ok and values[-1] > values[0] + tolerance


def first_rise(values: Sequence[float], rise: float) -> int | None:
    """The index of the first value at least `rise` above the first, or None."""
    return next((k for k, v in enumerate(values) if v - values[0] >= rise), None)


# --- wording and cases --------------------------------------------------------------------


@dataclass(frozen=True)
class Wording:
    """One of the quality benchmark's unseen templates with its size and position phrases."""

    template: int
    size: str
    position: str

    def text(self, color: str, shape: str, background: str) -> str:
        text = _TEMPLATES[self.template].format(size=self.size, color=color, shape=shape,
                                                bg=background, pos=self.position)
        return text.replace("a orange", "an orange")


def draw_wording(rng: np.random.Generator, size: str, position: str) -> Wording:
    sizes, positions = _SIZE[size], _POS[position]
    return Wording(int(rng.integers(len(_TEMPLATES))), sizes[rng.integers(len(sizes))],
                   positions[rng.integers(len(positions))])


def scene_prompt(scene: world.Scene, rng: np.random.Generator) -> str:
    return draw_wording(rng, scene.size, scene.position).text(scene.color, scene.shape,
                                                              scene.background)


@dataclass(frozen=True)
class HueSpec:
    start: str
    end: str
    shape: str
    seed: int
    prompt_start: str  # worded alike: only the colour word differs
    prompt_end: str


def hue_specs(n: int, seed: int) -> list[HueSpec]:
    """n cases, the pairs in turn, each with its own shape, size, position and wording;
    shapes held out of training with either colour are not drawn."""
    rng = np.random.default_rng(seed)
    specs = []
    for k in range(n):
        start, end = MIX_PAIRS[k % len(MIX_PAIRS)]
        shapes = [s for s in world.SHAPES
                  if not (world.is_held_out(start, s) or world.is_held_out(end, s))]
        shape = shapes[rng.integers(len(shapes))]
        size = world.SIZE_NAMES[rng.integers(len(world.SIZE_NAMES))]
        position = world.POSITION_NAMES[rng.integers(len(world.POSITION_NAMES))]
        wording = draw_wording(rng, size, position)
        specs.append(HueSpec(start, end, shape, seed + k,
                             wording.text(start, shape, MIX_BACKGROUND),
                             wording.text(end, shape, MIX_BACKGROUND)))
    return specs


def mix_entries(spec: HueSpec) -> list[tuple[str, ...]]:
    """The --mix entries of each weight of MIX_WEIGHTS."""
    return [(f"{spec.prompt_start}:{1.0 - w!r}", f"{spec.prompt_end}:{w!r}")
            for w in MIX_WEIGHTS]


def interpolation_entries(spec: HueSpec) -> list[tuple[str, ...]]:
    """The --mix entries of `sdlab interpolate`'s frames."""
    return interpolation_mixes(spec.prompt_start, spec.prompt_end, INTERPOLATION_FRAMES)


def params(prompt: str, seed: int, **settings: Any) -> GenerateParams:
    return GenerateParams(prompt, steps=STEPS, guidance=GUIDANCE, scheduler=SCHEDULER,
                          seed=seed, **settings)


def run_hue_case(parts: Parts, spec: HueSpec, entries: Sequence[tuple[str, ...]]) -> HueCase:
    """Draw each frame's mix with the case's seed and judge it."""
    weights = [parse_mix(mix[-1]).weight for mix in entries]
    judgements = [judge(generate(parts, parse(params("", spec.seed, mix=mix))).images[0])
                  for mix in entries]
    return hue_case(spec, weights, judgements)


@dataclass(frozen=True)
class BlueSpec:
    prompt: str
    scene: world.Scene  # the scene the prompt names
    seed: int


def blue_specs(n: int, seed: int) -> list[BlueSpec]:
    """n scenes whose background leaves the blue channel room to rise by BLUE_RISE below the
    loss's target (not blue, not white)."""
    rng = np.random.default_rng(seed)
    specs: list[BlueSpec] = []
    while len(specs) < n:
        scene = world.sample_scene(rng, "train")
        if world.COLORS[scene.background][2] / 255.0 + BLUE_RISE > BLUE_TARGET:
            continue
        specs.append(BlueSpec(scene_prompt(scene, rng), scene, seed + len(specs)))
    return specs


def blue_mean(image: Image.Image) -> float:
    return float(np.asarray(image.convert("RGB"), dtype=np.float64)[..., 2].mean() / 255.0)


def run_blue_case(parts: Parts, spec: BlueSpec, scales: Sequence[float] = BLUE_SCALES
                  ) -> BlueCase:
    """The prompt at each scale of the blue guide (scale 0: no guide)."""
    images = []
    for scale in scales:
        guide = (f"blue:{scale!r}",) if scale else ()
        recipe = parse(params(spec.prompt, spec.seed, guide=guide, guide_every=BLUE_EVERY,
                              guide_decoder=BLUE_DECODER))
        images.append(generate(parts, recipe).images[0])
    means = tuple(blue_mean(im) for im in images)
    shapes = tuple(judge(im).shape for im in images)
    k = first_rise(means, BLUE_RISE)
    shape = spec.scene.shape
    return BlueCase(spec.prompt, shape, spec.seed, means, shapes,
                    rises(means, BLUE_TOLERANCE), None if k is None else float(scales[k]),
                    k is not None and shapes[k] == shape)


@dataclass(frozen=True)
class Img2ImgSpec:
    source: world.Scene
    target: world.Scene
    prompt: str
    seed: int


def img2img_specs(n: int, seed: int) -> list[Img2ImgSpec]:
    """n pairs of scenes: the input image's and the prompt's, of another shape and colour."""
    rng = np.random.default_rng(seed)
    specs = []
    for k in range(n):
        source = world.sample_scene(rng, "train")
        target = world.sample_scene(rng, "train")
        while target.shape == source.shape or target.color == source.color:
            target = world.sample_scene(rng, "train")
        specs.append(Img2ImgSpec(source, target, scene_prompt(target, rng), seed + k))
    return specs


def pixel_distance(image: Image.Image, reference: np.ndarray) -> float:
    """Mean absolute difference of two RGB images, 0..1."""
    got = np.asarray(image.convert("RGB"), dtype=np.float64)
    return float(np.abs(got - reference.astype(np.float64)).mean() / 255.0)


def run_img2img_case(parts: Parts, spec: Img2ImgSpec,
                     strengths: Sequence[float] = IMG2IMG_STRENGTHS) -> Img2ImgCase:
    """The input image through img2img at each strength, with the target's prompt."""
    pixels = world.render(spec.source)
    source = Image.fromarray(pixels)
    outputs = [img2img(parts, parse(Img2ImgParams(spec.prompt, steps=STEPS, guidance=GUIDANCE,
                                                  scheduler=SCHEDULER, seed=spec.seed,
                                                  strength=s)), source).images[0]
               for s in strengths]
    distances = tuple(pixel_distance(im, pixels) for im in outputs)
    judged = [judge(im) for im in outputs]
    reads = [(j.shape, j.color) for j in judged]
    return Img2ImgCase(spec.source.attributes, spec.target.attributes, spec.prompt, spec.seed,
                       distances, tuple(j.color for j in judged), tuple(j.shape for j in judged),
                       rises(distances, DISTANCE_TOLERANCE),
                       reads[0] == (spec.source.shape, spec.source.color),
                       reads[-1] == (spec.target.shape, spec.target.color))


# --- the benchmark ------------------------------------------------------------------------


def _each(specs: Sequence[Any], run: Callable[[Any], Any], label: str, progress: bool
          ) -> tuple[Any, ...]:
    return tuple(run(s) for s in tqdm(specs, desc=label, disable=not progress, leave=False))


def hue_measure(name: str, cases: Sequence[HueCase]) -> HueMeasure:
    return HueMeasure(name, Rate.of(f"{name}: hue monotone", [c.monotone for c in cases],
                                    HUE_BAR),
                      Rate.of(f"{name}: 0.5 a saturated in-between colour",
                              [c.in_between for c in cases], HUE_BAR), tuple(cases))


def blue_measure(cases: Sequence[BlueCase], scales: Sequence[float]) -> BlueMeasure:
    return BlueMeasure(tuple(scales),
                       Rate.of("blue: blue mean rises monotonically",
                               [c.monotone for c in cases], BLUE_BAR),
                       Rate.of(f"blue: shape kept at the first +{BLUE_RISE:g} scale",
                               [c.shape_kept for c in cases], BLUE_BAR), tuple(cases))


def img2img_measure(cases: Sequence[Img2ImgCase]) -> Img2ImgMeasure:
    return Img2ImgMeasure(
        IMG2IMG_STRENGTHS,
        Rate.of("img2img: distance to the input rises monotonically",
                [c.monotone for c in cases], IMG2IMG_BAR),
        Rate.of(f"img2img: input's shape and colour at {IMG2IMG_STRENGTHS[0]:g}",
                [c.keeps_source for c in cases], IMG2IMG_BAR),
        Rate.of(f"img2img: prompt's shape and colour at {IMG2IMG_STRENGTHS[-1]:g}",
                [c.follows_prompt for c in cases], IMG2IMG_BAR), tuple(cases))


def run_graded(parts: Parts, cases: dict[str, int | Sequence[int]] | None = None,
               scales: Sequence[float] = BLUE_SCALES, progress: bool = False) -> GradedResult:
    """All four measures on a loaded model; `cases` sets which of each measure's cases run:
    a number k, the first k of its fixed list (default CASES), or the indices into it."""
    chosen = {**CASES, **(cases or {})}

    def specs(name: str, make: Callable[[int, int], list]) -> list:
        picked = chosen[name]
        if isinstance(picked, int):
            return make(picked, SEEDS[name])
        every = make(max(picked, default=-1) + 1, SEEDS[name])
        return [every[k] for k in picked]

    mix = _each(specs("mix", hue_specs),
                lambda s: run_hue_case(parts, s, mix_entries(s)), "mix", progress)
    interp = _each(specs("interpolation", hue_specs),
                   lambda s: run_hue_case(parts, s, interpolation_entries(s)), "interpolate",
                   progress)
    blue = _each(specs("blue", blue_specs),
                 lambda s: run_blue_case(parts, s, scales), "blue", progress)
    i2i = _each(specs("img2img", img2img_specs),
                lambda s: run_img2img_case(parts, s), "img2img", progress)
    return GradedResult(parts.model_id, STEPS, GUIDANCE, SCHEDULER, hue_measure("mix", mix),
                        hue_measure("interpolation", interp), blue_measure(blue, scales),
                        img2img_measure(i2i))


def save_graded(folder: str | Path, result: GradedResult) -> Path:
    """Write the result under "graded" in the folder's benchmark.json, keeping the rest."""
    path = Path(folder) / "benchmark.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["graded"] = result.to_dict()
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def summary(result: GradedResult) -> str:
    """One line per measure: rate, bar, met."""
    return "\n".join(f"{r.name}: {r.hits}/{r.n} = {r.rate:.0%} (bar {r.bar:.0%}) "
                     f"{'met' if r.met else 'NOT met'}" for r in result.rates)


def benchmark_folder(folder: str | Path, write: bool = True, progress: bool = True
                     ) -> GradedResult:
    """Load the model in `folder`, run every measure, and (with write) save the result in
    its benchmark.json under "graded"."""
    from sdlab.models import load

    result = run_graded(load(str(folder)), progress=progress)
    if write:
        save_graded(folder, result)
    return result
