"""Text to image: prompt, seed and settings in; final latents and images out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from PIL import Image

from sdlab import latents as latent_io
from sdlab.errors import SdlabError
from sdlab.models import Parts
from sdlab.sampler import Callback, StepRecord, denoise, initial_noise
from sdlab.schedule import DEFAULT_SCHEDULER, check_name, make_scheduler
from sdlab.text import conditioning


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
    height = params.height or parts.native_size
    width = params.width or parts.native_size
    params = replace(params, height=height, width=width)
    cond = conditioning(parts, params.prompt, params.negative, params.batch, params.guidance)
    scheduler = make_scheduler(params.scheduler, parts.scheduler_config)
    scheduler.set_timesteps(params.steps, device=parts.device)
    generator = torch.Generator("cpu").manual_seed(params.seed)
    shape = (params.batch, parts.unet.config.in_channels,
             height // parts.vae_scale_factor, width // parts.vae_scale_factor)
    latents = initial_noise(shape, generator, parts.device, parts.dtype)
    latents = latents * scheduler.init_noise_sigma
    records = []
    for record in denoise(parts.unet, scheduler, latents, cond, params.guidance,
                          prediction_type=parts.prediction_type, generator=generator,
                          callbacks=callbacks):
        latents = record.next_latents
        if keep_records:
            records.append(record)
    images = latent_io.to_pil(latent_io.decode(parts, latents))
    return Generation(params, latents, images, records)
