"""Stage 1: the autoencoder (diffusers AutoencoderKL, 64x64x3 <-> 8x8x4), as in SD; and
stage 4: its decoder fine-tuned alone.

Trained on freshly drawn world images every step (no epochs, no overfitting) with
MSE + a little L1 and a tiny KL term; its scaling_factor is 1/std of the training latents.
A small shape covers 4-6% of the pixels, so a plain mean error is nearly all background:
the reconstruction error is weighted up on and around the shape (`fg_weight`), which is
what keeps a star a star through 8x8 latents (SD's VAE uses a perceptual loss for the
same reason: pixels that carry structure matter more than flat ones).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch
from diffusers import AutoencoderKL

from sdlab.tiny import world
from sdlab.tiny.imaging import images_to_tensor, psnr, random_images, tensor_to_images
from training.config import VaeConfig
from training.fit import Losses, Phase, Schedule, Stage, step_rng

log = logging.getLogger("training.vae")
STAGE_ID = 1
DECODER_STAGE_ID = 11


def build_vae(cfg: VaeConfig) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=4,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=world.IMAGE_SIZE,
    )
    # With a KL weight of ~1e-6 nothing pulls the posterior std down but reconstruction,
    # which is slow: start it small (the logvar half of quant_conv's output).
    with torch.no_grad():
        vae.quant_conv.weight[4:].zero_()
        vae.quant_conv.bias[4:].fill_(cfg.logvar_init)
    return vae


def foreground_weights(x: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """(B, 1, H, W) loss weights: 1 on the background, 1 + fg_weight on and next to the
    shape (pixels that differ from the corner pixel, which is always background)."""
    fg = ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.05).float()
    fg = torch.nn.functional.max_pool2d(fg, 3, stride=1, padding=1)
    return 1.0 + fg_weight * fg


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, cfg: VaeConfig
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted MSE + l1_weight * weighted L1, plain MSE for the log)."""
    w = foreground_weights(x, cfg.fg_weight)
    err = rec - x
    norm = w.sum() * x.shape[1]
    loss = (w * err**2).sum() / norm + cfg.l1_weight * (w * err.abs()).sum() / norm
    return loss, (err**2).mean()


@functools.cache
def _palette_images() -> torch.Tensor:
    """A flat image of each palette colour, (n colours, 3, H, W) in [-1, 1] (made once)."""
    flat = np.stack([np.full((world.IMAGE_SIZE, world.IMAGE_SIZE, 3), rgb, np.uint8)
                     for rgb in world.COLORS.values()])
    return images_to_tensor(flat)


def palette_latents(vae: AutoencoderKL) -> torch.Tensor:
    """(n colours, 4) mean posterior latent of a flat image of each palette colour."""
    return vae.encode(_palette_images()).latent_dist.mean.mean(dim=(2, 3))


def palette_distances(palette: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """(n, n) rms distances between the palette's latents (n, 4), in units of the std of
    `latents` (what the scaling factor makes 1), so that scaling every latent up is no help."""
    return torch.cdist(palette, palette) / (latents.std() * palette.shape[1] ** 0.5)


def palette_margin_loss(palette: torch.Tensor, latents: torch.Tensor, gap: float) -> torch.Tensor:
    """Mean over colour pairs of relu(gap - distance): the palette's latents pushed apart
    (distances as palette_distances)."""
    dist = palette_distances(palette, latents)
    pairs = torch.triu_indices(len(palette), len(palette), offset=1)
    return torch.relu(gap - dist[pairs[0], pairs[1]]).mean()


@torch.no_grad()
def closest_palette_pair(vae: AutoencoderKL, seed: int = 0, n: int = 256) -> tuple[float, str, str]:
    """The two palette colours whose flat latents are closest, and their distance (latent
    stds, measured against the latents of n unseen world images)."""
    z = encode_mean(vae, images_to_tensor(random_images(np.random.default_rng(seed), n, "all")))
    dist = palette_distances(palette_latents(vae), z)
    dist += torch.eye(len(dist)) * dist.max()
    i, j = divmod(int(dist.argmin()), len(dist))
    names = list(world.COLORS)
    return float(dist[i, j]), names[i], names[j]


@torch.no_grad()
def encode_mean(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Unscaled posterior means, (N, 4, H/8, W/8)."""
    out = [vae.encode(images[i : i + batch_size]).latent_dist.mean for i in
           range(0, len(images), batch_size)]  # fmt: skip
    return torch.cat(out)


@torch.no_grad()
def roundtrip_psnr(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 128) -> float:
    """PSNR (dB) of decode(encode(x)) using the posterior mean, on uint8 images."""
    x = images_to_tensor(images)
    recs = []
    for i in range(0, len(x), batch_size):
        z = vae.encode(x[i : i + batch_size]).latent_dist.mean
        recs.append(vae.decode(z).sample)
    return psnr(images, tensor_to_images(torch.cat(recs)))


def measure_scaling_factor(vae: AutoencoderKL, seed: int, n: int = 2048) -> float:
    """1 / std of the latents of n training images, as SD's 0.18215 was chosen."""
    images = random_images(step_rng(seed, STAGE_ID, 10**8), n)
    z = encode_mean(vae, images_to_tensor(images))
    return float(1.0 / z.std())


def _eval_images(seed: int) -> np.ndarray:
    return random_images(step_rng(seed, STAGE_ID, 10**8 + 1), 64, split="all")


def vae_stage(cfg: VaeConfig, seed: int) -> Stage:
    """The whole VAE on fresh images: reconstruction + KL (+ the palette margin), its
    round trip measured every eval_every steps; saved with its scaling factor."""
    torch.manual_seed(seed)
    vae = build_vae(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    eval_images = _eval_images(seed)
    gen = torch.Generator().manual_seed(seed)  # the posterior's samples

    def loss(step: int) -> Losses:
        x = images_to_tensor(random_images(step_rng(seed, STAGE_ID, step), cfg.batch_size))
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        rec_loss, mse = reconstruction_loss(rec, x, cfg)
        kl = posterior.kl().mean()
        total = rec_loss + cfg.kl_weight * kl
        if cfg.palette_margin > 0:
            margin = palette_margin_loss(palette_latents(vae), posterior.mean, cfg.palette_gap)
            total = total + cfg.palette_margin * margin
        return total, {"mse": mse.item(), "kl": kl.item()}

    def with_scaling_factor() -> AutoencoderKL:
        scale = measure_scaling_factor(vae, seed)
        vae.register_to_config(scaling_factor=scale)
        log.info("vae: scaling_factor %.5f", scale)
        return vae

    return Stage(
        model=vae, opt=opt, clipped=list(vae.parameters()),
        phases=[Phase("vae", cfg.steps, Schedule(cfg.lr, cfg.warmup, 0, cfg.steps), loss)],
        evaluate=lambda: {"psnr": roundtrip_psnr(vae, eval_images)},
        eval_every=cfg.eval_every, result=with_scaling_factor,
    )  # fmt: skip


def decoder_stage(cfg: VaeConfig, seed: int, vae: AutoencoderKL) -> Stage:
    """The decoder alone on the frozen encoder's posterior means (sharper edges). The
    encoder, and so the latents the UNet learns and the scaling factor, stay as they are:
    this stage can run beside the UNet's."""
    decoder = [vae.post_quant_conv, vae.decoder]
    vae.requires_grad_(False)
    params = [p for m in decoder for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0)
    eval_images = _eval_images(seed)
    vae.eval()
    for m in decoder:
        m.train()

    def loss(step: int) -> Losses:
        x = images_to_tensor(random_images(step_rng(seed, DECODER_STAGE_ID, step),
                                           cfg.batch_size))
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec_loss, mse = reconstruction_loss(vae.decode(z).sample, x, cfg)
        return rec_loss, {"mse": mse.item()}

    schedule = Schedule(cfg.decoder_lr, cfg.decoder_warmup, 0, cfg.decoder_steps)
    return Stage(
        model=vae, opt=opt, clipped=params,
        phases=[Phase("vae decoder", cfg.decoder_steps, schedule, loss)],
        evaluate=lambda: {"psnr": roundtrip_psnr(vae, eval_images)},
        eval_every=cfg.eval_every, result=lambda: vae.requires_grad_(False),
    )  # fmt: skip
