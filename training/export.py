"""Assemble the trained stages into a diffusers Stable Diffusion folder (sdlab-tiny).

Layout: model_index.json, tokenizer/, text_encoder/, vae/, unet/, scheduler/ (LMS, on the
recipe's betas) as diffusers writes them, weights in fp16 safetensors; plus clip/, the CLIP image
tower (CLIPVisionModelWithProjection) and the text projection, which together with
text_encoder/ rebuild the whole tiny CLIP for scoring and CLIP guidance; and
preview.json, the cheap latent->RGB map fitted on the world's own images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    LMSDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from sdlab.models import load
from sdlab.preview import fit_preview, save_preview
from sdlab.random_models import TOKENIZER_DIR
from sdlab.tiny.imaging import random_images
from training.config import UnetConfig


def lms_scheduler(cfg: UnetConfig) -> LMSDiscreteScheduler:
    """The deep dive's sampler on the schedule the UNet was trained with."""
    return LMSDiscreteScheduler(
        num_train_timesteps=1000, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
        beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
    )  # fmt: skip


def text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """The text tower of a CLIPModel as a standalone CLIPTextModel (SD's text encoder)."""
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval()


def vision_from_clip(clip: CLIPModel) -> CLIPVisionModelWithProjection:
    vision = CLIPVisionModelWithProjection(clip.config.vision_config)
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    vision.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    return vision.eval()


def build_pipeline(vae: AutoencoderKL, text_encoder: CLIPTextModel, unet: UNet2DConditionModel,
                   cfg: UnetConfig, tokenizer: CLIPTokenizer | None = None,
                   ) -> StableDiffusionPipeline:
    """An in-memory StableDiffusionPipeline (LMS, no safety checker) from the parts."""
    tokenizer = tokenizer or CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    return StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=lms_scheduler(cfg), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def image_processor(size: int) -> CLIPImageProcessorPil:
    """The tiny CLIP's preprocessing as a transformers processor: it was trained on
    images scaled to [-1, 1] (imaging.images_to_tensor), i.e. mean 0.5 and std 0.5 on
    [0, 1] -- not OpenAI CLIP's pixel statistics, which a CLIP folder without this file
    is given."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )  # fmt: skip


def edit_config(folder: Path, **changes: Any) -> None:
    """Set keys of folder/config.json (None: remove the key)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_model(out: Path, vae: AutoencoderKL, clip: CLIPModel,
               unet: UNet2DConditionModel, cfg: UnetConfig) -> Path:
    """Write the sdlab-tiny folder: the SD pipeline in fp16 safetensors plus clip/."""
    out = Path(out)
    text_encoder = text_encoder_from_clip(clip)
    pipe = build_pipeline(vae, text_encoder, unet, cfg)
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "clip"):
        shutil.rmtree(out / sub, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    # The tokenizer is the project's CLIP vocabulary asset, byte for byte.
    shutil.rmtree(out / "tokenizer")
    shutil.copytree(TOKENIZER_DIR, out / "tokenizer")
    vision = vision_from_clip(clip)
    vision.to(torch.float16).save_pretrained(out / "clip", safe_serialization=True)
    image_processor(vision.config.image_size).save_pretrained(out / "clip")
    save_file(
        {
            "text_projection.weight": clip.text_projection.weight.detach().half().contiguous(),
            "logit_scale": clip.logit_scale.detach().float().reshape(1).contiguous(),
        },
        str(out / "clip" / "text_projection.safetensors"),
    )
    # Stored in fp16 to stay small, but loaded as fp32 by default (transformers reads the
    # dtype from config.json; diffusers models load as fp32 unless told otherwise).
    for sub in ("text_encoder", "clip"):
        edit_config(out / sub, dtype="float32")
    for sub in ("vae", "unet"):  # where the weights were read from is the training machine's
        edit_config(out / sub, _name_or_path=None)
    write_preview(out)
    return out


def write_preview(folder: Path, n: int = 256, seed: int = 4242) -> Path:
    """Fit the latent->RGB preview map on world images (all pairs) and save preview.json."""
    parts = load(folder)
    images = [Image.fromarray(a) for a in random_images(np.random.default_rng(seed), n, "all")]
    return save_preview(fit_preview(parts, images), Path(folder))
