"""The graded-behaviour benchmark (sdlab.tiny.graded): its hue-arc and monotone logic on
synthetic values and world images, and each graded behaviour on the first cases of its own
fixed lists, on the bundled model (or the folder SDLAB_GRADED_MODEL names)."""

from __future__ import annotations

import colorsys
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlab.models import BUNDLED_NAME, Parts, load
from sdlab.tiny import graded, world
from sdlab.tiny.benchmark import benchmark_prompts, save_benchmark
from sdlab.tiny.judge import judge

# --- the hue arc -------------------------------------------------------------------------


def test_wrap_degrees_keeps_angles_in_minus_180_to_180() -> None:
    for angle in (-725.0, -540.0, -190.0, -180.0, -1.5, 0.0, 37.0, 180.0, 190.0, 900.0):
        wrapped = graded.wrap_degrees(angle)
        assert -180.0 < wrapped <= 180.0
        assert (wrapped - angle) % 360.0 == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("pair", graded.MIX_PAIRS)
def test_arc_fraction_runs_from_0_at_the_start_to_1_at_the_end(pair: tuple[str, str]) -> None:
    start, end = pair
    h_start, h_end = graded.typical_hue(start), graded.typical_hue(end)
    arc = graded.wrap_degrees(h_end - h_start)
    assert graded.arc_fraction(h_start, start, end) == pytest.approx(0.0, abs=1e-9)
    assert graded.arc_fraction(h_end, start, end) == pytest.approx(1.0)
    # off the arc too, up to half the circle from the arc's middle; the circle wraps: 360
    # degrees further is the same hue
    for p in (0.25, 0.5, 0.75, -0.2, 1.1):
        assert abs((p - 0.5) * arc) < 180.0
        hue = (h_start + p * arc) % 360.0
        assert graded.arc_fraction(hue, start, end) == pytest.approx(p)
        assert graded.arc_fraction(hue + 360.0, start, end) == pytest.approx(p)
    # reversed, the same arc is walked the other way
    assert graded.arc_fraction(h_start + 0.25 * arc, end, start) == pytest.approx(0.75)


@pytest.mark.parametrize("pair", graded.MIX_PAIRS)
def test_every_hue_either_end_names_lies_on_that_ends_side_of_the_arc(
        pair: tuple[str, str]) -> None:
    """A hue the judge names the end colour reads past the middle, one it names the start
    colour before it, even where the name's sector runs more than half a circle from the
    other end (green to purple: the purple sector ends 200 degrees from green)."""
    start, end = pair
    for hue in np.arange(0.0, 360.0, 0.5):
        name = world.hue_name(float(hue))
        if name == end:
            assert graded.arc_fraction(float(hue), start, end) > 0.5, (name, hue)
        elif name == start:
            assert graded.arc_fraction(float(hue), start, end) < 0.5, (name, hue)


@pytest.mark.parametrize("pair", graded.MIX_PAIRS)
def test_each_pairs_short_arc_crosses_another_named_colour(pair: tuple[str, str]) -> None:
    start, end = pair
    h_start = graded.typical_hue(start)
    arc = graded.wrap_degrees(graded.typical_hue(end) - h_start)
    middle = world.hue_name(h_start + 0.5 * arc)
    assert middle not in pair
    assert abs(arc) < 180.0 - 10.0  # short enough that the way round is not in doubt


def test_chromatic_follows_the_worlds_colour_names() -> None:
    """Every colour named a hue is chromatic; the typical white and black, greys and the
    light and dark ends are not."""
    for name in world.COLOR_NAMES:
        typical = world.hsl(world.COLORS[name])
        assert graded.chromatic(typical) == (name not in ("white", "black"))
    for hue in np.linspace(0.0, 359.0, 37):
        for sat, light in ((0.6, 0.5), (world.GREY_SATURATION + 0.01, 0.3), (1.0, 0.7)):
            rgb = tuple(round(255 * v) for v in colorsys.hls_to_rgb(hue / 360, light, sat))
            named = world.color_name(rgb) not in ("white", "black")
            assert graded.chromatic(world.hsl(rgb)) == named, (hue, sat, light)
    for rgb in ((128, 128, 128), (250, 240, 240), (10, 5, 20)):
        assert not graded.chromatic(world.hsl(rgb))
    assert not graded.chromatic(None)


# --- monotone and in-between, on world images read by the judge ---------------------------


def _shape_image(hue: float | None, shape: str = "square") -> Image.Image:
    """A large centred shape on white in a saturated colour of `hue` (None: black)."""
    scene = world.make_scene(shape, "red", "white", "center", "large")
    rgb = world.COLORS["black"] if hue is None else tuple(
        int(round(255 * v)) for v in colorsys.hls_to_rgb((hue % 360.0) / 360.0, 0.5, 0.75))
    return Image.fromarray(world.render(dataclasses.replace(scene, rgb=rgb)))


def _case_from_fractions(start: str, end: str, fractions: list[float | None]
                         ) -> graded.HueCase:
    h_start = graded.typical_hue(start)
    arc = graded.wrap_degrees(graded.typical_hue(end) - h_start)
    spec = graded.HueSpec(start, end, "square", 0, f"a {start} square", f"a {end} square")
    images = [_shape_image(None if p is None else h_start + p * arc) for p in fractions]
    return graded.hue_case(spec, graded.MIX_WEIGHTS, [judge(im) for im in images])


@pytest.mark.parametrize("pair", graded.MIX_PAIRS)
def test_a_hue_walking_the_arc_is_monotone_and_in_between(pair: tuple[str, str]) -> None:
    case = _case_from_fractions(*pair, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert case.colors[0] == pair[0] and case.colors[-1] == pair[1]
    assert case.monotone and case.in_between
    # a step back inside the tolerance still counts
    small = 0.5 * graded.HUE_TOLERANCE
    assert _case_from_fractions(*pair, [0.0, 0.5, 0.5 - small, 0.75, 1.0]).monotone


def test_what_breaks_monotone_and_in_between() -> None:
    start, end = graded.MIX_PAIRS[0]
    back = 0.25 + 2 * graded.HUE_TOLERANCE
    stepping_back = _case_from_fractions(start, end, [0.0, back, 0.25, 0.75, 1.0])
    assert not stepping_back.monotone and stepping_back.in_between
    black_middle = _case_from_fractions(start, end, [0.0, 0.25, None, 0.75, 1.0])
    assert black_middle.colors[2] == "black"
    assert not black_middle.monotone and not black_middle.in_between
    reversed_ends = _case_from_fractions(start, end, [1.0, 0.75, 0.5, 0.25, 0.0])
    assert not reversed_ends.monotone
    stuck_at_start = _case_from_fractions(start, end, [0.0, 0.0, 0.0, 1.0, 1.0])
    assert stuck_at_start.monotone and not stuck_at_start.in_between


def test_rises_and_first_rise() -> None:
    tol = graded.BLUE_TOLERANCE
    base = [0.2, 0.2, 0.25, 0.4, 0.6]
    assert graded.rises(base, tol)
    assert graded.rises([*base[:3], base[2] - 0.5 * tol, *base[3:]], tol)
    assert not graded.rises([*base[:3], base[2] - 2 * tol, *base[3:]], tol)
    assert not graded.rises([0.3] * 5, tol)  # flat: no rise at all
    rise = graded.BLUE_RISE
    values = [0.2, 0.2 + 0.5 * rise, 0.2 + rise, 0.2 + 3 * rise]
    assert graded.first_rise(values, rise) == 2
    assert graded.first_rise(values[:2], rise) is None


def test_rate_says_whether_the_bar_is_met() -> None:
    bar = graded.HUE_BAR
    n = 10
    enough = int(np.ceil(bar * n))
    met = graded.Rate.of("x", [True] * enough + [False] * (n - enough), bar)
    assert (met.hits, met.n, met.rate, met.met) == (enough, n, enough / n, True)
    short = graded.Rate.of("x", [True] * (enough - 1) + [False] * (n - enough + 1), bar)
    assert not short.met
    assert not graded.Rate.of("x", [], bar).met


# --- the cases ---------------------------------------------------------------------------


def test_cases_use_unseen_seeds_and_fit_their_measure() -> None:
    suite_seeds = {p.seed for p in benchmark_prompts()}
    hue = graded.hue_specs(6, graded.SEEDS["mix"])
    assert [(s.start, s.end) for s in hue] == list(graded.MIX_PAIRS) * 2
    for s in hue:  # worded alike but the colour word
        assert re.sub(rf"\b{s.start}\b", s.end, s.prompt_start) == s.prompt_end
        assert graded.MIX_BACKGROUND in s.prompt_start
    blue = graded.blue_specs(10, graded.SEEDS["blue"])
    for s in blue:
        assert world.COLORS[s.scene.background][2] / 255 + graded.BLUE_RISE <= graded.BLUE_TARGET
        assert s.scene.shape in s.prompt and s.scene.background in s.prompt
    pairs = graded.img2img_specs(10, graded.SEEDS["img2img"])
    for s in pairs:
        assert s.target.shape != s.source.shape and s.target.color != s.source.color
        assert s.target.shape in s.prompt and s.target.color in s.prompt
    seeds = [s.seed for s in [*hue, *blue, *pairs]]
    assert len(set(seeds)) == len(seeds) and not suite_seeds & set(seeds)
    # the first k cases of a longer list are the k cases
    assert graded.hue_specs(3, graded.SEEDS["mix"]) == hue[:3]
    assert [graded.mix_entries(s) for s in hue] == [graded.interpolation_entries(s)
                                                     for s in hue]


# --- the graded behaviours on the model ----------------------------------------------------

# Fixed cases of each measure (indices into the benchmark's own lists) that the shipped
# model passes, one per colour pair where it can: a regression in a graded behaviour fails
# one of them. The full rates are the benchmark's (the model card). Each case runs once, and
# the measures are made of them as the benchmark makes its own.
MIX_CASES = (0, 1)  # red -> blue, red -> yellow
INTERPOLATION_CASES = (1, 5)  # red -> yellow, green -> purple
BLUE_CASES = (0, 2)
IMG2IMG_CASES = (5, 6)


@pytest.fixture(scope="module")
def model() -> Parts:
    return load(os.environ.get("SDLAB_GRADED_MODEL", BUNDLED_NAME))


@pytest.fixture(scope="module")
def result(model: Parts) -> graded.GradedResult:
    """The measures over the fixed cases, each case run once."""
    return graded.run_graded(model, {"mix": MIX_CASES, "interpolation": INTERPOLATION_CASES,
                                     "blue": BLUE_CASES, "img2img": IMG2IMG_CASES})


def test_every_measure_reads_its_cases_back(result: graded.GradedResult) -> None:
    """Each case holds one judged reading per weight, scale or strength, and the rates count
    the cases."""
    assert [len(m.cases) for m in (result.mix, result.interpolation, result.blue,
                                   result.img2img)] == [
        len(MIX_CASES), len(INTERPOLATION_CASES), len(BLUE_CASES), len(IMG2IMG_CASES)]
    for measure in (result.mix, result.interpolation):
        for case in measure.cases:
            assert len(case.colors) == len(case.hsl) == len(case.fractions) == len(case.weights)
        assert measure.monotone.hits == sum(c.monotone for c in measure.cases)
    for blue in result.blue.cases:
        assert len(blue.blue_means) == len(blue.shapes) == len(result.blue.scales)
        assert all(0.0 <= b <= 1.0 for b in blue.blue_means)
    for i2i in result.img2img.cases:
        assert len(i2i.distances) == len(result.img2img.strengths)
    assert result.img2img.monotone.hits == sum(c.monotone for c in result.img2img.cases)


def test_run_graded_runs_the_first_cases_of_each_list(model: Parts) -> None:
    """The benchmark's own entry point: the first k cases of each list, read back."""
    one = graded.run_graded(model, {"mix": 0, "interpolation": 0, "blue": 0, "img2img": 1})
    assert not one.mix.cases and not one.blue.cases and len(one.img2img.cases) == 1
    (case,) = one.img2img.cases
    (spec,) = graded.img2img_specs(1, graded.SEEDS["img2img"])
    assert (case.prompt, case.seed, case.source) == (spec.prompt, spec.seed,
                                                     spec.source.attributes)
    assert len(case.distances) == len(one.img2img.strengths)


def test_the_result_is_saved_beside_the_benchmark(result: graded.GradedResult,
                                                   tmp_path: Path) -> None:
    (tmp_path / "benchmark.json").write_text(json.dumps({"prompts": 200}))
    graded.save_graded(tmp_path, result)
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["prompts"] == 200
    assert saved["graded"] == json.loads(json.dumps(result.to_dict()))
    assert saved["graded"]["mix"]["monotone"]["rate"] == result.mix.monotone.rate
    # the quality benchmark, run again, keeps the graded result
    save_benchmark(tmp_path, {"prompts": 100})
    again = json.loads((tmp_path / "benchmark.json").read_text())
    assert again["prompts"] == 100 and again["graded"] == saved["graded"]


def test_a_mix_moves_the_hue_by_degrees(result: graded.GradedResult) -> None:
    """Weights 0 .. 1 walk the shape's hue from one colour to the other, through a
    saturated in-between colour at 0.5 (not black, white or grey)."""
    for case in result.mix.cases:
        assert case.monotone and case.in_between, (case.prompt_start, case.colors, case.hsl)


def test_an_interpolation_moves_the_hue_by_degrees(result: graded.GradedResult) -> None:
    for case in result.interpolation.cases:
        assert case.monotone and case.in_between, (case.prompt_start, case.colors, case.hsl)


def test_the_blue_guide_makes_the_picture_bluer_and_keeps_its_shape(
        result: graded.GradedResult) -> None:
    for case in result.blue.cases:
        assert case.monotone and case.shape_kept, (case.prompt, case.blue_means, case.shapes)


def test_img2img_strength_moves_from_the_input_to_the_prompt(
        result: graded.GradedResult) -> None:
    for case in result.img2img.cases:
        assert case.monotone, (case.prompt, case.distances)
        assert case.keeps_source, (case.source, case.colors[0], case.shapes[0])
        assert case.follows_prompt, (case.prompt, case.colors[-1], case.shapes[-1])
