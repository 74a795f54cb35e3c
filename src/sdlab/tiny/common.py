"""Shared pieces of the sdlab-tiny training stages: config, loss logs, checkpoints, data."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sdlab.tiny import world

log = logging.getLogger("sdlab.tiny")

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer"


@dataclass
class VaeConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    steps: int = 1500
    batch_size: int = 16
    lr: float = 7e-4
    warmup: int = 100
    kl_weight: float = 1e-6
    logvar_init: float = -8.0  # posterior std starts at 0.02: noise must not drown detail
    l1_weight: float = 0.1
    fg_weight: float = 4.0  # extra loss weight on and around the shape (see train_vae)
    eval_every: int = 250
    # The palette's colours pushed apart in latent space: weight of palette_margin_loss and
    # the rms distance (in latent stds) below which a pair is pushed. The closest pairs
    # (red-orange 0.38, yellow-orange 0.44, blue-purple 0.60 without it) were the UNet's
    # colour errors. A gap of 1.0 fixed them but made the blue-loss guide stop working at
    # guidance 7.5; 0.6 pushes only the close pairs and keeps it (the model card).
    palette_margin: float = 0.1
    palette_gap: float = 0.6
    # second phase: the decoder alone, on the frozen encoder's posterior means (it can
    # run beside the UNet stage, which only needs the encoder)
    decoder_steps: int = 1500
    decoder_lr: float = 3e-4
    decoder_warmup: int = 50


@dataclass
class ClipConfig:
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    vision_hidden_size: int = 64
    vision_layers: int = 4
    projection_dim: int = 64
    # Captions are padded to 77 while training, as the pipeline pads them: the padding
    # states are what the UNet reads most, so they are trained too.
    text_len: int = 77
    steps: int = 1000
    batch_size: int = 128  # half base scenes, half siblings differing in one attribute
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    attr_weight: float = 4.0  # weight of the attribute read-out loss (see AttributeHeads)
    filler_prob: float = 0.5  # share of captions with random filler words (see filler.py)
    word_invariance: float = 0.0  # weight of the word-invariance loss (see train_clip)
    invariant_padding: bool = False
    # Weight of the pair-additivity loss (see train_clip.pair_additivity_loss) and how many
    # captions of each batch get their colour x shape square.
    pair_additivity: float = 2.0
    additivity_captions: int = 32
    # Weight of a read-out of every attribute from the padding states (AttributeHeads):
    # without it, pair additivity was had by dropping shape from the padding.
    padding_readout: float = 4.0


@dataclass
class UnetConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    pool_size: int = 40000
    steps: int = 2800
    batch_size: int = 32
    lr: float = 6e-4
    warmup: int = 200
    uncond_prob: float = 0.1
    # Phase 2, the guidance tune: `tune_steps` more steps with noisy captions and more
    # empty ones. The world's captions pin an image down exactly, so a UNet trained only on
    # clean ones learns an unbounded "classifier" p(caption | image) and guidance 7.5
    # overshoots; captions that name each attribute wrongly at `caption_noise` bound it.
    # The learning rate follows the tail of a cosine over steps + tune_steps (a warm
    # restart). tune_steps=0: clean captions only (the first shipped model's recipe).
    tune_steps: int = 2000
    tune_uncond_prob: float = 0.2
    caption_noise: float = 0.2
    # With noise_ramp the noisy captions are used only as t falls (probability
    # min(1, 2 (1 - t/1000)): always below t=500, never at t=1000), clean ones above.
    noise_ramp: bool = True
    # In the guidance tune (and a calibration with noisy captions), this share of the clean
    # captions left (at every t) leaves out the shape's colour or the shape itself
    # (world.partial_caption): the UNet must then draw each from its own word, which is what
    # a colour x shape pair it never saw needs.
    partial_prob: float = 0.0
    # Phase 3, the guidance calibration: `calibrate_steps` more steps in which the EMA
    # weights at the end of the previous phase are a frozen teacher and the conditional
    # prediction learns the teacher's eps_u + (teacher_guidance / target_guidance)
    # (eps_c - eps_u) on clean captions (the empty caption keeps the teacher's eps_u), so
    # that guidance target_guidance here is guidance teacher_guidance there. Its own
    # warmup and cosine from calibrate_lr; the student starts from the teacher's weights
    # with a fresh optimizer. 0: no calibration.
    calibrate_steps: int = 1000
    teacher_guidance: float = 3.5
    target_guidance: float = 7.5
    calibrate_lr: float = 2e-4
    # The teacher (and the student's start) may be a "model soup": the tuned EMA weights with
    # `phase1_share` of the clean phase-1 EMA weights averaged back in. calibrate_noisy: this
    # share of the calibration's captions, at every t, are the tune's noisy ones, their
    # target the true noise (what keeps img2img from repainting the picture at small t).
    phase1_share: float = 0.0
    calibrate_noisy: float = 0.0
    # The share of captions (not the empty one) whose end-token state is replaced by another
    # caption's, in every phase. The end token sums up the whole caption, so a UNet that can
    # read it learns colour x shape pairs as wholes from it and never draws an unseen pair;
    # with it scrambled the UNet must read the words (best with a text encoder whose word
    # and padding states are word-invariant: ClipConfig.word_invariance, invariant_padding).
    end_swap: float = 0.0
    filler_prob: float = 0.5  # as the text encoder was trained
    snr_gamma: float = 0.0  # 0: plain epsilon MSE, as SD (>0: min-SNR weighting)
    ema_decay: float = 0.999


@dataclass
class TinyConfig:
    seed: int = 0
    threads: int = 1
    parallel: bool = True  # run independent stages in two processes (VAE|CLIP, UNet|decoder)
    vae: VaeConfig = field(default_factory=VaeConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)

    @classmethod
    def quick(cls, seed: int = 0) -> TinyConfig:
        """Tiny sizes and a few steps: runs in seconds, for tests."""
        return cls(
            seed=seed,
            parallel=False,
            vae=VaeConfig(
                block_out_channels=(8, 8, 16, 16), norm_num_groups=4, steps=25,
                batch_size=8, lr=3e-3, warmup=5, eval_every=25, decoder_steps=20,
                decoder_lr=1e-3, decoder_warmup=2,
            ),
            clip=ClipConfig(
                hidden_size=32, layers=1, heads=2, vision_hidden_size=32, vision_layers=1,
                projection_dim=32, steps=25, batch_size=32, lr=2e-3, warmup=5,
            ),
            unet=UnetConfig(
                block_out_channels=(32, 32), attention_head_dim=8, pool_size=128, steps=30,
                batch_size=32, lr=2e-3, warmup=5, tune_steps=6, calibrate_steps=4,
            ),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LossLog:
    """Appends one JSON line per logged step to `<stage dir>/log.jsonl`."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def write(self, step: int, **values: float) -> None:
        rec = {"step": step, "time": round(time.time() - self.t0, 2)}
        rec.update({k: float(v) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def read(self) -> list[dict[str, float]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


class ScheduledSteps:
    """Training steps start..total-1 under a progress bar; before each, every parameter
    group's learning rate is set by `lr_at` (warmup, then cosine decay)."""

    def __init__(self, opt: torch.optim.Optimizer, start: int, total: int, base_lr: float,
                 warmup: int, desc: str, origin: int = 0):
        self.opt, self.total, self.base_lr, self.warmup = opt, total, base_lr, warmup
        self.origin = origin  # the step the schedule starts from
        self.bar = tqdm(range(start, total), desc=desc, initial=start, total=total)

    def __iter__(self) -> Iterator[int]:
        for step in self.bar:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(step - self.origin, self.total - self.origin,
                                    self.base_lr, self.warmup)
            yield step

    def show(self, loss: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}")


def step_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    """The data generator for one training step: the same on a resumed run."""
    return np.random.default_rng([seed, stage, step])


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def random_images(rng: np.random.Generator, n: int, split: str = "train") -> np.ndarray:
    return np.stack([world.render(world.sample_scene(rng, split)) for _ in range(n)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR in dB over a batch of uint8 images."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def save_checkpoint(path: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    extra: dict[str, torch.nn.Module] | None = None) -> None:
    """Model (+ extra modules) as safetensors, optimizer state via torch.save (tensors only)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for name, mod in (extra or {}).items():
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().contiguous()
    save_file(tensors, str(path / "weights.tmp"))
    torch.save({"step": step, "opt": opt.state_dict()}, path / "state.tmp")
    (path / "weights.tmp").replace(path / "weights.safetensors")
    (path / "state.tmp").replace(path / "state.pt")


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    extra: dict[str, torch.nn.Module] | None = None) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns the next step (0 if none)."""
    if not (path / "state.pt").is_file() or not (path / "weights.safetensors").is_file():
        return 0
    tensors = load_file(str(path / "weights.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, mod in (extra or {}).items():
        p = name + "."
        mod.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    state = torch.load(path / "state.pt", weights_only=True)
    opt.load_state_dict(state["opt"])
    return int(state["step"])
