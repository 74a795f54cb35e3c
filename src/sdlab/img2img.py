"""Image to image: start the loop from a real image noised to a start step instead of pure
noise. `--start-step k` (the deep dive) and `--strength s` (diffusers) are one setting:
with N steps, strength s starts at step k = N - int(N * s), so strength 0.8 of 50 steps is
start step 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from sdlab import latents as latent_io
from sdlab.errors import SdlabError
from sdlab.generate import GenerateParams, Generation, check_params, prepare, run
from sdlab.models import Parts
from sdlab.sampler import Callback


@dataclass(frozen=True)
class Img2ImgParams(GenerateParams):
    image: str = ""  # the input's path, for the recipe
    strength: float = 0.8

    def start_step(self) -> int:
        """The first denoising step: N - int(N * strength), as diffusers counts."""
        return self.steps - min(int(self.steps * self.strength), self.steps)


def strength_for(start_step: int, steps: int) -> float:
    """The strength that starts the loop at `start_step` of `steps` (the deep dive's way)."""
    if not 0 <= start_step < steps:
        raise SdlabError(f"--start-step must be in 0..{steps - 1} for {steps} steps "
                         f"(got {start_step})")
    return (steps - start_step) / steps


def check_img2img(params: Img2ImgParams) -> None:
    if not 0 < params.strength <= 1:
        raise SdlabError(f"--strength must be in (0, 1] (got {params.strength})")
    if params.start_step() >= params.steps:
        raise SdlabError(f"--strength {params.strength} with {params.steps} steps leaves no "
                         "step to run: raise --strength or --steps")


def img2img(parts: Parts, params: Img2ImgParams, image: Image.Image,
            callbacks: Sequence[Callback] = (), keep_records: bool = False) -> Generation:
    """Encode the image, noise it to the start step with the scheduler's `add_noise`, then
    run the rest of the loop -- in the order diffusers' img2img pipeline draws its noise."""
    check_params(params, parts.vae_scale_factor)
    check_img2img(params)
    params = replace(params, height=image.height, width=image.width)
    cond, scheduler, generator = prepare(parts, params)
    start = params.start_step() * scheduler.order
    init = latent_io.encode(parts, [image], "sample", generator)  # (1, 4, h, w)
    init = torch.cat([init] * params.batch)  # cat, like diffusers: it keeps the VAE's
    # channels-last strides, and the UNet's kernels (so the last bits) follow the layout
    noise = torch.randn(init.shape, generator=generator, dtype=parts.dtype).to(parts.device)
    t_start = scheduler.timesteps[start : start + 1].repeat(params.batch)
    latents = scheduler.add_noise(init, noise, t_start)
    return run(parts, params, scheduler, latents, cond, generator, callbacks, keep_records,
               start=start)
