"""Options and outputs that `generate` and `img2img` share: the recipe's settings, guides,
and the progression outputs (video, trace)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sdlab.cli_common import DEVICES, guard, model_option
from sdlab.cli_text import text_edit_options
from sdlab.generate import Generation
from sdlab.models import Parts, default_model, load
from sdlab.outputs import atomic_write, check_writable
from sdlab.schedule import SCHEDULERS
from sdlab.trace import (
    VIDEO_DECODERS,
    VideoFrames,
    decoder_for,
    load_trace,
    progression_frame,
    save_trace,
    to_trace,
    write_video,
)
from sdlab.viz import trace_plots


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
        click.option("--guide-every", type=int, default=5, show_default=True,
                     help="Apply the guides every N steps."),
        click.option("--guide-decoder", type=click.Choice(VIDEO_DECODERS), default="full",
                     show_default=True,
                     help="The loss sees the full VAE decode or the cheap linear preview."),
        click.option("--clip-model", help="CLIP for clip: guides (default: the model's own)."),
        click.option("--video", type=click.Path(dir_okay=False),
                     help="MP4 of the progression: latents | predicted x0, one frame a step."),
        click.option("--video-decoder", type=click.Choice(VIDEO_DECODERS), default="approx",
                     show_default=True, help="Frames from the linear preview or the full VAE."),
        click.option("--trace", type=click.Path(dir_okay=False),
                     help="Save every step's record (.safetensors; JSON facts in its header)."),
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
        click.option("--negative", default="", show_default=True, help="Negative prompt."),
        click.option("--steps", type=int, default=30, show_default=True),
        click.option("--guidance", type=float, default=7.5, show_default=True,
                     help="Classifier-free guidance scale (1 = no unconditional pass)."),
        click.option("--seed", type=int, default=32, show_default=True,
                     help="Seeds a CPU torch.Generator: the same noise on every device."),
        click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default="lms",
                     show_default=True),
        click.option("--batch", type=int, default=1, show_default=True,
                     help="Images from one generator seeded once (like num_images_per_prompt)."),
    ])


class Progression:
    """The video and trace a run may write, checked before the run and written after."""

    def __init__(self, video: str | None, video_decoder: str, trace: str | None) -> None:
        self.video = check_writable(video, ".mp4") if video else None
        self.trace = check_writable(trace, ".safetensors") if trace else None
        self.video_decoder = video_decoder
        self.frames: VideoFrames | None = None

    @property
    def keep_records(self) -> bool:
        return self.trace is not None

    def callbacks(self, parts: Parts) -> list[Any]:
        if self.video is None:
            return []
        self.frames = VideoFrames(decoder_for(parts, self.video_decoder))
        return [self.frames]

    def write(self, result: Generation, meta: dict[str, Any]) -> list[Path]:
        written = []
        if self.video and self.frames is not None:
            written.append(write_video(self.frames.frames, self.video))
        if self.trace:
            trace = to_trace(result.records, {**meta, "losses": result.losses})
            written.append(save_trace(trace, self.trace))
        return written


@click.group("trace")
def trace_group() -> None:
    """Traces: every step of a run, saved with --trace."""


@trace_group.command("show")
@click.argument("trace_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for the frames and plots.")
@click.option("--model", help="Model for decoding (default: the one the trace names).")
@click.option("--decoder", type=click.Choice(VIDEO_DECODERS), default="approx",
              show_default=True)
@click.option("--video", type=click.Path(dir_okay=False), help="Also write the frames as MP4.")
@guard
def trace_show(trace_file: str, out: str, model: str | None, decoder: str,
               video: str | None) -> None:
    """Frames (latents | predicted x0 per step) and plots from a saved trace."""
    video_path = check_writable(video, ".mp4") if video else None
    trace = load_trace(trace_file)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    parts = load(model or trace.meta.get("model") or default_model())
    decode = decoder_for(parts, decoder)
    frames = [progression_frame(decode, trace.record(k)) for k in range(trace.steps)]
    written = [atomic_write(folder / f"frame-{k:03d}.png",
                            lambda tmp, f=frame: f.save(tmp, format="PNG"))
               for k, frame in enumerate(frames)]
    written += trace_plots(trace, folder)
    if video_path:
        written.append(write_video(frames, video_path))
    click.echo("\n".join(str(p) for p in written))
