"""Latents <-> images: the VAE (scaled by its `scaling_factor`), pixel conversions, and
pictures of what the latents hold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdlab.errors import SdlabError
from sdlab.models import Parts

ENCODE_MODES = ("sample", "mean", "mode")  # mean and mode coincide for the VAE's Gaussian


def load_image(path: str | Path, size: tuple[int, int] | None = None,
               factor: int = 8) -> Image.Image:
    """An RGB image, resized to `size` (width, height) or cropped down to a multiple of the
    VAE factor (the deep dive's images are 512x512)."""
    try:
        image = Image.open(path).convert("RGB")
    except (OSError, ValueError) as err:
        raise SdlabError(f"cannot read image {path}: {err}") from err
    if size is None:
        size = (image.width // factor * factor, image.height // factor * factor)
        if min(size) == 0:
            raise SdlabError(f"image {path} is smaller than the VAE factor {factor}")
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1], the VAE's input range."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) * 2 - 1


@torch.no_grad()
def encode(parts: Parts, images: list[Image.Image], mode: str = "sample",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Images -> scaled latents (N, 4, H/8, W/8): the posterior's sample, or its mean."""
    if mode not in ENCODE_MODES:
        raise SdlabError(f"unknown encode mode '{mode}': use {', '.join(ENCODE_MODES)}")
    pixels = to_tensor(images).to(parts.device, parts.dtype)
    dist = parts.vae.encode(pixels).latent_dist
    latents = dist.sample(generator) if mode == "sample" else dist.mode()
    return latents * parts.vae.config.scaling_factor


@torch.no_grad()
def decode(parts: Parts, latents: torch.Tensor) -> torch.Tensor:
    """Latents (N, 4, h, w) -> images (N, 3, H, W) in [0, 1]."""
    return vae_decode(parts, latents)


def vae_decode(parts: Parts, latents: torch.Tensor) -> torch.Tensor:
    """`decode`, differentiable (for guidance by a loss on the image)."""
    latents = latents.to(parts.device, parts.dtype) / parts.vae.config.scaling_factor
    images = parts.vae.decode(latents, return_dict=False)[0]
    return (images / 2 + 0.5).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (N, 3, H, W) in [0, 1] -> PIL images, rounded as diffusers does."""
    arrays = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def compression(images: torch.Tensor, latents: torch.Tensor) -> float:
    """How many pixel values each latent value stands for (48 for SD: 512²·3 / 64²·4)."""
    return images[0].numel() / latents[0].numel()


def channels_picture(latents: torch.Tensor, scale: int = 4) -> Image.Image:
    """The latent channels of the first image side by side, each stretched to grey levels."""
    channels = latents[0].detach().float().cpu()
    lo = channels.amin(dim=(1, 2), keepdim=True)
    hi = channels.amax(dim=(1, 2), keepdim=True)
    grey = ((channels - lo) / (hi - lo).clamp_min(1e-8) * 255).round().to(torch.uint8)
    strip = torch.cat(list(grey), dim=1).numpy()  # (h, C*w)
    image = Image.fromarray(strip, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """Images of one height, left to right."""
    canvas = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


@dataclass(frozen=True)
class RoundTrip:
    original: Image.Image
    reconstruction: Image.Image
    latents: torch.Tensor
    psnr: float
    compression: float
    image_shape: tuple[int, ...]
    latents_shape: tuple[int, ...]


def roundtrip(parts: Parts, image: Image.Image) -> RoundTrip:
    """Encode (the posterior mean) and decode an image; measure what was lost."""
    latents = encode(parts, [image], "mean")
    decoded = decode(parts, latents)
    original = (to_tensor([image]) + 1) / 2
    return RoundTrip(image, to_pil(decoded)[0], latents, psnr(original, decoded.cpu()),
                     compression(original, latents), tuple(original.shape[1:]),
                     tuple(latents.shape[1:]))
