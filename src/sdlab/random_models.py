"""Random-weight Stable Diffusion models in the diffusers layout, for tests and benchmarks.

`tiny` exercises every code path in milliseconds; `sd15` has the published SD 1.5 shapes
(860 M-parameter UNet) to measure speed and memory honestly. Both use the real CLIP
vocabulary, so token ids are those of real SD.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdlab.schedule import SD1_SCHEDULER_CONFIG

TOKENIZER_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"


SHAPES = {
    "tiny": {
        "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=4, projection_dim=32),
        "vae": dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
                    sample_size=64),
        "unet": dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                     cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16),
    },
    "sd15": {
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu"),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                    sample_size=512),
        "unet": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                     sample_size=64, cross_attention_dim=768, attention_head_dim=8),
    },
}


def build_random_model(folder: str | Path, shape: str = "tiny", seed: int = 0,
                       prediction_type: str = "epsilon") -> Path:
    """Write a random-weight SD model (diffusers layout, safetensors) to `folder`."""
    folder = Path(folder)
    spec = SHAPES[shape]
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG untouched
        torch.manual_seed(seed)
        text_encoder, vae, unet = _random_parts(spec)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    _write_configs(folder, prediction_type)
    return folder


def _random_parts(spec: dict) -> tuple[CLIPTextModel, AutoencoderKL, UNet2DConditionModel]:
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, **spec["text"]))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
        up_block_types=("UpDecoderBlock2D",) * len(spec["vae"]["block_out_channels"]),
        **spec["vae"])
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
    return text_encoder, vae, unet


def _write_configs(folder: Path, prediction_type: str) -> None:
    # written as SD publishes it (not save_pretrained, which adds every default)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {**SD1_SCHEDULER_CONFIG, "prediction_type": prediction_type}, indent=2))
    shutil.copytree(TOKENIZER_DIR, folder / "tokenizer", dirs_exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
