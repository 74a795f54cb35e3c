"""`sdlab` on the command line: a thin shell over the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
from tqdm.auto import tqdm

import sdlab
from sdlab.cli_common import guard as _guard
from sdlab.cli_image import noise_cmd, schedule_cmd, vae_group
from sdlab.cli_text import COMMANDS as TEXT_COMMANDS
from sdlab.cli_text import text_edit_options, text_settings
from sdlab.errors import SdlabError
from sdlab.generate import GenerateParams, check_params, generate
from sdlab.models import default_model, load, read_configs, resolve
from sdlab.outputs import check_writable, numbered, read_png_meta, recipe, save_png
from sdlab.outputs import save_latents as write_latents
from sdlab.sampler import StepRecord
from sdlab.schedule import SCHEDULERS

DEVICES = ("auto", "cpu", "cuda", "mps")


class Progress:
    """A tqdm bar over the loop's steps, as a sampler callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def begin(self, total: int) -> None:
        self.bar = tqdm(total=total, desc="denoising", unit="step", disable=not self.enabled,
                        file=sys.stderr, leave=False)

    def __call__(self, record: StepRecord) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(sdlab.__version__, prog_name="sdlab")
def main() -> None:
    """Stable Diffusion, opened up: run SD from its parts and look at every stage."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")


@main.command("generate")
@click.argument("prompt", required=False)
@click.option("--model", help="diffusers folder, cached hub id, or 'sdlab-tiny' (default).")
@click.option("--negative", default="", show_default=True, help="Negative prompt.")
@click.option("--steps", type=int, default=30, show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True,
              help="Classifier-free guidance scale (1 = no unconditional pass).")
@click.option("--seed", type=int, default=32, show_default=True,
              help="Seeds a CPU torch.Generator: the same noise on every device.")
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default="lms",
              show_default=True)
@click.option("--height", type=int, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, help="Pixels (default: the model's native size).")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Images from one generator seeded once (like num_images_per_prompt).")
@text_edit_options
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write [default: sdlab.png]; a batch writes OUT-0.png, OUT-1.png...")
@click.option("--save-latents", type=click.Path(dir_okay=False),
              help="Also save the final latents (before the VAE) to this .safetensors file.")
@click.option("--from", "from_png", type=click.Path(exists=True, dir_okay=False),
              help="Re-run the recipe stored in a PNG written by sdlab.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="fp32 on CPU/MPS, fp16 on CUDA.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_guard
def generate_cmd(prompt: str | None, model: str | None, from_png: str | None, out: str | None,
                 save_latents: str | None, device: str, quiet: bool, **settings: Any) -> None:
    """Text to image through the open loop."""
    index = None
    if from_png:
        stored = read_png_meta(from_png)
        params = _params_from(stored, from_png)
        model = model or stored["model"]
        index = stored.get("index", 0)
        out = out or str(Path(from_png).with_name(Path(from_png).stem + "-rerun.png"))
    else:
        params = GenerateParams(**text_settings(prompt, settings))
    model = model or default_model()
    check_params(params)
    out_path = check_writable(out or "sdlab.png", ".png")
    latents_path = check_writable(save_latents, ".safetensors") if save_latents else None
    folder = resolve(model)
    _check_size(params, folder)
    parts = load(model, device=device)
    result = generate(parts, params, callbacks=[Progress(not quiet)])
    model_ref = str(folder.resolve()) if Path(model).exists() else model
    meta = recipe(model_ref, folder, result.params.to_dict())
    if from_png and meta["weights_hash"] != stored.get("weights_hash"):
        logging.getLogger("sdlab").warning("the model's weights differ from the recipe's")
    if latents_path:
        write_latents(result.latents, latents_path)
    images = list(enumerate(result.images))
    if index is not None:  # a rerun of one image of a batch keeps just that image
        images = [(index, result.images[index])]
    for i, image in images:
        path = out_path if index is not None else numbered(out_path, i, params.batch)
        save_png(image, path, {**meta, "index": i})
        if not quiet:
            click.echo(str(path))


def _params_from(stored: dict[str, Any], png: str) -> GenerateParams:
    try:
        return GenerateParams(**stored["params"])
    except (KeyError, TypeError) as err:
        raise SdlabError(f"the recipe in {png} does not fit this sdlab version: {err}") from err


def _check_size(params: GenerateParams, folder: Path) -> None:
    """Check height/width against the VAE factor from the config, before loading weights."""
    vae_config = read_configs(folder)["vae"]
    check_params(params, 2 ** (len(vae_config["block_out_channels"]) - 1))


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="out", show_default=True)
@click.option("--model", help="Model to use (default: the bundled sdlab-tiny).")
@_guard
def demo_cmd(out: str, model: str | None) -> None:
    """Write a few images from the default model into OUT."""
    from sdlab.demo import run_demo

    for path, note in run_demo(Path(out), model):
        click.echo(f"{path}  {note}")


def _register_optional() -> None:
    try:
        from sdlab.tiny.cli import train_tiny
    except ImportError:
        return
    main.add_command(train_tiny)


_register_optional()
for _command in (vae_group, schedule_cmd, noise_cmd):  # sdlab.cli_image
    main.add_command(_command)
for _command in TEXT_COMMANDS:  # tokens, embed, interpolate (sdlab.cli_text)
    _command.callback = _guard(_command.callback)
    main.add_command(_command)
