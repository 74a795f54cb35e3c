"""Latents <-> images: the VAE (scaled by its `scaling_factor`) and pixel conversions."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sdlab.models import Parts


@torch.no_grad()
def decode(parts: Parts, latents: torch.Tensor) -> torch.Tensor:
    """Latents (N, 4, h, w) -> images (N, 3, H, W) in [0, 1]."""
    latents = latents.to(parts.device, parts.dtype) / parts.vae.config.scaling_factor
    images = parts.vae.decode(latents, return_dict=False)[0]
    return (images / 2 + 0.5).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (N, 3, H, W) in [0, 1] -> PIL images, rounded as diffusers does."""
    arrays = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]
