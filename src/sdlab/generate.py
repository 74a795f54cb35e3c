"""Text to image: prompt, seed and settings in; final latents and images out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from sdlab import latents as latent_io
from sdlab.errors import SdlabError
from sdlab.guidance import LossGuidance, blue_loss, parse_guide
from sdlab.models import Parts
from sdlab.sampler import Callback, StepRecord, denoise, initial_noise
from sdlab.schedule import DEFAULT_SCHEDULER, check_name, make_scheduler
from sdlab.surgery import TextEdits, check_text, conditioning
from sdlab.trace import VIDEO_DECODERS, decoder_for


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
    # guidance by a loss (sdlab.guidance): "NAME:SCALE" specs, applied every N steps on
    # the full VAE decode or the cheap linear preview; clip_model for clip:"text" guides
    guide: tuple[str, ...] = ()
    guide_every: int = 5
    guide_decoder: str = "full"
    clip_model: str | None = None

    def __post_init__(self) -> None:  # a JSON recipe gives lists: keep tuples
        for name in ("swap", "mix", "embedding", "token", "guide"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_params(params: GenerateParams, vae_scale_factor: int | None = None) -> None:
    """Raise a one-line SdlabError for settings that cannot run."""
    if params.steps < 1:
        raise SdlabError(f"--steps must be at least 1 (got {params.steps})")
    if params.guidance < 0:
        raise SdlabError(f"--guidance must be 0 or more (got {params.guidance})")
    if params.guide_every < 1:
        raise SdlabError(f"--guide-every must be at least 1 (got {params.guide_every})")
    if params.guide_decoder not in VIDEO_DECODERS:
        raise SdlabError(f"--guide-decoder must be one of {', '.join(VIDEO_DECODERS)}")
    for spec in params.guide:
        parse_guide(spec, lambda text: blue_loss)  # the syntax, before any work
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
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # per guide


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
    """The denoising loop from step index `start`, then the VAE decode. The run's guides
    act first, so every other callback sees the latents they moved."""
    guides = guide_callbacks(parts, params)
    records = []
    for record in denoise(parts.unet, scheduler, latents, cond, params.guidance,
                          prediction_type=parts.prediction_type, generator=generator,
                          callbacks=[*guides, *callbacks], start=start):
        latents = record.next_latents
        if keep_records:
            records.append(record)
    images = latent_io.to_pil(latent_io.decode(parts, latents))
    return Generation(params, latents, images, records, {g.name: g.losses for g in guides})


def guide_callbacks(parts: Parts, params: GenerateParams) -> list[LossGuidance]:
    """One LossGuidance per `--guide NAME:SCALE` of the recipe."""
    if not params.guide:
        return []
    from sdlab.clip_guidance import clip_for

    scorer = clip_for(parts, params.clip_model) if any(
        g.startswith("clip:") for g in params.guide) else None
    decode = decoder_for(parts, params.guide_decoder)
    guides = []
    for spec in params.guide:
        name, loss_fn, scale = parse_guide(spec, scorer.loss if scorer else None)
        guides.append(LossGuidance(loss_fn, scale, decode, params.guide_every, name))
    return guides
