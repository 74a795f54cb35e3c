"""Schedulers by name, each built from the model's own scheduler config, and the noise
level of a step in one notation: `sigma`, as in `latents = x0 + sigma * noise`."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sdlab.errors import SdlabError

# name -> (class, extra config); `lms` is the deep dive's.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {}),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}
DEFAULT_SCHEDULER = "lms"
# SD 1.x's published scheduler config (CompVis/stable-diffusion-v1-4); with `lms` it is
# the deep dive's scheduler: `set_timesteps(15)` gives sigmas 14.6146, 9.6826, ... 0.
SD1_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# Old SD configs lack these; clipping x0 to [-1, 1] is meant for pixels, not latents, and
# the offset makes the last step land on t=1. StableDiffusionPipeline applies the same.
LATENT_FIXES = {"clip_sample": False, "steps_offset": 1}


def check_name(name: str) -> str:
    if name not in SCHEDULERS:
        raise SdlabError(f"unknown scheduler '{name}': choose one of {', '.join(SCHEDULERS)}")
    return name


def make_scheduler(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler of kind `name` from a model's scheduler config (betas, prediction
    type and spacing carry over; the class's own defaults fill the rest)."""
    cls, extra = SCHEDULERS[check_name(name)]
    return cls.from_config({**config, **LATENT_FIXES}, **extra)


def step_sigma(scheduler: SchedulerMixin, i: int, t: torch.Tensor) -> torch.Tensor:
    """The noise level of loop step `i` (timestep `t`) as a VE sigma.

    Sigma schedulers (LMS, Euler, Heun, DPM++) keep `sigmas[i]`; the others (DDIM, PNDM)
    work in the variance-preserving space, whose level sqrt((1 - abar_t) / abar_t) is the
    same quantity.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) > i:
        return sigmas[i].to(torch.float32).cpu()
    abar = scheduler.alphas_cumprod[int(t)].to(torch.float32)
    return ((1 - abar) / abar).sqrt()


def x0_from_prediction(model_input: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor,
                       prediction_type: str) -> torch.Tensor:
    """The predicted clean latents from the UNet's output.

    `model_input` is the scaled input the UNet saw, in the variance-preserving space where
    x_t = sqrt(abar) x0 + sqrt(1 - abar) noise and abar = 1 / (1 + sigma^2). For sigma
    schedulers this is the same as the deep dive's `x0 = latents - sigma * eps`.
    """
    sigma = sigma.to(model_input.device, model_input.dtype)
    alpha = (1 + sigma**2).rsqrt()  # sqrt(abar)
    beta = sigma * alpha  # sqrt(1 - abar)
    if prediction_type == "epsilon":
        return (model_input - beta * eps) / alpha
    if prediction_type == "v_prediction":
        return alpha * model_input - beta * eps
    if prediction_type == "sample":
        return eps
    raise SdlabError(f"unknown prediction_type '{prediction_type}' in the scheduler config")


def schedule_table(scheduler: SchedulerMixin) -> list[tuple[int, float, float]]:
    """(i, t, sigma) for each step of a scheduler whose `set_timesteps` has been called."""
    return [(i, float(t), float(step_sigma(scheduler, i, t)))
            for i, t in enumerate(scheduler.timesteps)]


def noise_to_step(scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor,
                  i: int) -> torch.Tensor:
    """`add_noise` at the timestep of step `i`: where the loop would be after i steps
    (for sigma schedulers, latents + sigma_i * noise)."""
    if not 0 <= i < len(scheduler.timesteps):
        raise SdlabError(f"step {i} is outside 0..{len(scheduler.timesteps) - 1}")
    t = scheduler.timesteps[i : i + 1].repeat(latents.shape[0])
    return scheduler.add_noise(latents, noise, t)
