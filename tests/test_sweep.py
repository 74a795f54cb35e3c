"""Sweeps: axes checked before any work, cells that re-run exactly, a resumed sweep equal
to an unbroken one, grids holding the cells' images, Ray equal to the local run, and the
judge's scores on the bundled model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sdlab.cli_sweep import sweep_cmd
from sdlab.errors import SdlabError
from sdlab.generate import generate
from sdlab.grid import write_grids, write_plots
from sdlab.models import BUNDLED_NAME, Parts
from sdlab.outputs import read_png_meta
from sdlab.recipe import GenerateParams, params_from_dict
from sdlab.sweep import (
    TIMING_COLUMNS,
    LocalRunner,
    Sweep,
    parse_axis,
    parse_seeds,
    plan,
    read_prompts,
    run_sweep,
)
from sdlab.tiny import world
from sdlab.tiny.caption import parse_caption

PROMPTS = ("a red circle on a white background", "a blue square on a yellow background")


def small_sweep(**base: object) -> Sweep:
    return Sweep.of(PROMPTS, (0, 1), [parse_axis("guidance=1,3"), parse_axis("steps=2")],
                    GenerateParams(prompt="", **base))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def table_without_timing(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS}
                for row in csv.DictReader(stream)]


# --- parsing and checks ------------------------------------------------------------------


def test_caption_parse_inverts_the_worlds_captions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        scene = world.sample_scene(rng)
        text, mentions = world.caption_and_mentions(scene, rng)
        assert parse_caption(text) == {k: scene.attributes[k] for k in mentions}, text
    assert parse_caption("a red circle on a white background", ("red=blue",))["color"] == "blue"


def test_axes_and_seeds_parse() -> None:
    assert parse_axis("guidance=1,3,7.5").values == (1.0, 3.0, 7.5)
    assert parse_axis("swap=,red=blue").values == ((), ("red=blue",))
    assert parse_axis("scheduler=lms,euler").values == ("lms", "euler")
    assert parse_seeds("0-3,10,2") == (0, 1, 2, 3, 10)


@pytest.mark.parametrize("axis, words", [
    ("guidance=1,x", "--axis guidance=x"),
    ("scheduler=lms,nope", "--axis scheduler=nope"),
    ("steps=10,0", "--axis steps=0"),
    ("height=64,65", "--axis height=65"),
    ("guide=blue:x", "--axis guide=blue:x"),
    ("colour=red", "--axis colour"),
])
def test_a_bad_axis_value_is_named_before_any_cell(axis: str, words: str, tiny_folder: Path,
                                                   tmp_path: Path) -> None:
    with pytest.raises(SdlabError) as err:
        plan(Sweep.of(PROMPTS, (0,), [parse_axis(axis)]), tiny_folder)
    assert words in str(err.value) and "\n" not in str(err.value)
    result = CliRunner().invoke(sweep_cmd, ["--prompt", "a red circle", "--axis", axis,
                                            "--model", str(tiny_folder), "--out",
                                            str(tmp_path / "s")])
    assert result.exit_code == 1 and words in result.output
    assert not (tmp_path / "s").exists()


def test_bounds(tmp_path: Path) -> None:
    with pytest.raises(SdlabError, match="over the limit"):
        Sweep.of(PROMPTS, parse_seeds("0-999"), [parse_axis("guidance=" + ",".join(
            str(g) for g in range(6)))])
    many = tmp_path / "prompts.txt"
    many.write_text("a red circle\n" * 1001)
    with pytest.raises(SdlabError, match="more than"):
        read_prompts(many)


def test_a_swap_that_cannot_apply_fails_before_any_cell(tiny_folder: Path,
                                                        tmp_path: Path) -> None:
    sweep = Sweep.of(PROMPTS, (0,), [parse_axis("swap=,red=blue"), parse_axis("steps=1")])
    with pytest.raises(SdlabError, match="swap"):
        run_sweep(sweep, tmp_path, str(tiny_folder))
    assert not list((tmp_path / "cells").glob("*.png"))


# --- running, resuming, grids ------------------------------------------------------------


def test_cells_rerun_exactly_from_their_png(tiny: Parts, tiny_folder: Path,
                                            tmp_path: Path) -> None:
    result = run_sweep(small_sweep(), tmp_path, str(tiny_folder), scorer=None)
    assert len(result.cells) == len({c.key for c in result.cells}) == 8
    for cell in result.cells[::3]:
        stored = read_png_meta(tmp_path / cell.file)["params"]
        again = generate(tiny, params_from_dict(stored)).images[0]
        assert np.array_equal(np.asarray(again), pixels(tmp_path / cell.file))
    rows = table_without_timing(tmp_path / "results.csv")
    assert [r["cell"] for r in rows] == [c.key for c in result.cells]
    assert {r["guidance"] for r in rows} == {"1.0", "3.0"}


class Interrupt(Exception):
    pass


def test_a_killed_sweep_resumes_to_the_same_table(tiny_folder: Path, tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_sweep(small_sweep(), whole, str(tiny_folder))

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_sweep(small_sweep(), broken, str(tiny_folder), on_cell=stop_after_three)
    # a PNG without its row (killed between the two writes) is run again
    first = next(p for p in sorted((broken / "cells").glob("*.json")))
    first.unlink()
    assert not list(broken.rglob(".*.part*"))  # no half-written file left behind
    resumed = run_sweep(small_sweep(), broken, str(tiny_folder))
    assert resumed.ran == 8 - 2
    assert table_without_timing(broken / "results.csv") == table_without_timing(
        whole / "results.csv")
    for cell in resumed.cells:
        assert np.array_equal(pixels(broken / cell.file), pixels(whole / cell.file))
    assert run_sweep(small_sweep(), broken, str(tiny_folder)).ran == 0


def _find(sheet: np.ndarray, tile: np.ndarray) -> bool:
    h, w = tile.shape[:2]
    for y, x in np.argwhere((sheet[: -h + 1, : -w + 1] == tile[0, 0]).all(-1)):
        if np.array_equal(sheet[y:y + h, x:x + w], tile):
            return True
    return False


def test_grids_hold_every_cell_and_one_grid_per_z(tiny_folder: Path, tmp_path: Path) -> None:
    sweep = small_sweep()
    result = run_sweep(sweep, tmp_path, str(tiny_folder))
    (grid,) = write_grids(tmp_path, sweep, result.cells)  # x guidance, y prompt, seed 0
    sheet = pixels(grid)
    seed0 = [c for c in result.cells if c.params.seed == 0]
    for cell in seed0:
        tile = Image.open(tmp_path / cell.file).convert("RGB")
        tile = np.asarray(tile.resize((128, 128), Image.Resampling.NEAREST))
        assert _find(sheet, tile)
    per_seed = write_grids(tmp_path, sweep, result.cells, x="guidance", y="prompt", z="seed")
    assert [p.name for p in per_seed] == ["grid-0.png", "grid-1.png"]
    with pytest.raises(SdlabError, match="needs scores"):
        write_plots(tmp_path, sweep, [{k: v for k, v in r.items() if not k.startswith("ok_")}
                                      for r in result.rows])


def test_cli_writes_cells_table_grid(tiny_folder: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "out"
    args = ["--prompts", str(prompts), "--seeds", "0", "--axis", "steps=1,2", "--model",
            str(tiny_folder), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(sweep_cmd, args)
    assert result.exit_code == 0, result.output
    rows = table_without_timing(out / "results.csv")
    assert len(rows) == 4 and all((out / r["file"]).is_file() for r in rows)
    assert (out / "grid.png").is_file()
    again = CliRunner().invoke(sweep_cmd, args[:-1])
    assert "0 run, 4 already there" in again.output


# --- Ray ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_equals_the_local_run(ray_local, tiny: Parts, tiny_folder: Path,
                                  tmp_path: Path) -> None:
    from sdlab.models import weights_hash
    from sdlab.sweep_ray import RayRunner

    local, remote = tmp_path / "local", tmp_path / "ray"
    run_sweep(small_sweep(), local, str(tiny_folder))
    expected = weights_hash(tiny_folder)
    pool = RayRunner(str(tiny_folder), expected, workers=2)
    result = run_sweep(small_sweep(), remote, str(tiny_folder), runner=lambda parts: pool)
    assert len(pool.actors) == 2
    assert table_without_timing(remote / "results.csv") == table_without_timing(
        local / "results.csv")
    for cell in result.cells:
        assert np.array_equal(pixels(remote / cell.file), pixels(local / cell.file))

    # a worker that dies has its cells run again, by a fresh actor, to the same pixels
    cells = result.cells[:4]
    stream = pool(cells)  # the same two actors, loaded once
    done = [next(stream)]
    ray_local.kill(pool.actors[0], no_restart=True)
    done += list(stream)
    assert sorted(c.key for c, _, _ in done) == sorted(c.key for c in cells)
    local_run = dict((c.key, np.asarray(im)) for c, im, _ in LocalRunner(tiny)(cells))
    for cell, image, _ in done:
        assert np.array_equal(np.asarray(image), local_run[cell.key])


# --- meaning on the bundled model --------------------------------------------------------


def test_the_table_scores_what_the_judge_reads(tmp_path: Path) -> None:
    """A swap red=blue should draw blue: the table scores each cell against its own prompt
    after its swaps, and the swapped cells are read blue."""
    sweep = Sweep.of(["a red circle on a white background"], (0, 1),
                     [parse_axis("swap=,red=blue"), parse_axis("guidance=7.5")])
    result = run_sweep(sweep, tmp_path, BUNDLED_NAME)
    swapped = [r for r in result.rows if r["swap"] == "red=blue"]
    plain = [r for r in result.rows if r["swap"] == ""]
    for row in swapped:
        assert row["ok_color"] == int(row["read_color"] == "blue")
    for row in plain:
        assert row["ok_color"] == int(row["read_color"] == "red")
    assert sum(r["read_color"] == "blue" for r in swapped) >= 1
    assert sum(r["read_color"] == "red" for r in plain) >= 1
    (plot,) = write_plots(tmp_path, sweep, result.rows)
    assert plot.name == "accuracy-swap.png" and Image.open(plot).size[0] > 0
