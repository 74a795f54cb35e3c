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
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPModel

from training.clip import clip_stage, load_tokenizer
from training.config import TinyConfig
from training.export import save_model, text_encoder_from_clip
from training.fit import Stage, fit
from training.unet import unet_stage
from training.vae import decoder_stage, vae_stage
from training.workers import exit_with_parent

log = logging.getLogger("training")


@dataclass
class TrainResult:
    out: Path
    workdir: Path
    seconds: dict[str, float]


def _vae(config: TinyConfig, workdir: Path, resume: bool) -> Stage:
    return vae_stage(config.vae, config.seed)


def _clip(config: TinyConfig, workdir: Path, resume: bool) -> Stage:
    return clip_stage(config.clip, config.seed)


def _unet(config: TinyConfig, workdir: Path, resume: bool) -> Stage:
    vae = AutoencoderKL.from_pretrained(workdir / "vae" / "final").eval()
    clip = CLIPModel.from_pretrained(workdir / "clip" / "final", dtype=torch.float32)
    return unet_stage(config.unet, config.seed, workdir / "unet", text_encoder_from_clip(clip),
                      load_tokenizer(), vae, resume=resume)


def _vae_decoder(config: TinyConfig, workdir: Path, resume: bool) -> Stage:
    vae = AutoencoderKL.from_pretrained(workdir / "vae" / "final")
    return decoder_stage(config.vae, config.seed, vae)


# Each stage's folder under the workdir and how its Stage is built; in side-by-side pairs.
STAGES = {"vae": _vae, "clip": _clip, "unet": _unet, "vae_decoder": _vae_decoder}
PAIRS = (("vae", "clip"), ("unet", "vae_decoder"))


def take_cores_when_done(partner: Path, threads: int) -> Callable[[], None]:
    """A between-steps hook: once the partner stage's folder holds its final model, this
    process takes `threads` torch threads (the cores the partner has freed)."""
    done = partner / "final" / "config.json"

    def check() -> None:
        if torch.get_num_threads() != threads and done.is_file():
            log.info("%s finished: taking %d threads", partner.name, threads)
            torch.set_num_threads(threads)

    return check


def run_stage(name: str, config: TinyConfig, workdir: Path, resume: bool,
              log_level: int = 0, partner: str | None = None) -> float:
    """Train one stage into workdir/name (skipped when resuming a finished one); returns
    its wall seconds. With a side-by-side `partner` stage, it takes config.threads_alone
    threads once the partner has finished."""
    torch.set_num_threads(config.threads)
    if log_level and not logging.getLogger().handlers:  # a fresh worker process
        logging.basicConfig(level=log_level, format="%(asctime)s %(name)s: %(message)s")
    t = time.time()
    folder = workdir / name
    if resume and (folder / "final" / "config.json").is_file():
        log.info("%s: already trained (%s)", name, folder / "final")
    else:
        hook = (take_cores_when_done(workdir / partner, config.threads_alone)
                if partner is not None else None)
        fit(STAGES[name](config, workdir, resume), folder, resume, hook)
    return time.time() - t


def _run_pair(config: TinyConfig, pair: tuple[str, str], workdir: Path,
              resume: bool) -> list[float]:
    if not config.parallel:
        return [run_stage(name, config, workdir, resume) for name in pair]
    level = logging.getLogger().getEffectiveLevel()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx, initializer=exit_with_parent) as pool:
        futures = [pool.submit(run_stage, name, config, workdir, resume, level, partner)
                   for name, partner in zip(pair, pair[::-1], strict=True)]
        return [f.result() for f in futures]


def train_tiny(out: Path, workdir: Path, config: TinyConfig | None = None,
               resume: bool = True) -> TrainResult:
    """Run every stage (resuming where possible) and save the model folder at `out`."""
    config = config or TinyConfig()
    torch.set_num_threads(config.threads)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    seconds: dict[str, float] = {}
    for pair in PAIRS:
        seconds.update(zip(pair, _run_pair(config, pair, workdir, resume), strict=True))
    vae = AutoencoderKL.from_pretrained(workdir / "vae_decoder" / "final")
    clip = CLIPModel.from_pretrained(workdir / "clip" / "final", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(workdir / "unet" / "final")
    save_model(Path(out), vae, clip, unet, config.unet)
    log.info("saved %s (stage seconds: %s)", out, seconds)
    return TrainResult(Path(out), workdir, seconds)
