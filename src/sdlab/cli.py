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
from sdlab.cli_run import Progression, run_options, trace_group
from sdlab.cli_text import COMMANDS as TEXT_COMMANDS
from sdlab.cli_text import text_settings
from sdlab.errors import SdlabError
from sdlab.generate import GenerateParams, check_params, generate
from sdlab.img2img import Img2ImgParams, check_img2img, img2img, strength_for
from sdlab.latents import load_image
from sdlab.models import default_model, folder_scale_factor, load, resolve
from sdlab.outputs import check_writable, numbered, read_png_meta, recipe, save_png
from sdlab.outputs import save_latents as write_latents
from sdlab.sampler import StepRecord
from sdlab.tiny.cli import train_tiny


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
@click.option("--height", type=int, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, help="Pixels (default: the model's native size).")
@click.option("--from", "from_png", type=click.Path(exists=True, dir_okay=False),
              help="Re-run the recipe stored in a PNG written by sdlab.")
@run_options
@_guard
def generate_cmd(prompt: str | None, from_png: str | None, **options: Any) -> None:
    """Text to image through the open loop."""
    run_settings = {k: options.pop(k) for k in RUN_OUTPUTS}
    if from_png:
        stored = read_png_meta(from_png)
        _execute(_params_from(stored, from_png), stored=stored, **{
            **run_settings, "model": run_settings["model"] or stored["model"],
            "out": run_settings["out"] or str(Path(from_png).with_name(
                Path(from_png).stem + "-rerun.png"))})
        return
    _execute(GenerateParams(**text_settings(prompt, options)), **run_settings)


@main.command("img2img")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("prompt", required=False)
@click.option("--strength", type=float, default=None,
              help="How much of the schedule to run, 0..1 (diffusers' way) [default: 0.8].")
@click.option("--start-step", type=int, default=None,
              help="Start the loop at this step (the deep dive's way): strength "
                   "(steps - k) / steps.")
@click.option("--height", type=int, help="Resize the image (default: its size, rounded "
                                         "down to the VAE factor).")
@click.option("--width", type=int)
@run_options
@_guard
def img2img_cmd(image: str, prompt: str | None, strength: float | None,
                start_step: int | None, **options: Any) -> None:
    """Image to image: IMAGE noised to a start step, then denoised towards PROMPT."""
    run_settings = {k: options.pop(k) for k in RUN_OUTPUTS}
    if strength is not None and start_step is not None:
        raise SdlabError("give --strength or --start-step, not both (they are one setting)")
    if start_step is not None:
        strength = strength_for(start_step, options["steps"])
    params = Img2ImgParams(**text_settings(prompt, options), image=str(Path(image).resolve()),
                           strength=0.8 if strength is None else strength)
    _execute(params, **run_settings)


RUN_OUTPUTS = ("model", "out", "save_latents", "device", "quiet", "video", "video_decoder",
               "trace")


def _execute(params: GenerateParams, model: str | None, out: str | None,
             save_latents: str | None, device: str, quiet: bool, video: str | None,
             video_decoder: str, trace: str | None, stored: dict[str, Any] | None = None
             ) -> None:
    """Check everything, load, run (text or image to image), write the outputs."""
    model = model or default_model()
    check_params(params)
    if isinstance(params, Img2ImgParams):
        check_img2img(params)
    out_path = check_writable(out or "sdlab.png", ".png")
    latents_path = check_writable(save_latents, ".safetensors") if save_latents else None
    progression = Progression(video, video_decoder, trace)
    folder = resolve(model)
    factor = _check_size(params, folder)
    parts = load(model, device=device)
    callbacks = [Progress(not quiet), *progression.callbacks(parts)]
    if isinstance(params, Img2ImgParams):
        size = (params.width, params.height) if params.width and params.height else None
        picture = load_image(params.image, size, factor)
        result = img2img(parts, params, picture, callbacks, progression.keep_records)
    else:
        result = generate(parts, params, callbacks, progression.keep_records)
    model_ref = str(folder.resolve()) if Path(model).exists() else model
    meta = recipe(model_ref, folder, result.params.to_dict())
    if stored and meta["weights_hash"] != stored.get("weights_hash"):
        logging.getLogger("sdlab").warning("the model's weights differ from the recipe's")
    written = [write_latents(result.latents, latents_path)] if latents_path else []
    written += progression.write(result, meta)
    index = stored.get("index", 0) if stored else None
    # a rerun of one image of a batch keeps just that image
    images = [(index, result.images[index])] if index is not None else enumerate(result.images)
    for i, image in images:
        path = out_path if index is not None else numbered(out_path, i, params.batch)
        written.append(save_png(image, path, {**meta, "index": i}))
    if not quiet:
        click.echo("\n".join(str(p) for p in written))


def _params_from(stored: dict[str, Any], png: str) -> GenerateParams:
    params = stored.get("params", {})
    cls = Img2ImgParams if "image" in params else GenerateParams
    try:
        return cls(**params)
    except TypeError as err:
        raise SdlabError(f"the recipe in {png} does not fit this sdlab version: {err}") from err


def _check_size(params: GenerateParams, folder: Path) -> int:
    """Check height/width against the VAE factor from the config, before loading weights."""
    factor = folder_scale_factor(folder)
    check_params(params, factor)
    return factor


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="out", show_default=True)
@click.option("--model", help="Model to use (default: the bundled sdlab-tiny).")
@_guard
def demo_cmd(out: str, model: str | None) -> None:
    """Write a few images from the default model into OUT."""
    from sdlab.demo import run_demo

    for path, note in run_demo(Path(out), model):
        click.echo(f"{path}  {note}")


main.add_command(train_tiny)
for _command in (vae_group, schedule_cmd, noise_cmd, trace_group):  # cli_image, cli_run
    main.add_command(_command)
for _command in TEXT_COMMANDS:  # tokens, embed, interpolate (sdlab.cli_text)
    _command.callback = _guard(_command.callback)
    main.add_command(_command)
