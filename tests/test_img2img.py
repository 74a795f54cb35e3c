"""img2img: the final latents equal diffusers' StableDiffusionImg2ImgPipeline's, and
`--start-step` is `--strength` counted the other way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from sdlab.errors import SdlabError
from sdlab.img2img import Img2ImgParams, img2img, prepare_img2img, strength_for
from sdlab.models import Parts
from sdlab.schedule import SCHEDULERS, make_scheduler


def photo() -> Image.Image:
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8))


def reference(parts: Parts, params: Img2ImgParams, image: Image.Image) -> torch.Tensor:
    pipe = StableDiffusionImg2ImgPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        unet=parts.unet, scheduler=make_scheduler(params.scheduler, parts.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(params.prompt, image=image, strength=params.strength,
                negative_prompt=params.negative or None, num_inference_steps=params.steps,
                guidance_scale=params.guidance, num_images_per_prompt=params.batch,
                generator=torch.Generator("cpu").manual_seed(params.seed),
                output_type="latent").images


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_matches_diffusers_img2img(tiny: Parts, scheduler: str) -> None:
    params = Img2ImgParams("a red circle", steps=8, strength=0.6, seed=4, scheduler=scheduler,
                           batch=2, negative="blue")
    ours = img2img(tiny, params, photo()).latents
    assert torch.equal(ours, reference(tiny, params, photo()))  # bit for bit


def test_start_step_is_strength(tiny: Parts) -> None:
    assert strength_for(10, 50) == 0.8
    params = Img2ImgParams("x", steps=50, strength=strength_for(10, 50))
    assert params.start_step() == 10
    run = prepare_img2img(tiny, Img2ImgParams("x", steps=5, strength=strength_for(2, 5)),
                          photo())
    assert [r.i for r in run.steps()] == [2, 3, 4]


def test_bad_strength(tiny: Parts) -> None:
    with pytest.raises(SdlabError, match="--strength must be in"):
        img2img(tiny, Img2ImgParams("x", strength=1.5), photo())
    with pytest.raises(SdlabError, match="leaves no step"):
        img2img(tiny, Img2ImgParams("x", steps=4, strength=0.1), photo())
    with pytest.raises(SdlabError, match="--start-step must be in 0..4"):
        strength_for(5, 5)
