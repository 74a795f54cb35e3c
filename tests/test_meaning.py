"""Meaning checks on the bundled model: the deep dive's tricks do what they say, read back
by the judge or measured in colour -- not just "it ran"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab import vae
from sdlab.demo import BUNDLED_GUIDANCE
from sdlab.generate import GenerateParams, generate
from sdlab.models import BUNDLED_NAME, Parts, load
from sdlab.text import encode_by_hand
from sdlab.tiny import world
from sdlab.tiny.judge import judge

# The benchmark's 30 LMS steps: at 20, "a large red circle on a black background" (guidance
# 7.5) got its background right in 4-5 of 8 seeds, at 30 and 50 in 8 of 8.
STEPS = 30
# The bundled model's working guidance (demo.BUNDLED_GUIDANCE; its card).
GUIDANCE = BUNDLED_GUIDANCE


@pytest.fixture(scope="module")
def bundled() -> Parts:
    return load(BUNDLED_NAME)


def test_swap_red_for_blue_makes_the_shape_blue(bundled: Parts) -> None:
    prompt = "a red circle on a white background"
    def reading(seed: int, **edits: tuple[str, ...]) -> str | None:
        params = GenerateParams(prompt, steps=STEPS, seed=seed, guidance=GUIDANCE, **edits)
        return judge(generate(bundled, params).images[0]).color

    plain = [reading(s) for s in range(3)]
    swapped = [reading(s, swap=("red=blue",)) for s in range(3)]
    assert plain.count("red") >= 2
    assert swapped.count("blue") >= 2


def blue_channel(image: Image.Image) -> float:
    return float(np.asarray(image, dtype=np.float32)[..., 2].mean())


def test_blue_loss_guidance_makes_the_image_bluer(bundled: Parts) -> None:
    prompt = "a yellow triangle on a orange background"
    base = dict(steps=STEPS, seed=1, guidance=GUIDANCE)
    plain = blue_channel(generate(bundled, GenerateParams(prompt, **base)).images[0])
    full = blue_channel(generate(bundled, GenerateParams(
        prompt, **base, guide=("blue:200",), guide_every=2, guide_decoder="full")).images[0])
    approx = blue_channel(generate(bundled, GenerateParams(
        prompt, **base, guide=("blue:200",), guide_every=2, guide_decoder="approx")).images[0])
    assert full - plain > 25  # out of 255
    assert approx - plain >= 0.8 * (full - plain)


def test_manual_encoder_equals_the_text_encoder(bundled: Parts) -> None:
    prompt = "a small purple star at the bottom, yellow backdrop"
    ids = bundled.tokenizer(prompt, padding="max_length", max_length=77,
                            return_tensors="pt").input_ids
    with torch.no_grad():
        reference = bundled.text_encoder(ids)[0]
    assert (encode_by_hand(bundled, [prompt]) - reference).abs().max() <= 1e-5


def test_vae_round_trip_meets_the_model_card(bundled: Parts) -> None:
    rng = np.random.default_rng(123)
    psnrs = []
    for _ in range(8):
        image = Image.fromarray(world.render(world.sample_scene(rng, "all")))
        psnrs.append(vae.roundtrip(bundled, image).psnr)
    assert np.mean(psnrs) >= 28.0


def test_demo_prompts_come_out_as_asked(tmp_path) -> None:
    from sdlab.demo import IMAGES_PER_PROMPT, PROMPTS, run_demo

    results = run_demo(tmp_path)
    assert len(results) == len(PROMPTS) * IMAGES_PER_PROMPT
    right = {prompt: 0 for prompt in PROMPTS}
    shape_and_background = {prompt: 0 for prompt in PROMPTS}
    for _, note in results:
        prompt = next(p for p in PROMPTS if note.startswith(p))
        right[prompt] += "(wrong)" not in note
        attributes = note.split("judge: ")[1].split(", ")
        shape_and_background[prompt] += not any(
            a.startswith(("shape=", "background=")) and a.endswith("(wrong)") for a in attributes)
    # Every prompt's shape and background drawn as asked at least once, and most draws right
    # in all (the shipped model: 15 of 20 on one torch thread; its orange star on purple
    # comes out yellow in all four draws, its orange leaning yellow on coloured backgrounds).
    assert all(n >= 1 for n in shape_and_background.values()), shape_and_background
    assert sum(right.values()) >= 0.65 * len(results), right
