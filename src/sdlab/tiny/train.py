"""Train sdlab-tiny end to end, in SD's stages, and save the diffusers folder.

    1. VAE (encoder + decoder)        | 2. tiny CLIP, contrastive     (side by side)
    3. UNet on cached latents + text  | 4. VAE decoder fine-tune      (side by side)

Stages 3 and 4 only share the frozen encoder, so with `parallel` each pair runs in two
processes, one core each. Each stage keeps its checkpoints, loss log (log.jsonl) and
final weights in its own folder under `workdir`; a resumed run skips finished stages
and continues the others from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPModel

from sdlab.tiny.common import TinyConfig
from sdlab.tiny.export import save_model, text_encoder_from_clip
from sdlab.tiny.train_clip import load_tokenizer, train_clip
from sdlab.tiny.train_unet import train_unet
from sdlab.tiny.train_vae import finetune_decoder, train_vae

log = logging.getLogger("sdlab.tiny")


@dataclass
class TrainResult:
    out: Path
    workdir: Path
    seconds: dict[str, float]


def _setup(config: TinyConfig, log_level: int) -> None:
    torch.set_num_threads(config.threads)
    if log_level and not logging.getLogger().handlers:  # a fresh worker process
        logging.basicConfig(level=log_level, format="%(asctime)s %(name)s: %(message)s")


def _vae_stage(config: TinyConfig, workdir: Path, resume: bool, log_level: int = 0) -> float:
    _setup(config, log_level)
    t = time.time()
    train_vae(config.vae, config.seed, workdir / "vae", resume=resume)
    return time.time() - t


def _clip_stage(config: TinyConfig, workdir: Path, resume: bool, log_level: int = 0) -> float:
    _setup(config, log_level)
    t = time.time()
    train_clip(config.clip, config.seed, workdir / "clip", resume=resume)
    return time.time() - t


def _unet_stage(config: TinyConfig, workdir: Path, resume: bool, log_level: int = 0) -> float:
    _setup(config, log_level)
    t = time.time()
    vae = AutoencoderKL.from_pretrained(workdir / "vae" / "final").eval()
    clip = CLIPModel.from_pretrained(workdir / "clip" / "final", dtype=torch.float32)
    train_unet(config.unet, config.seed, workdir / "unet", text_encoder_from_clip(clip),
               load_tokenizer(), vae, resume=resume)
    return time.time() - t


def _decoder_stage(config: TinyConfig, workdir: Path, resume: bool, log_level: int = 0) -> float:
    _setup(config, log_level)
    t = time.time()
    vae = AutoencoderKL.from_pretrained(workdir / "vae" / "final")
    finetune_decoder(config.vae, config.seed, workdir / "vae_decoder", vae, resume=resume)
    return time.time() - t


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """In a stage worker: exit as soon as the process that started it is gone, so that a
    killed `train-tiny` does not leave a stage training (and writing its checkpoints and
    log) behind it, beside the run that resumes it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _run_pair(config: TinyConfig, first, second, workdir: Path, resume: bool) -> list[float]:
    if not config.parallel:
        return [first(config, workdir, resume), second(config, workdir, resume)]
    level = logging.getLogger().getEffectiveLevel()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx, initializer=exit_with_parent) as pool:
        futures = [pool.submit(f, config, workdir, resume, level) for f in (first, second)]
        return [f.result() for f in futures]


def train_tiny(out: Path, workdir: Path, config: TinyConfig | None = None,
               resume: bool = True) -> TrainResult:
    """Run every stage (resuming where possible) and save the model folder at `out`."""
    config = config or TinyConfig()
    _setup(config, 0)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    seconds: dict[str, float] = {}
    seconds["vae"], seconds["clip"] = _run_pair(config, _vae_stage, _clip_stage, workdir, resume)
    seconds["unet"], seconds["vae_decoder"] = _run_pair(
        config, _unet_stage, _decoder_stage, workdir, resume
    )
    vae = AutoencoderKL.from_pretrained(workdir / "vae_decoder" / "final")
    clip = CLIPModel.from_pretrained(workdir / "clip" / "final", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(workdir / "unet" / "final")
    save_model(Path(out), vae, clip, unet)
    log.info("saved %s (stage seconds: %s)", out, seconds)
    return TrainResult(Path(out), workdir, seconds)
