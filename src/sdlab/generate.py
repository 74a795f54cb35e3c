"""Text to image: prompt, seed and settings in; final latents and images out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from sdlab import latents as latent_io
from sdlab.errors import SdlabError
from sdlab.models import Parts
from sdlab.sampler import Callback, StepRecord, denoise, initial_noise
from sdlab.schedule import DEFAULT_SCHEDULER, check_name, make_scheduler
from sdlab.surgery import TextEdits, check_text, conditioning


@dataclass(frozen=True)
class GenerateParams:
    """Everything that decides a text-to-image run (with the model's weights)."""

    prompt: str
    negative: str = ""
    steps: int = 30
    guidance: float = 7.5
    seed: int = 32
    scheduler: str = DEFAULT_SCHEDULER
    height: int | None = None  # None: the model's native size
    width: int | None = None
    batch: int = 1
    # text edits (sdlab.surgery): swaps "WORD=WORD", a mix "PROMPT:W" (then prompt is ""),
    # textual-inversion files and the prompt words they replace ("" = the file's own)
    swap: tuple[str, ...] = ()
    mix: tuple[str, ...] = ()
    embedding: tuple[str, ...] = ()
    token: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # a JSON recipe gives lists: keep tuples
        for name in ("swap", "mix", "embedding", "token"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_params(params: GenerateParams, vae_scale_factor: int | None = None) -> None:
    """Raise a one-line SdlabError for settings that cannot run."""
    if params.steps < 1:
        raise SdlabError(f"--steps must be at least 1 (got {params.steps})")
    if params.guidance < 0:
        raise SdlabError(f"--guidance must be 0 or more (got {params.guidance})")
    if params.batch < 1:
        raise SdlabError(f"--batch must be at least 1 (got {params.batch})")
    check_name(params.scheduler)
    check_text(params.prompt, TextEdits.of(params))
    for name in ("height", "width"):
        value = getattr(params, name)
        if value is None or vae_scale_factor is None:
            continue
        if value < vae_scale_factor or value % vae_scale_factor:
            nearest = max(1, round(value / vae_scale_factor)) * vae_scale_factor
            raise SdlabError(f"--{name} {value} is not a positive multiple of the VAE factor "
                             f"{vae_scale_factor} (try {nearest})")


@dataclass
class Generation:
    params: GenerateParams  # as run: height and width filled in
    latents: torch.Tensor  # (N, 4, H/8, W/8), final, before the VAE
    images: list[Image.Image]
    records: list[StepRecord]


def generate(parts: Parts, params: GenerateParams, callbacks: Sequence[Callback] = (),
             keep_records: bool = False) -> Generation:
    """The deep dive's loop: text states, seeded noise, the denoising steps, VAE decode."""
    check_params(params, parts.vae_scale_factor)
    params = replace(params, height=params.height or parts.native_size,
                     width=params.width or parts.native_size)
    cond, scheduler, generator = prepare(parts, params)
    shape = (params.batch, parts.unet.config.in_channels,
             params.height // parts.vae_scale_factor, params.width // parts.vae_scale_factor)
    latents = initial_noise(shape, generator, parts.device, parts.dtype)
    latents = latents * scheduler.init_noise_sigma
    return run(parts, params, scheduler, latents, cond, generator, callbacks, keep_records)


def prepare(parts: Parts, params: GenerateParams
            ) -> tuple[torch.Tensor, SchedulerMixin, torch.Generator]:
    """Encoder states, a scheduler set to the run's steps, and the run's seeded generator."""
    cond = conditioning(parts, params.prompt, params.negative, params.batch, params.guidance,
                        TextEdits.of(params))
    scheduler = make_scheduler(params.scheduler, parts.scheduler_config)
    scheduler.set_timesteps(params.steps, device=parts.device)
    generator = torch.Generator("cpu").manual_seed(params.seed)
    return cond, scheduler, generator


def run(parts: Parts, params: GenerateParams, scheduler: SchedulerMixin, latents: torch.Tensor,
        cond: torch.Tensor, generator: torch.Generator, callbacks: Sequence[Callback],
        keep_records: bool, start: int = 0) -> Generation:
    """The denoising loop from step index `start`, then the VAE decode."""
    records = []
    for record in denoise(parts.unet, scheduler, latents, cond, params.guidance,
                          prediction_type=parts.prediction_type, generator=generator,
                          callbacks=callbacks, start=start):
        latents = record.next_latents
        if keep_records:
            records.append(record)
    images = latent_io.to_pil(latent_io.decode(parts, latents))
    return Generation(params, latents, images, records)
