"""Stage 3: the denoiser (diffusers UNet2DConditionModel) on 8x8x4 latents, cross-attending
to the frozen text encoder's last hidden states, with SD's noise schedule.

The VAE and text encoder are frozen, so the latents of a pool of world images and the
encoder states of their captions are computed once and cached (fp16): each training step
is then only the UNet. The loss is SD's plain epsilon MSE over uniformly drawn t; the
weights saved are an EMA. Three phases (`unet_phases`, UnetConfig):

    1. clean captions, uncond_prob of them empty (classifier-free guidance), and in every
       phase `mix_share` of each batch colour-mix samples (training/mixes.py) and, on the
       clean captions, the token grounding loss (training/grounding.py);
    2. the guidance tune: captions that name some attributes wrongly (caption_noise, more
       often as t falls) and more empty ones, which bounds what guidance can amplify, so
       guidance 7.5 no longer overshoots (see the card);
    3. the guidance calibration: the model distilled into one whose guidance 7.5 is its
       phase-2 self's guidance `teacher_guidance`.

(min-SNR weighting, gamma 5, gives the small-t steps almost no weight: that model
repainted from the text at small t -- a wrong caption at t=10 raised its error 5x -- and
guidance 7.5 blew up. Plain MSE did not cure either: see the model card.)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from sdlab.tiny import world
from sdlab.tiny.imaging import images_to_tensor
from training.config import UnetConfig
from training.filler import add_filler
from training.fit import Losses, Phase, Schedule, Stage, step_rng
from training.grounding import grounding_loss, keep_attention, shape_masks, word_positions
from training.mixes import mix_samples
from training.vae import encode_mean

log = logging.getLogger("training.unet")
STAGE_ID = 3
CALIBRATE_WARMUP = 50  # steps of the calibration's own warmup
SD_BETAS = (0.00085, 0.012)  # SD's scaled_linear schedule


def ddpm_scheduler(cfg: UnetConfig) -> DDPMScheduler:
    """The training noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
        beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
    )  # fmt: skip


def sigmas(scheduler: DDPMScheduler) -> torch.Tensor:
    """sigma(t) = sqrt((1 - alpha_bar) / alpha_bar) of each training timestep, rising."""
    alpha_bar = scheduler.alphas_cumprod.double()
    return ((1 - alpha_bar) / alpha_bar).sqrt()


@lru_cache(maxsize=4)
def sd_sigmas(n_steps: int) -> torch.Tensor:
    """sigma(t) of SD's own schedule over n_steps training timesteps."""
    return sigmas(DDPMScheduler(num_train_timesteps=n_steps, beta_start=SD_BETAS[0],
                                beta_end=SD_BETAS[1], beta_schedule="scaled_linear"))


def draw_timesteps(scheduler: DDPMScheduler, n: int, gen: torch.Generator,
                   sd_share: float) -> torch.Tensor:
    """n training timesteps, uniform; with sd_share > 0, that share of them drawn so that
    their noise levels are distributed as uniform timesteps give on SD's schedule (the
    timestep of this schedule with the next sigma up)."""
    n_steps = scheduler.config.num_train_timesteps
    t = torch.randint(0, n_steps, (n,), generator=gen)
    if sd_share <= 0:
        return t
    wanted = sd_sigmas(n_steps)[torch.randint(0, n_steps, (n,), generator=gen)]
    matched = torch.searchsorted(sigmas(scheduler), wanted).clamp(max=n_steps - 1)
    return torch.where(torch.rand(n, generator=gen) < sd_share, matched, t)


def build_unet(cfg: UnetConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=world.IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
    )


# --- the phases, as data ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UnetPhase:
    """One phase of the UNet stage: up to step `end`, under `schedule`."""

    name: str
    end: int
    schedule: Schedule
    uncond_prob: float  # share of captions left empty
    noisy_captions: bool  # captions naming attributes wrongly, ever more often as t falls
    calibrated: bool  # target: the frozen teacher's guided prediction instead of the noise


def unet_phases(cfg: UnetConfig) -> list[UnetPhase]:
    tuned = cfg.steps + cfg.tune_steps
    total = tuned + cfg.calibrate_steps
    return [
        UnetPhase("unet", cfg.steps, Schedule(cfg.lr, cfg.warmup, 0, cfg.steps),
                  cfg.uncond_prob, noisy_captions=False, calibrated=False),
        # the tail of one cosine over phases 1 and 2: a warm restart
        UnetPhase("unet guidance tune", tuned, Schedule(cfg.lr, cfg.warmup, 0, tuned),
                  cfg.tune_uncond_prob, noisy_captions=True, calibrated=False),
        UnetPhase("unet guidance calibration", total,
                  Schedule(cfg.calibrate_lr, CALIBRATE_WARMUP, tuned, total),
                  cfg.uncond_prob, noisy_captions=False, calibrated=True),
    ]  # fmt: skip


# --- the cached pool ----------------------------------------------------------------------


def mislabel(scene: world.Scene, rng: np.random.Generator, rate: float) -> world.Scene:
    """The scene as a noisy caption describes it: each attribute, with probability `rate`,
    replaced by another value. Never a held-out colour x shape pair, never a shape the
    colour of its background. (The geometry stays: only the caption is drawn from this.)"""
    if rate <= 0:
        return scene
    while True:
        attrs = scene.attributes
        for name, options in world.ATTRIBUTE_VALUES.items():
            if rng.random() < rate:
                others = [o for o in options if o != attrs[name]]
                attrs[name] = others[rng.integers(len(others))]
        if world.in_training_split(attrs):
            return dataclasses.replace(scene, **attrs)


def pool_scenes(seed: int, n: int, filler_prob: float = 0.0, caption_noise: float = 0.0
                ) -> tuple[list[world.Scene], list[str]]:
    """The training pool's scenes and captions (cheap: no rendering); `filler_prob` of
    the captions get random filler words, as in the text encoder's training, and with
    `caption_noise` each named attribute is wrong with that probability (see UnetConfig)."""
    rng = step_rng(seed, STAGE_ID, 10**8)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    cap_rng = step_rng(seed, STAGE_ID, 10**8 + 1)
    noise_rng = step_rng(seed, STAGE_ID, 10**8 + 3)
    captions = [world.caption(mislabel(s, noise_rng, caption_noise), cap_rng) for s in scenes]
    fill_rng = step_rng(seed, STAGE_ID, 10**8 + 2)
    return scenes, [add_filler(c, fill_rng, filler_prob) for c in captions]


@torch.no_grad()
def encode_text(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, captions: list[str],
                batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Last hidden states (N, 77, d) as SD's pipeline computes them (max_length padding)."""
    out = []
    for i in tqdm(range(0, len(captions), batch_size), desc="encode text", disable=not progress):
        ids = tokenizer(
            captions[i : i + batch_size], padding="max_length",
            max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
        ).input_ids  # fmt: skip
        out.append(text_encoder(ids).last_hidden_state.half())
    return torch.cat(out)


def build_text_cache(path: Path, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                     seed: int, n: int, filler_prob: float = 0.0,
                     caption_noise: float = 0.0) -> None:
    _, captions = pool_scenes(seed, n, filler_prob, caption_noise)
    states = encode_text(text_encoder, tokenizer, captions)
    empty = encode_text(text_encoder, tokenizer, [""], progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"states": states.contiguous(), "empty": empty.contiguous()}, str(path))


@torch.no_grad()
def build_latent_cache(path: Path, vae: AutoencoderKL, seed: int, n: int,
                       chunk: int = 2048) -> None:
    """Scaled posterior means of the pool images, (N, 4, 8, 8) fp16."""
    scenes, _ = pool_scenes(seed, n)
    out = []
    for i in tqdm(range(0, n, chunk), desc="encode images"):
        images = np.stack([world.render(s) for s in scenes[i : i + chunk]])
        out.append(encode_mean(vae, images_to_tensor(images)) * vae.config.scaling_factor)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": torch.cat(out).half().contiguous()}, str(path))


@torch.no_grad()
def build_mix_cache(path: Path, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                    tokenizer: CLIPTokenizer, seed: int, n: int, filler_prob: float,
                    chunk: int = 2048) -> None:
    """Latents of `n` colour-mix samples and their blended caption states (fp16)."""
    mixes = mix_samples(step_rng(seed, STAGE_ID, 10**8 + 4), n, filler_prob)
    latents = torch.cat([
        encode_mean(vae, images_to_tensor(np.stack([world.render(s) for s in
                                                    mixes.scenes[i : i + chunk]])))
        for i in range(0, n, chunk)
    ]) * vae.config.scaling_factor
    w = torch.tensor(mixes.weights)[:, None, None]
    states = ((1 - w) * encode_text(text_encoder, tokenizer, mixes.captions_a).float()
              + w * encode_text(text_encoder, tokenizer, mixes.captions_b).float())
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.half().contiguous(), "states": states.half().contiguous()},
              str(path))


def build_grounding_cache(path: Path, tokenizer: CLIPTokenizer, seed: int, n: int,
                          filler_prob: float) -> None:
    """The clean captions' shape and background word positions and the shapes' masks."""
    scenes, captions = pool_scenes(seed, n, filler_prob)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"positions": word_positions(tokenizer, captions, scenes).contiguous(),
               "masks": shape_masks(scenes).contiguous()}, str(path))


@dataclasses.dataclass
class Pool:
    """The cached training pool: latents, caption states (clean and, for the guidance
    tune, noisy) and the empty caption's states; the colour-mix samples' latents and
    blended states; the clean captions' grounded word positions and the shapes' masks."""

    latents: torch.Tensor  # (N, 4, 8, 8)
    states: torch.Tensor  # (N, 77, d)
    empty: torch.Tensor  # (1, 77, d)
    noisy_states: torch.Tensor | None  # (N, 77, d)
    mix_latents: torch.Tensor | None = None  # (M, 4, 8, 8)
    mix_states: torch.Tensor | None = None  # (M, 77, d)
    positions: torch.Tensor | None = None  # (N, 2) shape and background word positions
    masks: torch.Tensor | None = None  # (N, 8, 8) the shapes' cover of each latent cell


def load_pool(cfg: UnetConfig, seed: int, workdir: Path, text_encoder: CLIPTextModel,
              tokenizer: CLIPTokenizer, vae: AutoencoderKL, resume: bool) -> Pool:
    """Build (or, resuming, reuse) the latent and text caches and load them."""
    text_path = workdir / "text_cache.safetensors"
    noisy_path = workdir / "text_cache_noisy.safetensors"
    latent_path = workdir / "latent_cache.safetensors"
    mix_path = workdir / "mix_cache.safetensors"
    grounding_path = workdir / "grounding_cache.safetensors"
    noisy = cfg.tune_steps > 0 and cfg.caption_noise > 0
    mixes = cfg.mix_share > 0
    if not (resume and text_path.is_file()):
        build_text_cache(text_path, text_encoder, tokenizer, seed, cfg.pool_size,
                         cfg.filler_prob)
    if noisy and not (resume and noisy_path.is_file()):
        build_text_cache(noisy_path, text_encoder, tokenizer, seed, cfg.pool_size,
                         cfg.filler_prob, cfg.caption_noise)
    if not (resume and latent_path.is_file()):
        build_latent_cache(latent_path, vae, seed, cfg.pool_size)
    if mixes and not (resume and mix_path.is_file()):
        build_mix_cache(mix_path, vae, text_encoder, tokenizer, seed, cfg.mix_pool_size,
                        cfg.filler_prob)
    text = load_file(str(text_path))
    noisy_states = load_file(str(noisy_path))["states"] if noisy else None
    if cfg.grounding > 0 and not (resume and grounding_path.is_file()):
        build_grounding_cache(grounding_path, tokenizer, seed, cfg.pool_size, cfg.filler_prob)
    mix = load_file(str(mix_path)) if mixes else {}
    ground = load_file(str(grounding_path)) if cfg.grounding > 0 else {}
    return Pool(load_file(str(latent_path))["latents"], text["states"], text["empty"],
                noisy_states, mix.get("latents"), mix.get("states"), ground.get("positions"),
                ground.get("masks"))


# --- one step's batch -----------------------------------------------------------------------


class Batch(NamedTuple):
    """One step's data: noisy latents, t, caption states, and the target (the noise, or
    the teacher's calibrated prediction)."""

    latents: torch.Tensor  # (B, 4, 8, 8)
    t: torch.Tensor  # (B,)
    ctx: torch.Tensor  # (B, 77, d)
    target: torch.Tensor  # (B, 4, 8, 8)
    positions: torch.Tensor | None = None  # (B, 2) words to ground, -1: none (grounding.py)
    masks: torch.Tensor | None = None  # (B, 8, 8)


def training_batch(pool: Pool, batch_size: int, seed: int, step: int, uncond_prob: float,
                   noisy_captions: bool, scheduler: DDPMScheduler,
                   mix_share: float = 0.0, sd_share: float = 0.0) -> Batch:
    """One step's batch, the same on a resumed run: round(mix_share * batch_size)
    colour-mix samples last (when the pool has them), pool samples before them. With
    `noisy_captions` (and a pool that has them), a pool sample's caption is a noisy one
    with probability min(1, 2 (1 - t/1000)). `sd_share`: see draw_timesteps."""
    rng = step_rng(seed, STAGE_ID, step)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    n_mix = round(mix_share * batch_size) if pool.mix_latents is not None else 0
    n_pool = batch_size - n_mix
    idx = torch.from_numpy(rng.integers(len(pool.latents), size=n_pool))
    x0 = pool.latents[idx].float()  # (B, 4, 8, 8)
    ctx = pool.states[idx].float()  # (B, 77, d)
    if n_mix:
        mix = torch.from_numpy(rng.integers(len(pool.mix_latents), size=n_mix))
        x0 = torch.cat([x0, pool.mix_latents[mix].float()])
        ctx = torch.cat([ctx, pool.mix_states[mix].float()])
    drop = torch.from_numpy(rng.random(batch_size) < uncond_prob)
    ctx[drop] = pool.empty.float()
    noise = torch.randn(x0.shape, generator=gen)
    t = draw_timesteps(scheduler, batch_size, gen, sd_share)
    if noisy_captions and pool.noisy_states is not None:
        share = (2.0 * (1.0 - t[:n_pool] / scheduler.config.num_train_timesteps)).clamp(max=1.0)
        use = (torch.rand(n_pool, generator=gen) < share) & ~drop[:n_pool]
        ctx[:n_pool][use] = pool.noisy_states[idx[use]].float()
    else:
        use = torch.zeros(n_pool, dtype=torch.bool)
    positions = masks = None
    if pool.positions is not None and pool.masks is not None:
        # grounded: the pool samples with their own clean caption
        positions = torch.full((batch_size, 2), -1, dtype=torch.int16)
        clean = ~drop[:n_pool] & ~use
        positions[:n_pool][clean] = pool.positions[idx[clean]]
        masks = torch.zeros(batch_size, *pool.masks.shape[1:])
        masks[:n_pool] = pool.masks[idx].float()
    return Batch(scheduler.add_noise(x0, noise, t), t, ctx, noise, positions, masks)


@torch.no_grad()
def calibrated_batch(teacher: UNet2DConditionModel, batch: Batch, empty: torch.Tensor,
                     scale: float) -> Batch:
    """The batch with its target replaced by the teacher's guided prediction at `scale`:
    eps_u + scale (eps_c - eps_u) (eps_u where the caption is empty)."""
    uncond = empty.float().expand_as(batch.ctx)
    both = teacher(torch.cat([batch.latents, batch.latents]), torch.cat([batch.t, batch.t]),
                   encoder_hidden_states=torch.cat([batch.ctx, uncond])).sample
    eps_c, eps_u = both.chunk(2)
    return batch._replace(target=eps_u + scale * (eps_c - eps_u))


def unet_loss(unet: UNet2DConditionModel, batch: Batch) -> torch.Tensor:
    """SD's loss: the mean squared error of the predicted noise."""
    eps = unet(batch.latents, batch.t, encoder_hidden_states=batch.ctx).sample
    return ((eps - batch.target) ** 2).mean(dim=(1, 2, 3)).mean()


def teacher_for(workdir: Path, ema: UNet2DConditionModel, fresh: bool) -> UNet2DConditionModel:
    """The guidance calibration's frozen teacher: the EMA weights at the end of the phase
    before it, saved to teacher.safetensors entering the calibration (`fresh`), read
    back from there by a run resumed inside it."""
    path = workdir / "teacher.safetensors"
    teacher = copy.deepcopy(ema).requires_grad_(False).eval()
    if not fresh:
        teacher.load_state_dict(load_file(str(path)))
        return teacher
    state = {k: v.detach().contiguous() for k, v in teacher.state_dict().items()}
    save_file(state, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)
    return teacher


# --- the stage ------------------------------------------------------------------------------


def unet_stage(cfg: UnetConfig, seed: int, workdir: Path, text_encoder: CLIPTextModel,
               tokenizer: CLIPTokenizer, vae: AutoencoderKL, resume: bool = True) -> Stage:
    """The UNet through `unet_phases(cfg)`, on the pool cached in `workdir`; the EMA of its
    weights is what is saved. Entering the calibration, the student (and its EMA) start
    from the teacher, with a fresh optimizer."""
    pool = load_pool(cfg, seed, workdir, text_encoder, tokenizer, vae, resume)
    torch.manual_seed(seed)
    unet = build_unet(cfg, text_encoder.config.hidden_size).train()
    ema = copy.deepcopy(unet).requires_grad_(False)
    kept = keep_attention(unet) if cfg.grounding > 0 else None  # the EMA keeps stock ones
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = ddpm_scheduler(cfg)
    teachers: list[UNet2DConditionModel] = []
    scale = cfg.teacher_guidance / cfg.target_guidance

    def enter_calibration(fresh: bool) -> None:
        teachers.append(teacher_for(workdir, ema, fresh))
        if fresh:
            unet.load_state_dict(teachers[0].state_dict())
            ema.load_state_dict(teachers[0].state_dict())
            opt.state.clear()

    def phase(p: UnetPhase) -> Phase:
        def loss(step: int) -> Losses:
            batch = training_batch(pool, cfg.batch_size, seed, step, p.uncond_prob,
                                   p.noisy_captions, scheduler, cfg.mix_share,
                                   cfg.sd_level_share)
            if p.calibrated:
                batch = calibrated_batch(teachers[0], batch, pool.empty, scale)
            if kept is None or batch.positions is None:
                return unet_loss(unet, batch), {}
            kept.clear()
            mse = unet_loss(unet, batch)
            ground = grounding_loss(kept, batch.positions, batch.masks)
            kept.clear()
            return mse + cfg.grounding * ground, {"mse": mse.item(), "grounding": ground.item()}

        return Phase(p.name, p.end, p.schedule, loss,
                     enter=enter_calibration if p.calibrated else None)

    def update_ema(step: int) -> None:
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1.0 - decay)

    return Stage(model=unet, opt=opt, clipped=list(unet.parameters()),
                 phases=[phase(p) for p in unet_phases(cfg)], extra={"ema": ema},
                 after_step=update_ema, result=lambda: ema)
