"""World images as arrays and tensors: the conversions and the round-trip measure that the
benchmark and the training share."""

from __future__ import annotations

import numpy as np
import torch

from sdlab.tiny import world


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def random_images(rng: np.random.Generator, n: int, split: str = "train") -> np.ndarray:
    """(n, 64, 64, 3) uint8 renders of random scenes of the world's `split`."""
    return np.stack([world.render(world.sample_scene(rng, split)) for _ in range(n)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR in dB over a batch of uint8 images."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
