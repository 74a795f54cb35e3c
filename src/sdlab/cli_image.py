"""CLI: the VAE, the noise schedule and `add_noise` (thin shells over the library)."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from sdlab import vae
from sdlab.cli_common import guard, model_option
from sdlab.errors import SdlabError
from sdlab.limits import check_pixels, check_steps
from sdlab.models import default_model, load, read_configs, resolve, scale_factor
from sdlab.outputs import atomic_write, check_writable, save_latents
from sdlab.schedule import SCHEDULERS, make_scheduler, noise_to_step, schedule_table
from sdlab.viz import plot_schedule


def _save_image(image, path: Path) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


@click.group("vae")
def vae_group() -> None:
    """The VAE: images <-> latents (48x smaller for SD)."""


@vae_group.command("encode")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@model_option
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Latents file (.safetensors, key `latents`).")
@click.option("--mode", type=click.Choice(vae.ENCODE_MODES), default="mean",
              show_default=True, help="The posterior's mean (= mode) or a sample of it.")
@click.option("--seed", type=int, default=0, show_default=True, help="For --mode sample.")
@click.option("--channels", type=click.Path(dir_okay=False),
              help="Also write a PNG of the latent channels side by side.")
@guard
def vae_encode(image: str, model: str | None, out: str, mode: str, seed: int,
               channels: str | None) -> None:
    """Encode IMAGE to scaled latents."""
    out_path = check_writable(out, ".safetensors")
    channels_path = check_writable(channels, ".png") if channels else None
    folder = resolve(model or default_model())
    picture = vae.load_image(image, factor=scale_factor(read_configs(folder)["vae"]))
    parts = load(folder)
    latents = vae.encode(parts, [picture], mode, torch.Generator().manual_seed(seed))
    save_latents(latents, out_path)
    if channels_path:
        _save_image(vae.channels_picture(latents), channels_path)
    click.echo(f"{out_path}: latents {tuple(latents.shape)} from image "
               f"{(3, picture.height, picture.width)}")


@vae_group.command("decode")
@click.argument("latents_file", type=click.Path(exists=True, dir_okay=False))
@model_option
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG to write.")
@guard
def vae_decode(latents_file: str, model: str | None, out: str) -> None:
    """Decode a latents file (key `latents`) to an image (the first of the batch)."""
    out_path = check_writable(out, ".png")
    folder = resolve(model or default_model())
    configs = read_configs(folder)
    latents = vae.read_latents(latents_file, int(configs["vae"].get("latent_channels", 4)))
    first = latents[:1]  # (1, C, h, w)
    factor = scale_factor(configs["vae"])
    check_pixels(first.shape[2] * factor, first.shape[3] * factor, 1)
    parts = load(folder)
    image = vae.to_pil(vae.decode(parts, first))[0]
    click.echo(_save_image(image, out_path))


@vae_group.command("roundtrip")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@model_option
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="PNG: original | reconstruction, side by side.")
@guard
def vae_roundtrip(image: str, model: str | None, out: str) -> None:
    """Encode and decode IMAGE; report PSNR and the compression factor."""
    out_path = check_writable(out, ".png")
    folder = resolve(model or default_model())
    picture = vae.load_image(image, factor=scale_factor(read_configs(folder)["vae"]))
    result = vae.roundtrip(load(folder), picture)
    _save_image(vae.side_by_side([result.original, result.reconstruction]), out_path)
    click.echo(f"PSNR {result.psnr:.2f} dB, compression {result.compression:.0f}x "
               f"(image {result.image_shape} -> latents {result.latents_shape}); {out_path}")


@click.command("schedule")
@model_option
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default="lms",
              show_default=True)
@click.option("--steps", type=int, default=15, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write a PNG plot.")
@guard
def schedule_cmd(model: str | None, scheduler: str, steps: int, plot: str | None) -> None:
    """The timesteps and sigmas of a scheduler, as a table (and a plot)."""
    plot_path = check_writable(plot, ".png") if plot else None
    config = read_configs(resolve(model or default_model()))["scheduler"]
    check_steps(steps, config.get("num_train_timesteps"))
    sched = make_scheduler(scheduler, config)
    sched.set_timesteps(steps)
    rows = schedule_table(sched)
    click.echo(f"{'i':>3} {'t':>9} {'sigma':>9}")
    for i, t, sigma in rows:
        click.echo(f"{i:>3} {t:>9.2f} {sigma:>9.4f}")
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None and len(sigmas) > len(rows):  # where the last step lands
        click.echo(f"{'end':>3} {'':>9} {float(sigmas[-1]):>9.4f}")
    if plot_path:
        plot_schedule(rows, f"{scheduler}, {steps} steps", plot_path)
        click.echo(str(plot_path))


@click.command("noise")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@model_option
@click.option("--step", "step", type=int, required=True, help="Noise to this step index.")
@click.option("--steps", type=int, default=50, show_default=True)
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default="lms",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@guard
def noise_cmd(image: str, model: str | None, step: int, steps: int, scheduler: str, seed: int,
              out: str) -> None:
    """Encode IMAGE, `add_noise` it to a step of the schedule, decode it for viewing."""
    out_path = check_writable(out, ".png")
    folder = resolve(model or default_model())
    check_steps(steps, read_configs(folder)["scheduler"].get("num_train_timesteps"))
    picture = vae.load_image(image, factor=scale_factor(read_configs(folder)["vae"]))
    parts = load(folder)
    sched = make_scheduler(scheduler, parts.scheduler_config)
    sched.set_timesteps(steps)
    if not 0 <= step < len(sched.timesteps):
        raise SdlabError(f"--step must be in 0..{len(sched.timesteps) - 1} (got {step})")
    latents = vae.encode(parts, [picture], "mean")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    noisy = noise_to_step(sched, latents, noise.to(latents), step)
    _save_image(vae.to_pil(vae.decode(parts, noisy))[0], out_path)
    click.echo(f"step {step}: t={float(sched.timesteps[step]):.1f}; {out_path}")
