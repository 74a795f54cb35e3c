"""Image to image: start the loop from a real image noised to a start step instead of pure
noise. `--start-step k` (the deep dive) and `--strength s` (diffusers) are one setting:
with N steps, strength s starts at step k = N - int(N * s), so strength 0.8 of 50 steps is
start step 10.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from sdlab import vae
from sdlab.generate import Generation, Run, denoiser, guide_callbacks, last_record, setup
from sdlab.limits import check_pixels
from sdlab.models import Parts
from sdlab.recipe import Img2ImgParams, Recipe, as_recipe, strength_for
from sdlab.sampler import Callback

__all__ = ["Img2ImgParams", "img2img", "prepare_img2img", "strength_for"]


def prepare_img2img(parts: Parts, settings: Recipe | Img2ImgParams, image: Image.Image) -> Run:
    """Encode the image, noise it to the start step with the scheduler's `add_noise` -- in
    the order diffusers' img2img pipeline draws its noise."""
    recipe = as_recipe(settings).sized(image.height, image.width)
    params = recipe.params
    assert isinstance(params, Img2ImgParams)
    check_pixels(image.height, image.width, params.batch)
    text, scheduler, generator = setup(parts, recipe)
    start = params.start_step() * scheduler.order
    init = vae.encode(parts, [image], "sample", generator)  # (1, 4, h, w)
    init = torch.cat([init] * params.batch)  # cat, like diffusers: it keeps the VAE's
    # channels-last strides, and the UNet's kernels (so the last bits) follow the layout
    noise = torch.randn(init.shape, generator=generator, dtype=parts.dtype).to(parts.device)
    t_start = scheduler.timesteps[start : start + 1].repeat(params.batch)
    latents = scheduler.add_noise(init, noise, t_start)
    model = denoiser(parts, text, params, len(scheduler.timesteps))
    return Run(recipe, model, scheduler, latents, generator, text,
               guide_callbacks(parts, recipe), start)


def img2img(parts: Parts, settings: Recipe | Img2ImgParams, image: Image.Image,
            callbacks: Sequence[Callback] = ()) -> Generation:
    """The image noised to the start step, then the rest of the loop and the VAE decode."""
    run = prepare_img2img(parts, settings, image)
    return run.finish(parts, last_record(run.steps(callbacks)))
