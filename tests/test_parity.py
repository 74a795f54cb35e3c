"""The acceptance test of the open loop: its final latents equal those of diffusers'
StableDiffusionPipeline on the same weights, prompt, seed, scheduler, size and batch, bit for
bit."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdlab.generate import GenerateParams, generate
from sdlab.models import Parts
from sdlab.schedule import SCHEDULERS, make_scheduler

STEPS = 6


def reference_latents(parts: Parts, params: GenerateParams) -> torch.Tensor:
    """diffusers' own pipeline, built from the very same loaded modules."""
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        unet=parts.unet, scheduler=make_scheduler(params.scheduler, parts.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        params.prompt, negative_prompt=params.negative or None, height=params.height,
        width=params.width, num_inference_steps=params.steps, guidance_scale=params.guidance,
        generator=torch.Generator("cpu").manual_seed(params.seed),
        num_images_per_prompt=params.batch, output_type="latent").images


def assert_parity(parts: Parts, params: GenerateParams) -> None:
    ours = generate(parts, params).latents
    ref = reference_latents(parts, params)
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref)  # bit for bit, not within a tolerance


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("batch", [1, 2])
def test_every_scheduler_matches_diffusers(tiny: Parts, scheduler: str, guidance: float,
                                           batch: int) -> None:
    params = GenerateParams("a watercolor painting of an otter", steps=STEPS,
                            guidance=guidance, seed=32, scheduler=scheduler, batch=batch)
    assert_parity(tiny, params)


@pytest.mark.parametrize("scheduler", ["lms", "euler-a", "dpm++2m-karras"])
def test_negative_prompt_and_non_square_size(tiny: Parts, scheduler: str) -> None:
    params = GenerateParams("a red circle on a blue background", negative="green, blurry",
                            steps=STEPS, seed=7, scheduler=scheduler, height=48, width=80)
    assert_parity(tiny, params)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_v_prediction_model_matches_diffusers(tiny_vpred: Parts, scheduler: str) -> None:
    assert tiny_vpred.prediction_type == "v_prediction"
    params = GenerateParams("a large yellow star", steps=STEPS, seed=3, scheduler=scheduler,
                            batch=2)
    assert_parity(tiny_vpred, params)


def test_the_noise_depends_on_the_seed(tiny: Parts) -> None:
    a = generate(tiny, GenerateParams("a cat", steps=2, seed=1)).latents
    b = generate(tiny, GenerateParams("a cat", steps=2, seed=2)).latents
    assert (a - b).abs().max() > 1e-2
