"""The VAE's palette margin: flat colours' latents pushed apart, in units of the latents' std."""

import dataclasses

import torch

from training.config import TinyConfig
from training.fit import fit
from training.vae import (
    build_vae,
    closest_palette_pair,
    palette_latents,
    palette_margin_loss,
    vae_stage,
)


def test_margin_is_zero_for_a_spread_palette_and_scale_free():
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(64, 4, 8, 8, generator=gen)  # std 1
    hadamard = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]])
    spread = 3.0 * torch.cat([hadamard, -hadamard])  # pairs >= 3 * sqrt(8) / 2 = 4.2 stds apart
    assert palette_margin_loss(spread, latents, 1.0).item() == 0.0
    close = torch.randn(8, 4, generator=gen) * 0.1
    loss = palette_margin_loss(close, latents, 1.0)
    assert 0.5 < loss.item() < 1.0
    assert torch.allclose(palette_margin_loss(3 * close, 3 * latents, 1.0), loss)


def test_margin_gradient_pushes_the_closest_pair_apart():
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(64, 4, 8, 8, generator=gen)
    palette = torch.randn(8, 4, generator=gen).requires_grad_(True)
    before = torch.pdist(palette.detach()).min()
    opt = torch.optim.SGD([palette], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        palette_margin_loss(palette, latents, 1.0).backward()
        opt.step()
    assert torch.pdist(palette.detach()).min() > before


def test_palette_latents_encode_each_colour():
    cfg = dataclasses.replace(TinyConfig.quick().vae, palette_margin=0.1)
    torch.manual_seed(0)
    vae = build_vae(cfg)
    palette = palette_latents(vae)
    assert palette.shape == (8, 4)
    assert torch.pdist(palette).min() > 0  # eight different colours, eight latents


def test_training_with_the_margin_spreads_the_palette(tmp_path):
    """The same quick VAE run with and without the margin: with it, the closest two
    colours end further apart."""
    base = TinyConfig.quick().vae
    spread = {}
    for weight in (0.0, 1.0):
        cfg = dataclasses.replace(base, palette_margin=weight, palette_gap=2.0)
        vae = fit(vae_stage(cfg, 0), tmp_path / f"vae{weight}", resume=False)
        spread[weight] = closest_palette_pair(vae, n=64)[0]
    assert spread[1.0] > 1.3 * spread[0.0], spread
