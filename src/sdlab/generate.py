"""Text to image: a recipe in; the loop's records, then final latents and images, out.

`prepare` does everything before the loop (the text stage, the scheduler, the seeded noise,
the model wrapper, the guides); `generate_steps` yields the loop's records; `generate` is
its last record plus the VAE decode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from sdlab import vae
from sdlab.cache import StepCache
from sdlab.denoisers import CFGDenoiser, CondDenoiser, Denoiser
from sdlab.guidance import LossGuidance, loss_for
from sdlab.limits import check_pixels
from sdlab.models import Parts
from sdlab.preview import decoder_for
from sdlab.recipe import GenerateParams, Recipe, as_recipe
from sdlab.sampler import Callback, StepRecord, denoise, initial_noise
from sdlab.schedule import make_scheduler
from sdlab.surgery import Conditioning, conditioning

__all__ = ["GenerateParams", "Generation", "Run", "generate", "generate_steps", "prepare"]


@dataclass
class Generation:
    params: GenerateParams  # as run: height and width filled in
    latents: torch.Tensor  # (N, 4, H/8, W/8), final, before the VAE
    images: list[Image.Image]
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # per guide


@dataclass
class Run:
    """A run ready to loop: the model to call, its scheduler, the starting latents."""

    recipe: Recipe  # height and width filled in
    model: Denoiser
    scheduler: SchedulerMixin
    latents: torch.Tensor  # (N, 4, h, w), scaled for the scheduler
    generator: torch.Generator
    text: Conditioning
    guides: list[LossGuidance]
    start: int = 0

    def steps(self, callbacks: Sequence[Callback] = ()) -> Iterator[StepRecord]:
        """The loop's records. The run's guides act first, so every other callback sees
        the latents they moved."""
        return denoise(self.model, self.scheduler, self.latents, generator=self.generator,
                       callbacks=[*self.guides, *callbacks], start=self.start)

    def finish(self, parts: Parts, last: StepRecord | None) -> Generation:
        """The VAE decode of the last record's result (the start, if no step was taken)."""
        latents = self.latents if last is None else last.next_latents
        images = vae.to_pil(vae.decode(parts, latents))
        return Generation(self.recipe.params, latents, images,
                          {g.name: g.losses for g in self.guides})


def prepare(parts: Parts, settings: Recipe | GenerateParams) -> Run:
    """The text states, a scheduler set to the run's steps, the seeded initial noise."""
    recipe = as_recipe(settings)
    p = recipe.params
    recipe = recipe.sized(p.height or parts.native_size, p.width or parts.native_size)
    check_pixels(recipe.params.height, recipe.params.width, p.batch)
    text, scheduler, generator = setup(parts, recipe)
    shape = (p.batch, parts.unet.config.in_channels,
             recipe.params.height // parts.vae_scale_factor,
             recipe.params.width // parts.vae_scale_factor)
    latents = initial_noise(shape, generator, parts.device, parts.dtype)
    latents = latents * scheduler.init_noise_sigma
    model = denoiser(parts, text, p, len(scheduler.timesteps))
    return Run(recipe, model, scheduler, latents, generator, text,
               guide_callbacks(parts, recipe))


def setup(parts: Parts, recipe: Recipe
          ) -> tuple[Conditioning, SchedulerMixin, torch.Generator]:
    """Encoder states, a scheduler set to the run's steps, and the run's seeded generator."""
    text = conditioning(parts, recipe)
    scheduler = make_scheduler(recipe.params.scheduler, parts.scheduler_config)
    scheduler.set_timesteps(recipe.params.steps, device=parts.device)
    generator = torch.Generator("cpu").manual_seed(recipe.params.seed)
    return text, scheduler, generator


def denoiser(parts: Parts, text: Conditioning, params: GenerateParams,
             evaluations: int) -> Denoiser:
    """The UNet (with step caching when the recipe asks), wrapped with classifier-free
    guidance when there is an unconditional pass -- on the first `cfg_until` share of the
    schedule's `evaluations` (len(scheduler.timesteps)) only."""
    unet = parts.unet
    if params.cache_interval > 1:
        unet = StepCache(unet, params.cache_interval, params.cache_branch)
    if text.uncond is None:
        return CondDenoiser(unet, text.cond)
    cfg_steps = None if params.cfg_until >= 1 else round(params.cfg_until * evaluations)
    return CFGDenoiser(unet, text.uncond, text.cond, params.guidance, cfg_steps)


def generate_steps(parts: Parts, settings: Recipe | GenerateParams,
                   callbacks: Sequence[Callback] = ()) -> Iterator[StepRecord]:
    """The loop's records of a text-to-image run, one per step."""
    return prepare(parts, settings).steps(callbacks)


def generate(parts: Parts, settings: Recipe | GenerateParams,
             callbacks: Sequence[Callback] = ()) -> Generation:
    """The deep dive's loop: text states, seeded noise, the denoising steps, VAE decode."""
    run = prepare(parts, settings)
    return run.finish(parts, last_record(run.steps(callbacks)))


def last_record(records: Iterator[StepRecord]) -> StepRecord | None:
    last = None
    for last in records:  # noqa: B007 - only the last is wanted
        pass
    return last


def guide_callbacks(parts: Parts, recipe: Recipe) -> list[LossGuidance]:
    """One LossGuidance per guide of the recipe."""
    if not recipe.guides:
        return []
    from sdlab.clip_guidance import clip_for

    scorer = clip_for(parts, recipe.params.clip_model) if any(
        g.kind == "clip" for g in recipe.guides) else None
    decode = decoder_for(parts, recipe.params.guide_decoder)
    return [LossGuidance(loss_for(g, scorer.loss if scorer else None), g.scale, decode,
                         recipe.params.guide_every, g.name) for g in recipe.guides]
