"""`sdlab` on the command line: a thin shell over the library."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from tqdm.auto import tqdm

import sdlab
from sdlab.cli_attention import attention_cmd
from sdlab.cli_bench import bench_cmd
from sdlab.cli_common import guard as _guard
from sdlab.cli_common import quiet_libraries
from sdlab.cli_image import noise_cmd, schedule_cmd, vae_group
from sdlab.cli_run import run_options, trace_group
from sdlab.cli_serve import serve_cmd
from sdlab.cli_sweep import sweep_cmd
from sdlab.cli_text import COMMANDS as TEXT_COMMANDS
from sdlab.cli_text import text_settings
from sdlab.errors import SdlabError
from sdlab.models import default_model, load, resolve
from sdlab.outputs import read_png_meta
from sdlab.recipe import (
    GenerateParams,
    Img2ImgParams,
    defaults,
    params_from_dict,
    parse,
    strength_for,
)
from sdlab.run import Outputs, check_for_model, check_outputs, execute
from sdlab.sampler import StepRecord


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
    quiet_libraries()


@main.command("generate")
@click.argument("prompt", required=False)
@click.option("--height", type=int, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, help="Pixels (default: the model's native size).")
@click.option("--from", "from_png", type=click.Path(exists=True, dir_okay=False),
              help="Re-run the recipe stored in a PNG written by sdlab; options given too "
                   "replace the recipe's (e.g. --from a.png --seed 5).")
@run_options
@_guard
def generate_cmd(prompt: str | None, from_png: str | None, **options: Any) -> None:
    """Text to image through the open loop."""
    outputs = {k: options.pop(k) for k in RUN_OUTPUTS}
    if from_png:
        _rerun(from_png, prompt, options, outputs)
        return
    _execute(GenerateParams(**text_settings(prompt, options)), **outputs)


@main.command("img2img")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.argument("prompt", required=False)
@click.option("--strength", type=float, default=None,
              help="How much of the schedule to run, 0..1 (diffusers' way) "
                   f"[default: {defaults(Img2ImgParams)['strength']}].")
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
    outputs = {k: options.pop(k) for k in RUN_OUTPUTS}
    if strength is not None and start_step is not None:
        raise SdlabError("give --strength or --start-step, not both (they are one setting)")
    if start_step is not None:
        strength = strength_for(start_step, options["steps"])
    if strength is None:
        strength = defaults(Img2ImgParams)["strength"]
    params = Img2ImgParams(**text_settings(prompt, options), image=str(Path(image).resolve()),
                           strength=strength)
    _execute(params, **outputs)


RUN_OUTPUTS = ("model", "out", "save_latents", "device", "quiet", "video", "video_decoder",
               "trace", "attention")


def _rerun(png: str, prompt: str | None, options: dict[str, Any],
           outputs: dict[str, Any]) -> None:
    """`--from PNG`: the stored recipe, with the options given on the command line over it."""
    stored = read_png_meta(png)
    if not isinstance(stored, dict):
        raise SdlabError(f"the sdlab metadata in {png} is not a recipe")
    params = params_from_dict(stored.get("params"), f"the recipe in {png}")
    ctx = click.get_current_context()
    given = {name: value for name, value in options.items()  # DEFAULT_MAP: --fast's values
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                                   ParameterSource.ENVIRONMENT,
                                                   ParameterSource.DEFAULT_MAP)}
    text = text_settings(prompt, given) if prompt is not None or "mix" in given else {}
    text_given = {"prompt", "mix", *(["embedding"] if "embedding" in given else [])}
    given.update({k: v for k, v in text.items() if k in text_given})
    params = replace(params, **given)
    index = _stored_index(stored, params, png)
    model = outputs["model"] or stored.get("model")
    if not isinstance(model, str) or not model:
        raise SdlabError(f"the recipe in {png} names no model: give --model")
    out = outputs["out"] or str(Path(png).with_name(Path(png).stem + "-rerun.png"))
    _execute(params, **{**outputs, "model": model, "out": out}, index=index,
             stored_hash=stored.get("weights_hash"))


def _stored_index(stored: dict[str, Any], params: GenerateParams, png: str) -> int:
    index = stored.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < params.batch:
        raise SdlabError(f"the recipe in {png} has image index {index!r}, outside its batch "
                         f"of {params.batch}")
    return index


def _execute(params: GenerateParams, model: str | None, out: str | None,
             save_latents: str | None, device: str, quiet: bool, video: str | None,
             video_decoder: str, trace: str | None, attention: str | None,
             index: int | None = None, stored_hash: str | None = None) -> None:
    """Check everything, load, run through the run service, say what was written."""
    recipe = parse(params)
    outputs = check_outputs(Outputs(Path(out or "sdlab.png"), _path(save_latents),
                                    _path(video), video_decoder, _path(trace),
                                    _path(attention), index))
    model = model or default_model()
    folder = resolve(model)
    check_for_model(recipe, folder)
    parts = load(model, device=device)
    model_ref = str(folder.resolve()) if Path(model).exists() else model
    done = execute(parts, recipe, outputs, [Progress(not quiet)], model_ref=model_ref)
    if stored_hash is not None and done.meta["weights_hash"] != stored_hash:
        logging.getLogger("sdlab").warning("the model's weights differ from the recipe's")
    if not quiet:
        click.echo("\n".join(str(p) for p in done.written))


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@main.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default="out", show_default=True)
@click.option("--model", help="Model to use (default: the bundled sdlab-tiny).")
@_guard
def demo_cmd(out: str, model: str | None) -> None:
    """Write a few images from the default model into OUT."""
    from sdlab.demo import run_demo

    for path, note in run_demo(Path(out), model):
        click.echo(f"{path}  {note}")


main.add_command(bench_cmd)
main.add_command(sweep_cmd)
main.add_command(attention_cmd)
main.add_command(serve_cmd)
for _command in (vae_group, schedule_cmd, noise_cmd, trace_group):  # cli_image, cli_run
    main.add_command(_command)
for _command in TEXT_COMMANDS:  # tokens, embed, interpolate (sdlab.cli_text)
    _command.callback = _guard(_command.callback)
    main.add_command(_command)
