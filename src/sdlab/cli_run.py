"""Options that `generate` and `img2img` share (the recipe's settings, guides, outputs; the
defaults are the recipe's own), and `sdlab trace show`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import torch

from sdlab import vae
from sdlab.attention import attention_frames
from sdlab.cache import FAST
from sdlab.cli_common import DEVICES, guard, model_option
from sdlab.cli_text import text_edit_options
from sdlab.errors import SdlabError
from sdlab.models import default_model, load
from sdlab.outputs import atomic_write, check_writable, make_folder
from sdlab.preview import DECODERS, decoder_for
from sdlab.recipe import defaults
from sdlab.schedule import SCHEDULERS
from sdlab.trace import load_trace, progression_frame, write_video
from sdlab.viz import trace_plots

DEFAULTS = defaults()
FAST_HELP = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in FAST.items())


def _fast_preset(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--fast: the preset's values become the defaults of the options it sets, so the
    recipe records them (and options given on the command line still win)."""
    if value:
        ctx.default_map = {**(ctx.default_map or {}), **FAST}


def _apply(fn: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Everything of a run but the prompt, size and input image."""
    fn = _apply(fn, [
        click.option("--guide", multiple=True, metavar="NAME:SCALE",
                     help='Guidance by a loss on the predicted image: blue:200, contrast:50, '
                          'color:red:100, clip:"a green star":50 (repeatable).'),
        click.option("--guide-every", type=int, default=DEFAULTS["guide_every"],
                     show_default=True,
                     help="Apply the guides every N steps."),
        click.option("--guide-decoder", type=click.Choice(DECODERS),
                     default=DEFAULTS["guide_decoder"],
                     show_default=True,
                     help="The loss sees the full VAE decode or the cheap linear preview."),
        click.option("--clip-model", help="CLIP for clip: guides (default: the model's own)."),
        click.option("--cfg-until", type=float, default=DEFAULTS["cfg_until"],
                     show_default=True,
                     help="Guidance truncation: the share of the steps that run the "
                          "unconditional pass; after it, guidance 1 (one UNet batch)."),
        click.option("--cache-interval", type=int, default=DEFAULTS["cache_interval"],
                     show_default=True,
                     help="Step caching: the full UNet every N evaluations, its shallow "
                          "path only between (1 = off)."),
        click.option("--cache-branch", type=int, default=DEFAULTS["cache_branch"],
                     show_default=True,
                     help="Step caching: the skip connection the deep features are kept at "
                          "(0 = the shallowest, fastest)."),
        click.option("--fast", is_flag=True, is_eager=True, expose_value=False,
                     callback=_fast_preset,
                     help="The speed preset: " + FAST_HELP + " (options given override it)."),
        click.option("--video", type=click.Path(dir_okay=False),
                     help="MP4 of the progression: latents | predicted x0, one frame a step."),
        click.option("--video-decoder", type=click.Choice(DECODERS), default="approx",
                     show_default=True, help="Frames from the linear preview or the full VAE."),
        click.option("--trace", type=click.Path(dir_okay=False),
                     help="Save every step's record and cross-attention maps (.safetensors; "
                          "JSON facts in its header)."),
        click.option("--attention", type=click.Path(dir_okay=False),
                     help="PNG of where each word acts: the image, then one cross-attention "
                          "overlay per token (summed over the steps)."),
        click.option("--out", type=click.Path(dir_okay=False), default=None,
                     help="PNG to write [default: sdlab.png]; a batch writes OUT-0.png, ..."),
        click.option("--save-latents", type=click.Path(dir_okay=False),
                     help="Also save the final latents (before the VAE) to .safetensors."),
        click.option("--device", type=click.Choice(DEVICES), default="auto",
                     show_default=True, help="fp32 on CPU/MPS, fp16 on CUDA."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ])
    fn = text_edit_options(fn)
    return _apply(fn, [
        model_option,
        click.option("--negative", default=DEFAULTS["negative"], show_default=True,
                     help="Negative prompt."),
        click.option("--steps", type=int, default=DEFAULTS["steps"], show_default=True),
        click.option("--guidance", type=float, default=DEFAULTS["guidance"], show_default=True,
                     help="Classifier-free guidance scale (1 = no unconditional pass)."),
        click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True,
                     help="Seeds a CPU torch.Generator: the same noise on every device."),
        click.option("--scheduler", type=click.Choice(list(SCHEDULERS)),
                     default=DEFAULTS["scheduler"], show_default=True),
        click.option("--batch", type=int, default=DEFAULTS["batch"], show_default=True,
                     help="Images from one generator seeded once (like num_images_per_prompt)."),
    ])


@click.group("trace")
def trace_group() -> None:
    """Traces: every step of a run, saved with --trace."""


@trace_group.command("show")
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for the frames and plots.")
@click.option("--model", help="Model for decoding (default: the one the trace names).")
@click.option("--decoder", type=click.Choice(DECODERS), default="approx",
              show_default=True)
@click.option("--video", type=click.Path(dir_okay=False), help="Also write the frames as MP4.")
@guard
def trace_show(trace_file: str, out: str, model: str | None, decoder: str,
               video: str | None) -> None:
    """Frames (latents | predicted x0 per step) and plots from a saved trace."""
    video_path = check_writable(video, ".mp4") if video else None
    trace = load_trace(trace_file)
    folder = make_folder(out)
    parts = load(str(model or trace.meta.get("model") or default_model()))
    decode = decoder_for(parts, decoder)
    with torch.no_grad():
        frames = [progression_frame(decode, trace.record(k)) for k in range(trace.steps)]
    written = [atomic_write(folder / f"frame-{k:03d}.png",
                            lambda tmp, f=frame: f.save(tmp, format="PNG"))
               for k, frame in enumerate(frames)]
    written += trace_plots(trace, folder)
    if video_path:
        written.append(write_video(frames, video_path))
    if "attention" in trace.tensors:  # where each word acts, step by step, beside the x0
        with torch.no_grad():
            x0 = [vae.to_pil(decode(trace.record(k).x0_pred[:1]))[0]
                  for k in range(trace.steps)]
        labels = trace.meta.get("attention_tokens")
        if not isinstance(labels, list) or not all(isinstance(t, str) for t in labels):
            raise SdlabError(f"{trace_file} has attention maps but no token strings: it is "
                             "damaged")
        pictures = attention_frames(x0, trace.tensors["attention"], labels)
        written.append(write_video(pictures, folder / "attention.mp4", fps=4))
    click.echo("\n".join(str(p) for p in written))
