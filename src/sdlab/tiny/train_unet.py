"""Stage 3: the denoiser (diffusers UNet2DConditionModel) on 8x8x4 latents, cross-attending
to the frozen text encoder's last hidden states, with SD's noise schedule.

The VAE and text encoder are frozen, so the latents of a pool of world images and the
encoder states of their captions are computed once and cached (fp16): each training step
is then only the UNet. ~10% of captions are replaced by "" for classifier-free guidance;
the loss is SD's plain epsilon MSE over uniformly drawn t; the weights saved are an EMA.
A second phase, the guidance tune (UnetConfig.tune_steps), goes on with captions that name
some attributes wrongly (caption_noise, more often as t falls) and more empty captions:
that bounds what guidance can amplify, so guidance 7.5 no longer overshoots (see the card).
An optional third phase, the guidance calibration (UnetConfig.calibrate_steps), distils the
model into one whose guidance 7.5 is the teacher's guidance `teacher_guidance`.
With UnetConfig.end_swap the end token's state (a summary of the whole caption) is swapped
for another caption's, so that the UNet reads the words rather than the summary.

(min-SNR weighting, gamma 5, was tried first; it gives the small-t steps almost no weight.
That model repainted from the text at small t — a wrong caption at t=10 raised its error
5x — and guidance 7.5 blew up. Plain MSE did not cure either: see the model card.)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from sdlab.tiny import world
from sdlab.tiny.common import (
    LossLog,
    ScheduledSteps,
    UnetConfig,
    images_to_tensor,
    load_checkpoint,
    save_checkpoint,
    step_rng,
)
from sdlab.tiny.filler import add_filler
from sdlab.tiny.train_vae import encode_mean

log = logging.getLogger("sdlab.tiny.unet")
STAGE_ID = 3
CKPT_EVERY = 200


def ddpm_scheduler() -> DDPMScheduler:
    """SD's training noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
    )  # fmt: skip


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


def pool_scenes(seed: int, n: int, filler_prob: float = 0.0, caption_noise: float = 0.0,
                partial: bool = False) -> tuple[list[world.Scene], list[str]]:
    """The training pool's scenes and captions (cheap: no rendering); `filler_prob` of
    the captions get random filler words, as in the text encoder's training, and with
    `caption_noise` each named attribute is wrong with that probability (see UnetConfig).
    partial: every caption leaves out the shape's colour or the shape (half each)."""
    rng = step_rng(seed, STAGE_ID, 10**8)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    cap_rng = step_rng(seed, STAGE_ID, 10**8 + 1)
    noise_rng = step_rng(seed, STAGE_ID, 10**8 + 3)
    said = [mislabel(s, noise_rng, caption_noise) for s in scenes]
    if partial:
        part_rng = step_rng(seed, STAGE_ID, 10**8 + 4)
        captions = [world.partial_caption(s, cap_rng, ("color", "shape")[part_rng.integers(2)])
                    for s in said]
    else:
        captions = [world.caption(s, cap_rng) for s in said]
    fill_rng = step_rng(seed, STAGE_ID, 10**8 + 2)
    return scenes, [add_filler(c, fill_rng, filler_prob) for c in captions]


@torch.no_grad()
def encode_text(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, captions: list[str],
                batch_size: int = 256, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states (N, 77, d) as SD's pipeline computes them (max_length padding),
    and the position of each caption's end token (N,)."""
    out, ends = [], []
    for i in tqdm(range(0, len(captions), batch_size), desc="encode text", disable=not progress):
        ids = tokenizer(
            captions[i : i + batch_size], padding="max_length",
            max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt",
        ).input_ids  # fmt: skip
        out.append(text_encoder(ids).last_hidden_state.half())
        ends.append((ids == tokenizer.eos_token_id).int().argmax(dim=1))
    return torch.cat(out), torch.cat(ends)


def build_text_cache(path: Path, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                     seed: int, n: int, filler_prob: float = 0.0,
                     caption_noise: float = 0.0, partial: bool = False) -> None:
    _, captions = pool_scenes(seed, n, filler_prob, caption_noise, partial)
    states, ends = encode_text(text_encoder, tokenizer, captions)
    empty = encode_text(text_encoder, tokenizer, [""], progress=False)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"states": states.contiguous(), "empty": empty.contiguous(), "ends": ends},
              str(path))


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


def min_snr_weights(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample: epsilon-loss weights of Hang et al. 2023."""
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1.0 - ac)
    return torch.clamp(snr, max=gamma) / snr


@dataclasses.dataclass
class Pool:
    """The cached training pool: latents, caption states (clean and, for the guidance
    tune, noisy and partial), the empty caption's states, and where each caption's end
    token is (clean, noisy, partial)."""

    latents: torch.Tensor
    states: torch.Tensor
    empty: torch.Tensor
    noisy_states: torch.Tensor | None
    partial_states: torch.Tensor | None = None
    ends: tuple[torch.Tensor | None, ...] = (None, None, None)


def load_pool(cfg: UnetConfig, seed: int, workdir: Path, text_encoder: CLIPTextModel,
              tokenizer: CLIPTokenizer, vae: AutoencoderKL, resume: bool) -> Pool:
    """Build (or, resuming, reuse) the latent and text caches and load them."""
    text_path = workdir / "text_cache.safetensors"
    noisy_path = workdir / "text_cache_noisy.safetensors"
    latent_path = workdir / "latent_cache.safetensors"
    partial_path = workdir / "text_cache_partial.safetensors"
    noisy = cfg.tune_steps > 0 and cfg.caption_noise > 0
    partial = cfg.tune_steps > 0 and cfg.partial_prob > 0
    if not (resume and text_path.is_file()):
        build_text_cache(text_path, text_encoder, tokenizer, seed, cfg.pool_size,
                         cfg.filler_prob)
    if noisy and not (resume and noisy_path.is_file()):
        build_text_cache(noisy_path, text_encoder, tokenizer, seed, cfg.pool_size,
                         cfg.filler_prob, cfg.caption_noise)
    if partial and not (resume and partial_path.is_file()):
        build_text_cache(partial_path, text_encoder, tokenizer, seed, cfg.pool_size,
                         cfg.filler_prob, partial=True)
    if not (resume and latent_path.is_file()):
        build_latent_cache(latent_path, vae, seed, cfg.pool_size)
    text = load_file(str(text_path))
    noisy_text = load_file(str(noisy_path)) if noisy else {}
    partial_text = load_file(str(partial_path)) if partial else {}
    if cfg.end_swap > 0 and not all("ends" in c for c in (text, noisy_text, partial_text) if c):
        raise ValueError(f"the text caches in {workdir} predate end_swap (no end-token "
                         "positions): delete text_cache*.safetensors there and resume")
    return Pool(load_file(str(latent_path))["latents"], text["states"], text["empty"],
                noisy_text.get("states"), partial_text.get("states"),
                (text.get("ends"), noisy_text.get("ends"), partial_text.get("ends")))


class Batch(NamedTuple):
    """One step's data: noisy latents, t, caption states, the noise (the target), and
    which captions name some attribute wrongly."""

    latents: torch.Tensor
    t: torch.Tensor
    ctx: torch.Tensor
    noise: torch.Tensor
    said_wrong: torch.Tensor


def training_batch(pool: Pool, cfg: UnetConfig, seed: int, step: int, uncond_prob: float,
                   noisy: float, scheduler: DDPMScheduler, ramp: bool = True) -> Batch:
    """One step's batch, the same on a resumed run: `noisy` of the captions (at most;
    with `ramp` and cfg.noise_ramp, as t falls) are noisy ones."""
    rng = step_rng(seed, STAGE_ID, step)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    idx = torch.from_numpy(rng.integers(len(pool.latents), size=cfg.batch_size))
    x0 = pool.latents[idx].float()  # (B, 4, 8, 8)
    ctx = pool.states[idx].float()  # (B, 77, d)
    drop = torch.from_numpy(rng.random(cfg.batch_size) < uncond_prob)
    ctx[drop] = pool.empty.float()
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
    use = torch.zeros(cfg.batch_size, dtype=torch.bool)
    part = torch.zeros(cfg.batch_size, dtype=torch.bool)
    if noisy > 0 and pool.noisy_states is not None:
        share = torch.full((cfg.batch_size,), float(noisy))
        if ramp and cfg.noise_ramp:  # noisy captions only as t falls
            falling = 2.0 * noisy * (1.0 - t / scheduler.config.num_train_timesteps)
            share = falling.clamp(max=noisy)
        use = (torch.rand(cfg.batch_size, generator=gen) < share) & ~drop
        ctx[use] = pool.noisy_states[idx[use]].float()
        if pool.partial_states is not None:  # of the clean captions left, at every t
            part = (torch.rand(cfg.batch_size, generator=gen) < cfg.partial_prob) & ~drop & ~use
            ctx[part] = pool.partial_states[idx[part]].float()
    if cfg.end_swap > 0:
        swap_ends(ctx, pool, idx, ~drop & (torch.rand(cfg.batch_size, generator=gen)
                                           < cfg.end_swap), use, part, gen)
    return Batch(scheduler.add_noise(x0, noise, t), t, ctx, noise, use)


def swap_ends(ctx: torch.Tensor, pool: Pool, idx: torch.Tensor, swap: torch.Tensor,
              noisy: torch.Tensor, partial: torch.Tensor, gen: torch.Generator) -> None:
    """In place: where `swap`, the caption's end-token state becomes that of another
    caption of the pool (a clean one, drawn at random), at the caption's own end position."""
    clean_ends, noisy_ends, partial_ends = pool.ends
    ends = clean_ends[idx].clone()
    if noisy.any():
        ends[noisy] = noisy_ends[idx[noisy]]
    if partial.any():
        ends[partial] = partial_ends[idx[partial]]
    donors = torch.randint(0, len(pool.states), (len(idx),), generator=gen)
    rows = swap.nonzero().squeeze(1)
    ctx[rows, ends[rows]] = pool.states[donors[rows], clean_ends[donors[rows]]].float()


def train_unet(cfg: UnetConfig, seed: int, workdir: Path, text_encoder: CLIPTextModel,
               tokenizer: CLIPTokenizer, vae: AutoencoderKL,
               resume: bool = True) -> UNet2DConditionModel:
    """Train (or resume, or load when finished) the UNet: `steps` on clean captions, then
    `tune_steps` of the guidance tune and `calibrate_steps` of the guidance calibration
    (see UnetConfig); returns the EMA weights."""
    final = workdir / "final"
    if resume and (final / "config.json").is_file():
        log.info("unet: already trained, loading %s", final)
        return UNet2DConditionModel.from_pretrained(final)
    pool = load_pool(cfg, seed, workdir, text_encoder, tokenizer, vae, resume)

    torch.manual_seed(seed)
    unet = build_unet(cfg, text_encoder.config.hidden_size)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    start = load_checkpoint(workdir / "ckpt", unet, opt, extra={"ema": ema}) if resume else 0
    scheduler = ddpm_scheduler()
    losses = LossLog(workdir / "log.jsonl")
    unet.train()
    tuned = cfg.steps + cfg.tune_steps
    total = tuned + cfg.calibrate_steps
    phases = [  # (first step, end, noisy share (ramp?), empty share, lr (base, warmup,
        # origin), bar)
        (start, cfg.steps, (0.0, False), cfg.uncond_prob, (cfg.lr, cfg.warmup, 0), "unet"),
        (max(start, cfg.steps), tuned, (1.0, True), cfg.tune_uncond_prob,
         (cfg.lr, cfg.warmup, 0), "unet guidance tune"),
        (max(start, tuned), total, (cfg.calibrate_noisy, False), cfg.uncond_prob,
         (cfg.calibrate_lr, 50, tuned), "unet guidance calibration"),
    ]
    teacher = None
    for first, end, (noisy, ramp), uncond_prob, (base_lr, warmup, origin), desc in phases:
        steps = ScheduledSteps(opt, first, end, base_lr, warmup, desc, origin)
        for step in steps:
            batch = training_batch(pool, cfg, seed, step, uncond_prob, noisy, scheduler, ramp)
            if step >= tuned:
                if teacher is None:
                    teacher = load_teacher(workdir, ema, cfg.phase1_share)
                    if step == tuned:  # the student starts from the teacher, optimizer afresh
                        unet.load_state_dict(teacher.state_dict())
                        ema.load_state_dict(teacher.state_dict())
                        opt.state.clear()
                batch = calibrated_batch(teacher, batch, pool.empty,
                                         cfg.teacher_guidance / cfg.target_guidance,
                                         batch.said_wrong)
            loss, mse = _optimizer_step(unet, ema, opt, scheduler, batch, cfg, step)
            losses.write(step, loss=loss, mse=mse)
            steps.show(loss)
            if step + 1 == cfg.steps and cfg.phase1_share > 0:
                _save_state(ema, workdir / "phase1.safetensors")
            if (step + 1) % CKPT_EVERY == 0 or step + 1 in (cfg.steps, tuned):
                save_checkpoint(workdir / "ckpt", step + 1, unet, opt, extra={"ema": ema})
                log.info("%s step %d: loss %.4f", desc, step + 1, loss)
    ema.save_pretrained(final)
    return ema


def _save_state(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)


def load_teacher(workdir: Path, ema: UNet2DConditionModel,
                 phase1_share: float = 0.0) -> UNet2DConditionModel:
    """The guidance calibration's frozen teacher: the EMA weights at the end of the phase
    before it, with `phase1_share` of the phase-1 EMA weights (phase1.safetensors) averaged
    back in; saved the first time (so that a run resumed inside the calibration finds it)."""
    path = workdir / "teacher.safetensors"
    teacher = copy.deepcopy(ema).requires_grad_(False).eval()
    if path.is_file():
        teacher.load_state_dict(load_file(str(path)))
        return teacher
    if phase1_share > 0:
        phase1 = load_file(str(workdir / "phase1.safetensors"))
        tuned = teacher.state_dict()
        teacher.load_state_dict({k: torch.lerp(v, phase1[k].to(v.dtype), phase1_share)
                                 for k, v in tuned.items()})
    _save_state(teacher, path)
    return teacher


@torch.no_grad()
def calibrated_batch(teacher: UNet2DConditionModel, batch: tuple[torch.Tensor, ...],
                     empty: torch.Tensor, scale: float,
                     keep: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The batch with its target noise replaced by the teacher's guided prediction at
    `scale`: eps_u + scale (eps_c - eps_u) (eps_u where the caption is empty); where `keep`
    (captions that name something wrongly) the target stays the true noise."""
    noisy, t, ctx, noise = batch[:4]
    uncond = empty.float().expand_as(ctx)
    both = teacher(torch.cat([noisy, noisy]), torch.cat([t, t]),
                   encoder_hidden_states=torch.cat([ctx, uncond])).sample
    eps_c, eps_u = both.chunk(2)
    target = eps_u + scale * (eps_c - eps_u)
    if keep is not None and keep.any():
        target[keep] = noise[keep]
    return noisy, t, ctx, target


def _optimizer_step(unet: UNet2DConditionModel, ema: UNet2DConditionModel,
                    opt: torch.optim.Optimizer, scheduler: DDPMScheduler,
                    batch: tuple[torch.Tensor, ...], cfg: UnetConfig,
                    step: int) -> tuple[float, float]:
    """One epsilon-prediction step (the target: the noise, or the teacher's calibrated
    prediction) and the EMA update; returns (loss, plain MSE)."""
    noisy, t, ctx, noise = batch[:4]
    eps = unet(noisy, t, encoder_hidden_states=ctx).sample
    per_sample = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
    if cfg.snr_gamma > 0:
        loss = (min_snr_weights(scheduler, t, cfg.snr_gamma) * per_sample).mean()
    else:
        loss = per_sample.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    decay = min(cfg.ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1.0 - decay)
    return loss.item(), per_sample.mean().item()
