"""The model the loop calls: a denoiser takes the scaled latents and the timestep and returns
the UNet's predictions for one step. Classifier-free guidance is a wrapper around the UNet
(as k-diffusion's CFGDenoiser is), not a flag inside the loop; other wrappers (step caching,
guidance truncation) compose the same way: `unet` may be a `sdlab.cache.StepCache`, and
`CFGDenoiser(..., cfg_steps=k)` runs the unconditional pass on evaluations i < k only.

A prediction is what the UNet outputs: the noise (eps) for epsilon models, v for
v-prediction models -- hence `pred`, not `eps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers import UNet2DConditionModel

from sdlab.cache import StepCache

UNet = UNet2DConditionModel | StepCache


@dataclass(frozen=True)
class Prediction:
    """One step's UNet outputs: unconditional (None without guidance), conditional, and the
    guided one the scheduler steps with."""

    pred_uncond: torch.Tensor | None
    pred_cond: torch.Tensor
    pred: torch.Tensor


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> Prediction:
        """Predictions for the scaled latents `x` (N, 4, h, w) at timestep `t`, step `i`."""
        ...


def call_unet(unet: UNet, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor,
              i: int) -> torch.Tensor:
    """The UNet's prediction for `x` (the step index matters to a step cache only)."""
    if isinstance(unet, StepCache):
        return unet(x, t, states, i)
    return unet(x, t, encoder_hidden_states=states, return_dict=False)[0]


class CondDenoiser:
    """The UNet on the conditional prompt alone (guidance 1: no unconditional pass)."""

    def __init__(self, unet: UNet, cond: torch.Tensor) -> None:
        self.unet = unet
        self.cond = cond  # (N, 77, d)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> Prediction:
        out = call_unet(self.unet, x, t, self.cond, i)
        return Prediction(None, out, out)


class CFGDenoiser:
    """Classifier-free guidance: the unconditional and conditional passes in one batch,
    pred = uncond + guidance * (cond - uncond). With `cfg_steps` k (guidance truncation),
    evaluations i >= k run the conditional pass alone (guidance 1, half the batch)."""

    def __init__(self, unet: UNet, uncond: torch.Tensor, cond: torch.Tensor,
                 guidance: float, cfg_steps: int | None = None) -> None:
        self.unet = unet
        self.states = torch.cat([uncond, cond])  # (2N, 77, d)
        self.cond = cond
        self.guidance = guidance
        self.cfg_steps = cfg_steps

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> Prediction:
        if self.cfg_steps is not None and i >= self.cfg_steps:
            out = call_unet(self.unet, x, t, self.cond, i)
            return Prediction(None, out, out)
        out = call_unet(self.unet, torch.cat([x] * 2), t, self.states, i)  # (2N, 4, h, w)
        pred_uncond, pred_cond = out.chunk(2)
        pred = pred_uncond + self.guidance * (pred_cond - pred_uncond)
        return Prediction(pred_uncond, pred_cond, pred)
