"""`sdlab sweep`: prompts x seeds x settings into a folder, here or on a Ray cluster.
A thin shell over `sdlab.sweep` (cells, table), `sdlab.grid` (grids, plots) and
`sdlab.sweep_ray` (the actor pool)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click
from tqdm.auto import tqdm

from sdlab.cli_common import DEVICES, guard, model_option
from sdlab.errors import SdlabError
from sdlab.grid import write_grids, write_plots
from sdlab.models import Parts, default_model, resolve, weights_hash
from sdlab.sweep import (
    Runner,
    Sweep,
    model_reference,
    parse_axis,
    parse_seeds,
    read_prompts,
    run_sweep,
)


@click.command("sweep")
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeatable).")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False),
              help="A file of prompts, one a line.")
@click.option("--seeds", default="0", show_default=True, help="Seeds: 0-99, 0,3,7 or both.")
@click.option("--axis", "axes", multiple=True, metavar="NAME=V1,V2,...",
              help="A recipe field and its values, e.g. guidance=1,3,5, scheduler=lms,euler, "
                   "swap=,red=blue ('' = no edit); one value sets it for every cell "
                   "(repeatable). Values holding commas: separate them with |.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for cells/, results.csv, grids and plots (a sweep started again "
                   "in it skips the cells it has).")
@model_option
@click.option("--grid-x", help="Axis across the grid (default: the first that varies).")
@click.option("--grid-y", help="Axis down the grid (default: the next).")
@click.option("--grid-z", help="One grid per value of this axis (default: the next).")
@click.option("--plot", is_flag=True, help="Accuracy against each axis (accuracy-AXIS.png).")
@click.option("--ray", "use_ray", is_flag=True, help="Run the cells on a local Ray instance.")
@click.option("--ray-address", help="Run the cells on the Ray cluster at this address.")
@click.option("--workers", type=int, help="Ray actors (default: the cluster's CPUs / threads).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar, no list of files.")
@guard
def sweep_cmd(prompts: tuple[str, ...], prompts_file: str | None, seeds: str,
              axes: tuple[str, ...], out: str, model: str | None, grid_x: str | None,
              grid_y: str | None, grid_z: str | None, plot: bool, use_ray: bool,
              ray_address: str | None, workers: int | None, device: str, quiet: bool) -> None:
    """Every combination of prompts, seeds and axis values: one PNG per cell (its recipe
    inside), a results table, labelled grids and (with --plot) accuracy plots."""
    all_prompts = (*prompts, *(read_prompts(prompts_file) if prompts_file else ()))
    sweep = Sweep.of(all_prompts, parse_seeds(seeds), [parse_axis(a) for a in axes])
    if workers is not None and workers < 1:
        raise SdlabError(f"--workers must be at least 1 (got {workers})")
    model = model or default_model()
    runner = _ray_runner(model, ray_address, workers, device) if (
        use_ray or ray_address) else None
    bar = _Bar(quiet)
    try:
        result = run_sweep(sweep, out, model, runner=runner, device=device, on_cell=bar)
    finally:
        bar.close()
    folder = Path(out)
    files = [*result.files, *write_grids(folder, sweep, result.cells, grid_x, grid_y, grid_z)]
    if plot:
        files += write_plots(folder, sweep, result.rows)
    if not quiet:
        click.echo(f"{len(result.cells)} cells ({result.ran} run, "
                   f"{len(result.cells) - result.ran} already there) in {folder}/cells")
        click.echo("\n".join(str(p) for p in files))


def _ray_runner(model: str, address: str | None, workers: int | None, device: str
               ) -> Callable[[Parts], Runner]:
    from sdlab.sweep_ray import RayRunner, connect

    connect(address)
    folder = resolve(model)
    expected = weights_hash(folder)
    reference = model_reference(model, folder)
    return lambda parts: RayRunner(reference, expected, workers, device)


class _Bar:
    """tqdm over cells on stderr, made at the first report (which says how many are done)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, desc="sweep", unit="cell",
                            file=sys.stderr, disable=self.quiet)
        else:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

