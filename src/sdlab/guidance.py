"""Guidance by a loss: every N steps, a differentiable loss on the decoded predicted x0
moves the latents down its gradient (the deep dive's "blue loss").

    x0 = latents - sigma * eps            # the prediction, as a function of the latents
    loss = scale * loss_fn(decode(x0))    # images in [0, 1], (N, 3, H, W)
    latents = latents - grad(loss) * sigma**2

For sigma schedulers (lms, euler, heun, ...) x0 moves one-for-one with the latents, as in
the deep dive; variance-preserving schedulers (ddim, pndm, dpm++) take the same step,
whose size then differs by a constant factor at each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from sdlab.errors import SdlabError
from sdlab.recipe import GuideSpec
from sdlab.sampler import StepRecord

Loss = Callable[[torch.Tensor], torch.Tensor]  # images (N, 3, H, W) in [0, 1] -> scalar
Decoder = Callable[[torch.Tensor], torch.Tensor]

def blue_loss(images: torch.Tensor) -> torch.Tensor:
    """The deep dive's: how far the blue channel is from 0.9, on average."""
    return torch.abs(images[:, 2] - 0.9).mean()


def color_loss(rgb: tuple[float, float, float]) -> Loss:
    """Mean distance of every pixel to a target colour."""
    target = torch.tensor(rgb)

    def loss(images: torch.Tensor) -> torch.Tensor:
        return torch.abs(images - target.to(images)[None, :, None, None]).mean()

    return loss


def contrast_loss(images: torch.Tensor) -> torch.Tensor:
    """Lower when the image has more contrast (the negative std of its brightness)."""
    return -images.mean(dim=1).std(dim=(1, 2)).mean()


@dataclass
class LossGuidance:
    """A sampler callback that applies `scale * loss_fn` every `every` steps."""

    loss_fn: Loss
    scale: float
    decode: Decoder
    every: int = 5
    name: str = "loss"
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step i, loss)

    def __call__(self, record: StepRecord) -> StepRecord | None:
        if record.i % self.every:
            return None
        with torch.enable_grad():
            latents = record.latents.detach().requires_grad_()
            x0 = record.x0_pred.detach() + (latents - record.latents.detach())
            loss = self.loss_fn(self.decode(x0)) * self.scale
            grad = torch.autograd.grad(loss, latents)[0]
        value = float(loss.detach())
        self.losses.append((record.i, value / self.scale if self.scale else value))
        sigma = record.sigma.to(latents)
        return replace(record, latents=(latents - grad * sigma**2).detach())


def loss_for(spec: GuideSpec, clip_loss: Callable[[str], Loss] | None = None) -> Loss:
    """The loss a parsed guide names; clip guides need `clip_loss` (text -> loss)."""
    if spec.kind == "blue":
        return blue_loss
    if spec.kind == "contrast":
        return contrast_loss
    if spec.kind == "color":
        return color_loss(spec.color)
    if clip_loss is None:
        raise SdlabError("clip guidance needs a CLIP model: this model folder has no clip/ "
                         "(give --clip-model)")
    return clip_loss(spec.text)
