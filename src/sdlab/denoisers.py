"""The model the loop calls: a denoiser takes the scaled latents and the timestep and returns
the UNet's predictions for one step. Classifier-free guidance is a wrapper around the UNet
(as k-diffusion's CFGDenoiser is), not a flag inside the loop; other wrappers (step caching,
guidance truncation) compose the same way.

A prediction is what the UNet outputs: the noise (eps) for epsilon models, v for
v-prediction models -- hence `pred`, not `eps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers import UNet2DConditionModel


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


class CondDenoiser:
    """The UNet on the conditional prompt alone (guidance 1: no unconditional pass)."""

    def __init__(self, unet: UNet2DConditionModel, cond: torch.Tensor) -> None:
        self.unet = unet
        self.cond = cond  # (N, 77, d)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> Prediction:
        out = self.unet(x, t, encoder_hidden_states=self.cond, return_dict=False)[0]
        return Prediction(None, out, out)


class CFGDenoiser:
    """Classifier-free guidance: the unconditional and conditional passes in one batch,
    pred = uncond + guidance * (cond - uncond)."""

    def __init__(self, unet: UNet2DConditionModel, uncond: torch.Tensor, cond: torch.Tensor,
                 guidance: float) -> None:
        self.unet = unet
        self.states = torch.cat([uncond, cond])  # (2N, 77, d)
        self.guidance = guidance

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> Prediction:
        out = self.unet(torch.cat([x] * 2), t, encoder_hidden_states=self.states,
                        return_dict=False)[0]  # (2N, 4, h, w)
        pred_uncond, pred_cond = out.chunk(2)
        pred = pred_uncond + self.guidance * (pred_cond - pred_uncond)
        return Prediction(pred_uncond, pred_cond, pred)
