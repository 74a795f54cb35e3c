"""Every call the web app makes into the library, in one place.

The views never import the pipelines, the VAE or the writers themselves: they call these
functions, so that the app follows the library's run service with one edit here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdlab import latents as latent_io
from sdlab.generate import GenerateParams, Generation, check_params, generate
from sdlab.img2img import Img2ImgParams, check_img2img, img2img, strength_for
from sdlab.models import Parts, load, resolve, weights_hash
from sdlab.outputs import numbered, recipe, save_latents, save_png
from sdlab.preview import preview_for
from sdlab.sampler import Callback, StepRecord, StopSampling
from sdlab.schedule import SCHEDULERS, make_scheduler, noise_to_step, schedule_table
from sdlab.surgery import load_embedding
from sdlab.text import TokenRow, token_rows
from sdlab.trace import (
    VIDEO_DECODERS,
    VideoFrames,
    decoder_for,
    progression_frame,
    save_trace,
    to_trace,
    write_video,
)

__all__ = [
    "SCHEDULERS", "VIDEO_DECODERS", "GenerateParams", "Img2ImgParams", "Parts", "StepRecord",
    "StopSampling", "RunOutputs", "load_model", "make_params", "run", "frame",
    "preview_image", "tokens", "check_embedding", "vae_roundtrip", "schedule_rows",
    "noised_to_step", "load_picture", "strength_for", "weights_hash",
]


@dataclass
class RunOutputs:
    """A finished (or stopped) run and the files written for it."""

    generation: Generation
    pngs: list[Path]  # each carries the recipe (`sdlab generate --from` re-runs it)
    latents: Path
    video: Path | None = None
    trace: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_model(model: str) -> tuple[Parts, str]:
    """The loaded parts and the name a recipe stores for them."""
    folder = resolve(model)
    ref = str(folder.resolve()) if Path(model).exists() else model
    return load(model), ref


def make_params(image: str | None = None, **settings: Any) -> GenerateParams:
    """Checked settings of a text-to-image run, or of an image-to-image run from `image`."""
    params = (Img2ImgParams(image=image, **settings) if image
              else GenerateParams(**settings))
    check_params(params)
    if isinstance(params, Img2ImgParams):
        check_img2img(params)
    return params


def run(parts: Parts, model_ref: str, params: GenerateParams, folder: Path,
        callbacks: Sequence[Callback] = (), video: bool = False, trace: bool = False
        ) -> RunOutputs:
    """Run the recipe and write its outputs into `folder`: PNG(s) with the recipe, the final
    latents, and on request the progression video and the trace."""
    frames = VideoFrames(decoder_for(parts, "approx")) if video else None
    every = [*callbacks, *([frames] if frames else [])]
    if isinstance(params, Img2ImgParams):
        picture = load_picture(params.image, parts)
        result = img2img(parts, params, picture, every, keep_records=True)
    else:
        result = generate(parts, params, every, keep_records=True)
    meta = recipe(model_ref, resolve(model_ref), result.params.to_dict())
    pngs = [save_png(image, numbered(folder / "sdlab.png", i, len(result.images)),
                     {**meta, "index": i}) for i, image in enumerate(result.images)]
    outputs = RunOutputs(result, pngs, save_latents(result.latents, folder / "latents.safetensors"),
                         meta=meta)
    if frames is not None and frames.frames:
        outputs.video = write_video(frames.frames, folder / "progression.mp4")
    if trace and result.records:
        outputs.trace = save_trace(to_trace(result.records, {**meta, "losses": result.losses}),
                                   folder / "trace.safetensors")
    return outputs


def load_picture(path: str, parts: Parts) -> Image.Image:
    """An uploaded image at the model's native size."""
    size = parts.native_size
    return latent_io.load_image(path, (size, size), parts.vae_scale_factor)


def frame(parts: Parts, record: StepRecord, decoder: str) -> Image.Image:
    """latents | predicted x0 of one step, through the linear preview or the full VAE."""
    return progression_frame(decoder_for(parts, decoder), record)


def preview_image(parts: Parts, x0_pred: torch.Tensor) -> Image.Image:
    """The cheap linear preview of the first image's predicted x0."""
    with torch.no_grad():
        return latent_io.to_pil(preview_for(parts)(x0_pred[:1]))[0]


def tokens(parts: Parts, prompt: str) -> list[TokenRow]:
    return token_rows(parts.tokenizer, prompt)


def check_embedding(path: str) -> str:
    """The token a textual-inversion file stands for (pickled code is refused, unrun)."""
    return load_embedding(path).token


def vae_roundtrip(parts: Parts, picture: Image.Image) -> tuple[Image.Image, Image.Image, float,
                                                                float]:
    """(the 4 latent channels, the reconstruction, PSNR in dB, compression factor)."""
    result = latent_io.roundtrip(parts, picture)
    return (latent_io.channels_picture(result.latents), result.reconstruction, result.psnr,
            result.compression)


def schedule_rows(parts: Parts, scheduler: str, steps: int) -> list[tuple[int, float, float]]:
    sched = make_scheduler(scheduler, parts.scheduler_config)
    sched.set_timesteps(steps)
    return schedule_table(sched)


def noised_to_step(parts: Parts, picture: Image.Image, scheduler: str, steps: int, step: int,
                   seed: int) -> Image.Image:
    """The image encoded, noised with `add_noise` to step `step`, decoded for viewing."""
    sched = make_scheduler(scheduler, parts.scheduler_config)
    sched.set_timesteps(steps)
    latents = latent_io.encode(parts, [picture], "mean")
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    noisy = noise_to_step(sched, latents, noise.to(latents), step)
    return latent_io.to_pil(latent_io.decode(parts, noisy))[0]
