"""The run service: a parsed recipe in, its outputs out -- the PNGs that carry the recipe,
the final latents, the progression video and the trace. The command line, the web app and
sweeps all run recipes through here, so a recipe means the same thing everywhere.

Outputs are checked before any work and written after the run, the images first (a full
disk loses the extras, never the picture), each through a temporary file and a rename.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from sdlab.attention import AttentionRecorder, maps_picture
from sdlab.errors import SdlabError
from sdlab.generate import Generation, Run, prepare
from sdlab.img2img import prepare_img2img
from sdlab.limits import Limits, check_pixels, check_steps
from sdlab.models import Parts, read_configs, scale_factor
from sdlab.outputs import (
    atomic_write,
    check_writable,
    numbered,
    recipe_meta,
    save_latents,
    save_png,
)
from sdlab.preview import DECODERS, decoder_for
from sdlab.recipe import Img2ImgParams, Recipe
from sdlab.sampler import Callback, StepRecord
from sdlab.trace import Trace, VideoFrames, save_trace, to_trace, write_video
from sdlab.vae import load_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    """Where a run's results go; None: not wanted."""

    image: Path | None = None  # PNG; a batch writes IMAGE-0.png, IMAGE-1.png, ...
    latents: Path | None = None  # .safetensors, key `latents`
    video: Path | None = None  # .mp4 of the progression (latents | predicted x0)
    video_decoder: str = "approx"
    trace: Path | None = None  # .safetensors of every step's record (and attention maps)
    attention: Path | None = None  # PNG: the image and one overlay per token
    index: int | None = None  # write only this image of the batch (a `--from` re-run)


def check_outputs(outputs: Outputs) -> Outputs:
    """Every output writable and of the right kind, before any work."""
    if outputs.video_decoder not in DECODERS:
        raise SdlabError(f"--video-decoder must be one of {', '.join(DECODERS)}")
    checks = {"image": ".png", "latents": ".safetensors", "video": ".mp4",
              "trace": ".safetensors", "attention": ".png"}
    paths = {name: check_writable(getattr(outputs, name), suffix)
             for name, suffix in checks.items() if getattr(outputs, name) is not None}
    return replace(outputs, **paths)


def check_for_model(recipe: Recipe, folder: Path, limits: Limits | None = None) -> None:
    """The recipe against the model's configs, before any weights are read: the image size
    a multiple of the VAE factor, the steps within the scheduler's training steps."""
    configs = read_configs(folder)
    try:
        factor = scale_factor(configs["vae"])
        native = int(configs["unet"].get("sample_size", 64)) * factor
        train_steps = int(configs["scheduler"].get("num_train_timesteps", 1000))
    except (KeyError, TypeError, ValueError) as err:
        raise SdlabError(f"the configs in {folder} are damaged ({err}): re-copy the model "
                         "folder") from err
    p = recipe.params
    for name, value in (("height", p.height), ("width", p.width)):
        if value is not None and (value < factor or value % factor):
            nearest = max(1, round(value / factor)) * factor
            raise SdlabError(f"--{name} {value} is not a positive multiple of the VAE factor "
                             f"{factor} (try {nearest})")
    check_pixels(p.height or native, p.width or native, p.batch, limits)
    check_steps(p.steps, train_steps, limits)


@dataclass
class Execution:
    """A finished run: its result, the recipe stored with it, the files written."""

    generation: Generation
    meta: dict[str, Any]
    records: list[StepRecord] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    attention: AttentionRecorder | None = None  # the cross-attention maps, when recorded


def start(parts: Parts, recipe: Recipe) -> Run:
    """The run of a recipe: text to image, or image to image when it names an image."""
    if isinstance(recipe.params, Img2ImgParams):
        p = recipe.params
        size = (p.width, p.height) if p.width and p.height else None
        return prepare_img2img(parts, recipe, load_image(p.image, size, parts.vae_scale_factor))
    return prepare(parts, recipe)


def execute(parts: Parts, recipe: Recipe, outputs: Outputs = Outputs(),  # noqa: B008
            callbacks: Sequence[Callback] = (), keep_records: bool = False,
            model_ref: str | None = None, attention: bool = False) -> Execution:
    """Run a recipe and write its outputs. Records are kept when a trace is asked for (or
    `keep_records`); cross-attention is recorded for an attention picture, a trace (each
    step's maps) or `attention` (each step's maps, for the caller). `model_ref` is the model
    name the PNGs store (default: the parts')."""
    run = start(parts, recipe)
    frames = VideoFrames(decoder_for(parts, outputs.video_decoder)) if outputs.video else None
    per_step = attention or outputs.trace is not None
    recorder = (AttentionRecorder.for_run(parts, recipe, per_step=per_step)
                if per_step or outputs.attention else None)
    extra = [c for c in (recorder, frames) if c is not None]
    records: list[StepRecord] = []
    keep = keep_records or outputs.trace is not None
    last = None
    for last in run.steps([*callbacks, *extra]):
        if keep:
            records.append(last)
    generation = run.finish(parts, last)
    meta = recipe_meta(model_ref or parts.model_id, parts.folder, generation.params.to_dict())
    done = Execution(generation, meta, records, attention=recorder)
    done.written = write(done, outputs, frames.frames if frames else [])
    return done


def write(done: Execution, outputs: Outputs, frames: list[Image.Image]) -> list[Path]:
    """The images first, then the attention picture, the latents, the video, the trace."""
    written = []
    images = done.generation.images
    if outputs.image is not None:
        chosen = [outputs.index] if outputs.index is not None else range(len(images))
        for i in chosen:
            path = outputs.image if outputs.index is not None else numbered(
                outputs.image, i, len(images))
            written.append(save_png(images[i], path, {**done.meta, "index": i}))
    recorder = done.attention
    if outputs.attention is not None and recorder is not None:
        sheet = maps_picture(images[0], recorder.maps(), recorder.tokens.labels)
        written.append(atomic_write(outputs.attention,
                                    lambda tmp: sheet.save(tmp, format="PNG")))
    if outputs.latents is not None:
        written.append(save_latents(done.generation.latents, outputs.latents))
    if outputs.video is not None:
        written.append(write_video(frames, outputs.video))
    if outputs.trace is not None:
        written.append(save_trace(_trace_of(done), outputs.trace))
    return written


def _trace_of(done: Execution) -> Trace:
    """The records, the recipe and loss curves, and each step's attention maps (tokens in
    prompt order, the padding summed last; their strings under `attention_tokens`)."""
    trace = to_trace(done.records, {**done.meta, "losses": done.generation.losses})
    recorder = done.attention
    if recorder is not None and done.records:
        steps = [r.i for r in done.records]
        maps = recorder.step_maps()
        kept = [recorder.step_indices.index(i) for i in steps]  # a stopped step is dropped
        trace.tensors["attention"] = maps[kept]  # (steps, tokens, h, w)
        trace.meta["attention_tokens"] = list(recorder.tokens.labels)
    return trace
