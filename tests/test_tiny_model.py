"""The bundled sdlab-tiny model: loads as SD, stays small, and draws what it is asked."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

from sdlab.tiny.benchmark import benchmark_prompts
from sdlab.tiny.judge import judge

FOLDER = Path(__file__).resolve().parent.parent / "src" / "sdlab" / "assets" / "sdlab-tiny"
pytestmark = pytest.mark.skipif(
    not (FOLDER / "model_index.json").is_file(), reason="bundled model not trained yet"
)


def test_size_and_layout():
    size = sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file())
    assert size <= 30e6, size
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "clip"):
        assert (FOLDER / sub).is_dir(), sub
    assert (FOLDER / "README.md").is_file()


def test_benchmark_record():
    bench = json.loads((FOLDER / "benchmark.json").read_text())
    assert bench["prompts"] == 200
    assert bench["vae_psnr_db"] >= 28.0
    assert bench["seconds_per_image"] <= 3.0
    assert bench["guidance_7.5_more_held_out_pairs"]["n"] == 200


def test_more_held_out_prompts_are_all_held_out_and_new():
    from sdlab.tiny import world
    from sdlab.tiny.benchmark import MORE_HELD_OUT_SEED

    more = benchmark_prompts(200, held_out_share=1.0, seed=MORE_HELD_OUT_SEED)
    assert all(p.held_out and (p.scene.color, p.scene.shape) in world.HELD_OUT for p in more)
    assert {(p.scene.color, p.scene.shape) for p in more} == set(world.HELD_OUT)
    bar = {p.text for p in benchmark_prompts(200)}
    assert sum(p.text in bar for p in more) < 10  # another seed: other scenes and wordings


def test_generates_what_the_prompt_says():
    """Colour and background follow the prompt (training wording, diffusers' own pipeline,
    the model's working guidance)."""
    from sdlab.demo import BUNDLED_GUIDANCE

    pipe = StableDiffusionPipeline.from_pretrained(str(FOLDER), safety_checker=None)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p.training_wording() for p in benchmark_prompts(200)[40:52]]
    gens = [torch.Generator().manual_seed(p.seed) for p in prompts]
    images = pipe([p.text for p in prompts], num_inference_steps=30,
                  guidance_scale=BUNDLED_GUIDANCE, height=64, width=64, generator=gens,
                  output_type="np").images
    background = color = 0
    for image, prompt in zip(images, prompts, strict=True):
        got = judge((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
        background += got.background == prompt.scene.background
        color += got.color == prompt.scene.color
    assert background >= 10 and color >= 8, (background, color)


def test_preview_map_predicts_colours():
    """preview.json predicts the colours of unseen world images from the VAE's latents
    clearly better than their mean colour does (a linear map is only a preview)."""
    import torch.nn.functional as F
    from PIL import Image

    from sdlab import vae
    from sdlab.models import load
    from sdlab.preview import preview_for
    from sdlab.tiny.imaging import random_images

    parts = load(FOLDER)
    images = [Image.fromarray(a) for a in random_images(np.random.default_rng(99), 32, "all")]
    target = F.avg_pool2d((vae.to_tensor(images) + 1) / 2, 8)  # (N, 3, 8, 8)
    rgb = F.avg_pool2d(preview_for(parts)(vae.encode(parts, images, "mean")), 8)
    fitted = (rgb - target).abs().mean()
    constant = (target.mean(dim=(0, 2, 3), keepdim=True) - target).abs().mean()
    assert fitted < 0.75 * constant, (fitted, constant)


def test_clip_guide_sees_images_as_the_clip_was_trained():
    """The guide's CLIP features of an image equal the tower's on the training
    preprocessing ([-1, 1], imaging.images_to_tensor): clip/ carries its image processor,
    so the guide does not apply OpenAI CLIP's pixel statistics to this CLIP."""
    from sdlab.clip_guidance import clip_for
    from sdlab.models import load
    from sdlab.models import load_split_clip as load_clip
    from sdlab.tiny.imaging import images_to_tensor

    images = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    scorer = clip_for(load(str(FOLDER)))
    with torch.no_grad():
        guide = scorer.image_features(torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)
        out = load_clip(FOLDER).get_image_features(pixel_values=images_to_tensor(images))
    trained = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1)
    assert (guide - trained).abs().max() <= 1e-5
