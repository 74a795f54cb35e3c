"""Latents <-> images: the VAE (scaled by its `scaling_factor`), pixel conversions, and
pictures of what the latents hold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from sdlab.errors import SdlabError
from sdlab.limits import Limits, check_pixels, over
from sdlab.models import Parts

ENCODE_MODES = ("sample", "mean", "mode")  # mean and mode coincide for the VAE's Gaussian


def load_image(path: str | Path, size: tuple[int, int] | None = None, factor: int = 8,
               limits: Limits | None = None) -> Image.Image:
    """An RGB image, resized to `size` (width, height) or down to a multiple of the VAE
    factor (the deep dive's images are 512x512). Its pixels are counted from the header,
    before it is decoded; greyscale, 16-bit, palette and alpha images become RGB."""
    limits = limits or Limits.from_env()
    check_file_size(path, limits)
    try:
        with Image.open(path) as image:
            check_pixels(image.height, image.width, 1, limits)
            image = to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SdlabError(f"cannot read image {path}: {_one_line(err)}") from err
    if size is None:
        size = (image.width // factor * factor, image.height // factor * factor)
        if min(size) == 0:
            raise SdlabError(f"image {path} is smaller than the VAE factor {factor}")
    check_pixels(size[1], size[0], 1, limits)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16-bit and 32-bit greyscale scaled (not clipped) to
    0..255, alpha composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / top * 255, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        grey = np.clip(np.nan_to_num(np.asarray(image)) * 255, 0, 255).round()
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def check_file_size(path: str | Path, limits: Limits) -> None:
    try:
        size = Path(path).stat().st_size
    except OSError as err:
        raise SdlabError(f"cannot read {path}: {err.strerror}") from err
    if size > limits.max_file_bytes:
        raise over(f"{path} is", f"{size} bytes,", limits.max_file_bytes, "")


def read_latents(path: str | Path, channels: int, limits: Limits | None = None) -> torch.Tensor:
    """Latents (N, C, h, w) from a safetensors file's `latents` key, checked: the model's
    channel count, a decodable size, finite values."""
    limits = limits or Limits.from_env()
    check_file_size(path, limits)
    try:
        latents = load_file(str(path))["latents"]
    except KeyError:
        raise SdlabError(f"{path} has no tensor 'latents': give a file from `sdlab vae "
                         "encode` or `--save-latents`") from None
    except Exception as err:  # a damaged or empty file, whatever the library's exception
        raise SdlabError(f"cannot read {path} as safetensors: {_one_line(err)}") from err
    if latents.ndim != 4 or latents.shape[1] != channels or min(latents.shape) == 0:
        raise SdlabError(f"latents of shape {tuple(latents.shape)} do not fit this model "
                         f"(expected (N, {channels}, h, w) with h, w > 0)")
    if not latents.is_floating_point() or not torch.isfinite(latents).all():
        raise SdlabError(f"{path} holds NaN, infinite or non-float values: it is damaged")
    return latents.float()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


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
