"""`python -m training`: train the bundled model from scratch (a thin shell over train.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from training.config import TinyConfig

DEFAULT_OUT = Path("runs/tiny/model")  # never the installed package's bundled model


@click.command("training")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Folder to write the diffusers model to.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/tiny"), show_default=True,
              help="Checkpoints, caches and loss logs (one folder per stage).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="Tiny sizes and a few steps (seconds; for tests).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the workdir's checkpoints and skip finished stages.")
@click.option("--threads", type=int, default=None, help="torch threads (default 1).")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty OUT that does not hold a model already.")
def main(out: Path, workdir: Path, seed: int, quick: bool, resume: bool,
         threads: int | None, overwrite: bool) -> None:
    """Train sdlab-tiny (VAE, CLIP, UNet) on the synthetic world and save it to OUT."""
    check_out(out, overwrite)
    config = TinyConfig.quick(seed) if quick else TinyConfig(seed=seed)
    if threads:
        config.threads = threads
    if resume:
        check_workdir(workdir, config)
    from training.train import train_tiny  # torch and the stages: after the checks

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = train_tiny(out, workdir, config, resume=resume)
    times = ", ".join(f"{k} {v / 60:.1f} min" for k, v in result.seconds.items())
    click.echo(f"saved {result.out} ({times})")


def check_out(out: Path, overwrite: bool) -> None:
    """OUT must be new, empty, or a model folder a previous run wrote (its model_index.json):
    the export replaces the model's subfolders, so a user's own files there would be lost."""
    if out.is_file():
        raise click.ClickException(f"--out {out} is a file: give a folder")
    if not out.is_dir() or overwrite or (out / "model_index.json").is_file():
        return
    if any(out.iterdir()):
        raise click.ClickException(f"--out {out} is not empty and holds no model: choose a new "
                                   "folder, or pass --overwrite")


# Settings that change how fast a run goes, not what it trains.
SPEED_ONLY = ("threads", "threads_alone", "parallel")


def check_workdir(workdir: Path, config: TinyConfig) -> None:
    """Resuming reuses the workdir's finished stages and checkpoints, so they must come from
    the same recipe: every option as this run's (a workdir whose config lacks an option was
    written by a recipe without it, which may have trained otherwise)."""
    path = workdir / "config.json"
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError:
        previous = {}
    current = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as stored
    if any(previous.get(k) != v for k, v in current.items() if k not in SPEED_ONLY):
        raise click.ClickException(
            f"--workdir {workdir} holds a run of another recipe ({path}): choose a new "
            "workdir, or pass --no-resume to train from scratch there")
