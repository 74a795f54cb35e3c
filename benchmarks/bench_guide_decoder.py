"""What one guidance step costs with each decoder on an SD-1.5-shaped VAE (random
weights: the cost does not depend on them): the loss on the full VAE decode of x0 and its
gradient, against the same through the 4x3 linear preview.

    python benchmarks/bench_guide_decoder.py --size 512
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKL

from sdlab.guidance import blue_loss
from sdlab.preview import SD1_FACTORS, LinearPreview


def seconds(decode, latents: torch.Tensor) -> float:
    start = time.perf_counter()
    latents = latents.detach().requires_grad_()
    loss = blue_loss(decode(latents))
    torch.autograd.grad(loss, latents)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval().requires_grad_(False)
    latents = torch.randn(1, 4, args.size // 8, args.size // 8)
    preview = LinearPreview(torch.tensor(SD1_FACTORS), torch.zeros(3), 8)

    def full(z: torch.Tensor) -> torch.Tensor:
        return (vae.decode(z / 0.18215).sample / 2 + 0.5).clamp(0, 1)

    t_approx = min(seconds(preview, latents) for _ in range(3))
    t_full = seconds(full, latents)
    print(f"{args.size}²: loss + gradient through the full VAE {t_full:.2f} s, through the "
          f"linear preview {t_approx * 1000:.1f} ms ({t_full / t_approx:.0f}x faster)")


if __name__ == "__main__":
    main()
