"""Cheap latent -> RGB previews: a linear map per latent channel, no VAE.

Decoding every step with the VAE costs more than the generation itself at 512² (31 s per
image on this machine's CPU), so progression videos and guidance use a 4x3 linear map
(plus a bias) from latents to RGB, upsampled to the image size. For SD 1.x latents the
published map is used; other models carry one fitted to their own VAE (`preview.json`
in the model folder) or get one fitted on the fly with `fit_preview`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from sdlab import vae
from sdlab.errors import SdlabError
from sdlab.models import Parts, read_preview_map, write_preview_map

# Published SD 1.x latent -> RGB factors (rows: latent channel; columns: R, G, B);
# they map the scaled latents to roughly [-1, 1].
SD1_FACTORS = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]
SD1_SCALING = 0.18215
DECODERS = ("approx", "full")  # the linear preview, the VAE

Decoder = Callable[[torch.Tensor], torch.Tensor]  # latents -> images in [0, 1]


@dataclass(frozen=True)
class LinearPreview:
    """images = (latents . weight + bias) / 2 + 0.5, upsampled by `factor`."""

    weight: torch.Tensor  # (C, 3)
    bias: torch.Tensor  # (3,)
    factor: int

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) -> images (N, 3, h*f, w*f) in [0, 1]; differentiable."""
        weight = self.weight.to(latents.device, latents.dtype)
        bias = self.bias.to(latents.device, latents.dtype)
        rgb = torch.einsum("nchw,cr->nrhw", latents, weight) + bias[None, :, None, None]
        rgb = F.interpolate(rgb, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return (rgb / 2 + 0.5).clamp(0, 1)

    def to_json(self) -> str:
        return json.dumps({"weight": self.weight.tolist(), "bias": self.bias.tolist()})


def preview_for(parts: Parts) -> LinearPreview:
    """The model's own fitted map, else SD 1.x's published one, else a fit made now."""
    data = read_preview_map(parts.folder)
    if data is not None:
        return LinearPreview(torch.tensor(data["weight"]), torch.tensor(data["bias"]),
                             parts.vae_scale_factor)
    if parts.vae.config.latent_channels == 4 and parts.vae.config.scaling_factor == SD1_SCALING:
        return LinearPreview(torch.tensor(SD1_FACTORS), torch.zeros(3), parts.vae_scale_factor)
    return fit_preview(parts, _color_probe_images(parts.native_size))


@torch.no_grad()
def fit_preview(parts: Parts, images: list[Image.Image]) -> LinearPreview:
    """Least squares from each latent cell to the mean colour of the pixels it covers."""
    latents = vae.encode(parts, images, "mean").float().cpu()  # (N, C, h, w)
    pixels = vae.to_tensor(images)  # (N, 3, H, W) in [-1, 1]
    target = F.avg_pool2d(pixels, parts.vae_scale_factor)  # (N, 3, h, w)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x, y).solution  # (C + 1, 3)
    return LinearPreview(solution[:-1], solution[-1], parts.vae_scale_factor)


def save_preview(preview: LinearPreview, folder: Path) -> Path:
    return write_preview_map(folder, preview.to_json())


def _color_probe_images(size: int) -> list[Image.Image]:
    """Flat colours and two-colour splits: enough to pin down a 4x3 map."""
    colors = [(r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)]
    images = []
    for k, color in enumerate(colors):
        image = Image.new("RGB", (size, size), color)
        image.paste(colors[(k * 7 + 5) % len(colors)], (0, 0, size // 2, size))
        images.append(image)
    return images


def decoder_for(parts: Parts, kind: str) -> Decoder:
    """`approx`: the cheap linear preview; `full`: the VAE. Both are differentiable."""
    if kind == "approx":
        return preview_for(parts)
    if kind == "full":
        return lambda latents: vae.vae_decode(parts, latents)
    raise SdlabError(f"unknown decoder '{kind}': use {' or '.join(DECODERS)}")
