"""`sdlab bench`: sdlab against diffusers on the same model, side by side (sdlab.bench)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sdlab.bench import BenchSpec, run_bench, sd15_folder, table
from sdlab.cli_common import guard
from sdlab.errors import SdlabError
from sdlab.models import _cache_dir, resolve
from sdlab.outputs import atomic_write, check_writable
from sdlab.schedule import SCHEDULERS


@click.command("bench")
@click.option("--model", default="sdlab-tiny", show_default=True,
              help="A model folder or name, or 'sd15': the SD-1.5-shaped random-weight model "
                   "(built once into the sdlab cache).")
@click.option("--size", type=int, help="Image side in pixels [default: the model's native].")
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default="lms",
              show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True,
              help="Interleaved rounds after the warm-up; medians are reported.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
              show_default=True, help="fp32 on the CPU, fp16 on CUDA.")
@click.option("--threads", type=int, help="torch threads in each worker.")
@click.option("--channels-last", is_flag=True, help="Both UNets in channels_last layout.")
@click.option("--no-fast", is_flag=True, help="Leave out the --fast preset's runs.")
@click.option("--no-flops", is_flag=True, help="Leave out the UNet FLOP count.")
@click.option("--quick", is_flag=True,
              help="The bundled model, 2 steps, 1 round, 1 thread: checks that the command "
                   "works.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Also write the numbers as JSON.")
@guard
def bench_cmd(model: str, size: int | None, steps: int, scheduler: str, guidance: float,
              rounds: int, device: str, threads: int | None, channels_last: bool,
              no_fast: bool, no_flops: bool, quick: bool, json_out: str | None) -> None:
    """Time the same generation through sdlab and through diffusers (separate processes,
    interleaved rounds, medians, ratio, peak memory, UNet GFLOP/s)."""
    out = check_writable(json_out, ".json") if json_out else None
    if quick:
        model, steps, rounds, threads = "sdlab-tiny", 2, 1, threads or 1
    folder = sd15_folder(_cache_dir()) if model == "sd15" else resolve(model)
    if size is None:
        config = json.loads((folder / "unet" / "config.json").read_text())
        size = int(config.get("sample_size", 64)) * 8
    if size % 8:
        raise SdlabError(f"--size {size} is not a multiple of 8")
    spec = BenchSpec(str(Path(folder).resolve()), size, steps, scheduler, guidance, rounds,
                     device, threads, channels_last, not no_fast, not no_flops)
    result = run_bench(spec, lambda message: click.echo(message, err=True))
    click.echo(table(result))
    if out:
        click.echo(atomic_write(out, lambda tmp: tmp.write_text(
            json.dumps(result.to_dict(), indent=2) + "\n")))
