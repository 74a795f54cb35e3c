"""Quality benchmark of sdlab-tiny: does the picture show what the prompt says?

200 prompts worded unlike any training caption (other templates, word order and filler
words), 40 of them on colour x shape pairs held out of training; fixed seeds, LMS with
30 steps, guidance 7.5 (and 1.0 for contrast); every image read back by the judge.
Also the VAE round trip (PSNR on unseen images) and the time for one 30-step image.

    python -m sdlab.tiny.benchmark [FOLDER] [--n 200] [--no-write]
    python -m sdlab.tiny.benchmark [FOLDER] --graded [--no-write]   # sdlab.tiny.graded

Each keeps the other's result in benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline
from tqdm.auto import tqdm

from sdlab.outputs import atomic_write
from sdlab.tiny import world
from sdlab.tiny.imaging import images_to_tensor, psnr, random_images, tensor_to_images
from sdlab.tiny.judge import ATTRIBUTES, judge

log = logging.getLogger("sdlab.tiny.benchmark")
DEFAULT_FOLDER = Path(__file__).resolve().parent.parent / "assets" / "sdlab-tiny"

# Templates and phrases that never occur in training captions (see world._TEMPLATES).
_TEMPLATES = [
    "a picture of a {size} {color} {shape} {pos}, {bg} backdrop",
    "{bg} backdrop; {size} {color} {shape} {pos}",
    "draw a {color} {shape}, {size}, placed {pos}, over a {bg} background",
    "on a {bg} background there is a {size} {color} {shape} {pos}",
    "{size} {shape} colored {color} {pos} against {bg}",
    "a photo showing one {size} {color} {shape} {pos} with a plain {bg} background",
    "{pos}: a {color} {shape} that is {size}, background {bg}",
    "simple icon, {color} {shape}, {size}, {pos}, on solid {bg}",
]
_POS = {
    "center": ["in the middle of the frame", "in the center of the image", "dead center"],
    "left": ["on the left of the frame", "at the left edge", "on the left hand side"],
    "right": ["on the right of the frame", "at the right edge", "on the right hand side"],
    "top": ["in the top of the frame", "at the top edge", "up at the top"],
    "bottom": ["in the bottom of the frame", "at the bottom edge", "down at the bottom"],
}
# Attribute words are the trained ones (a word never seen in training means nothing to
# the model); what is new is everything around them.
_SIZE = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}


@dataclass(frozen=True)
class Prompt:
    text: str
    scene: world.Scene
    seed: int
    held_out: bool
    template: int = -1  # index into _TEMPLATES

    def training_wording(self) -> Prompt:
        """The same scene and seed, worded as the training captions are (a reference)."""
        s = self.scene
        pos = {"center": "in the center", "left": "on the left", "right": "on the right",
               "top": "at the top", "bottom": "at the bottom"}[s.position]  # fmt: skip
        text = f"a {s.size} {s.color} {s.shape} {pos}, {s.background} background"
        return Prompt(text, s, self.seed, self.held_out, -1)


HELD_OUT_SHARE = 0.2  # of the benchmark's prompts, on held-out colour x shape pairs
MORE_HELD_OUT_SEED = 7


def benchmark_prompts(n: int = 200, held_out_share: float = HELD_OUT_SHARE,
                      seed: int = 2024) -> list[Prompt]:
    """n fixed prompts; the first share of them on held-out colour x shape pairs."""
    rng = np.random.default_rng(seed)
    n_held = int(round(n * held_out_share))
    prompts = []
    held_pairs = sorted(world.HELD_OUT)
    for i in range(n):
        held = i < n_held
        scene = world.sample_scene(rng, "held_out" if held else "train")
        if held:  # cycle through the held-out pairs evenly
            color, shape = held_pairs[i % len(held_pairs)]
            background = scene.background if scene.background != color else scene.color
            scene = world.make_scene(shape, color, background, scene.position, scene.size, rng)
        t_index = int(rng.integers(len(_TEMPLATES)))
        template = _TEMPLATES[t_index]
        pos = _POS[scene.position]
        size = _SIZE[scene.size]
        text = template.format(
            size=size[rng.integers(len(size))], color=scene.color, shape=scene.shape,
            bg=scene.background, pos=pos[rng.integers(len(pos))],
        )  # fmt: skip
        text = text.replace("a orange", "an orange")
        prompts.append(Prompt(text, scene, 10_000 + i, held, t_index))
    return prompts


def load_pipeline(folder: Path | str = DEFAULT_FOLDER) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: StableDiffusionPipeline, texts: list[str], seeds: list[int],
             guidance: float = 7.5, steps: int = 30, batch_size: int = 25) -> list[np.ndarray]:
    """Images (64x64x3 uint8), one per prompt, each from its own seeded generator."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = []
    for i in tqdm(range(0, len(texts), batch_size), desc=f"generate (cfg {guidance})"):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch_size]]
        result = pipe(
            texts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance,
            height=size, width=size, generator=gens, output_type="np",
        )  # fmt: skip
        out += [np.clip(np.rint(im * 255), 0, 255).astype(np.uint8) for im in result.images]
    return out


def accuracy(images: list[np.ndarray], prompts: list[Prompt]) -> dict[str, float]:
    """Per-attribute share the judge reads as prompted, plus all five at once."""
    hits = {k: [] for k in ATTRIBUTES}
    hits["all"] = []
    for image, prompt in zip(images, prompts, strict=True):
        got = judge(image).attributes()
        ok = [got[k] == v for k, v in prompt.scene.attributes.items()]
        for k, v in zip(prompt.scene.attributes, ok, strict=True):
            hits[k].append(v)
        hits["all"].append(all(ok))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


@torch.no_grad()
def vae_psnr(pipe: StableDiffusionPipeline, n: int = 256, seed: int = 777) -> float:
    """Round-trip PSNR (posterior mean) on n images the VAE never saw (all pairs)."""
    images = random_images(np.random.default_rng(seed), n, split="all")
    x = images_to_tensor(images)
    z = pipe.vae.encode(x).latent_dist.mean
    return psnr(images, tensor_to_images(pipe.vae.decode(z).sample))


@torch.no_grad()
def vae_roundtrip_accuracy(
    pipe: StableDiffusionPipeline, prompts: list[Prompt]
) -> dict[str, float]:
    """The judge on VAE round trips of the prompts' true scenes: the most the UNet's
    images could score through this VAE."""
    images = np.stack([world.render(p.scene) for p in prompts])
    z = pipe.vae.encode(images_to_tensor(images)).latent_dist.mean
    recs = tensor_to_images(pipe.vae.decode(z).sample)
    return accuracy(list(recs), prompts)


@torch.no_grad()
def clip_zero_shot(folder: Path, prompts: list[Prompt]) -> dict[str, float]:
    """The shipped CLIP read zero-shot, as CLIP guidance uses it: for each prompt and
    attribute, is the prompt closest to the image of its true scene among the scenes that
    differ only in that attribute?"""
    from sdlab.clip_guidance import clip_for
    from sdlab.models import load

    scorer = clip_for(load(str(folder)))
    if scorer is None:
        return {}
    hits: dict[str, list[bool]] = {k: [] for k in ("color", "background", "shape", "position")}
    for p in prompts:
        text = scorer.text_features(p.text)[0]
        for attr, ok in hits.items():
            values, images = [], []
            for value in world.ATTRIBUTE_VALUES[attr]:
                attrs = {**p.scene.attributes, attr: value}
                if attrs["color"] != attrs["background"]:
                    values.append(value)
                    images.append(world.render(world.make_scene(**attrs)))
            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
            best = int((scorer.image_features(x) @ text).argmax())
            ok.append(values[best] == p.scene.attributes[attr])
    return {k: float(np.mean(v)) for k, v in hits.items()}


def time_one_image(pipe: StableDiffusionPipeline, repeats: int = 3) -> float:
    """Median seconds for one 64x64 image, 30 LMS steps, guidance 7.5, batch 1."""
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        generate(pipe, ["a red circle on a blue background"], [r], guidance=7.5)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run_benchmark(folder: Path | str = DEFAULT_FOLDER, n: int = 200, n_low_guidance: int = 100,
                  write: bool = True) -> dict:
    """Score the model in `folder`; with write, save benchmark.json (and images.png) there."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folder = Path(folder)
    pipe = load_pipeline(folder)
    prompts = benchmark_prompts(n)
    texts, seeds = [p.text for p in prompts], [p.seed for p in prompts]
    images = generate(pipe, texts, seeds, guidance=7.5)
    held = [i for i, p in enumerate(prompts) if p.held_out]
    seen = [i for i, p in enumerate(prompts) if not p.held_out]
    low = generate(pipe, texts[:n_low_guidance], seeds[:n_low_guidance], guidance=1.0)
    # Guidance 7.5 is the benchmark's setting; 3.0 and 5.0 are recorded beside it (the
    # model card names the best as the working guidance).
    mid = generate(pipe, texts, seeds, guidance=3.0)
    five = generate(pipe, texts, seeds, guidance=5.0)
    # The bar's held-out prompts are a fifth of n (standard error ~7 points at n=200), so
    # n more, all on held-out pairs and from another seed, measure them more closely.
    more_held = benchmark_prompts(n, held_out_share=1.0, seed=MORE_HELD_OUT_SEED)
    more_held_images = generate(pipe, [p.text for p in more_held], [p.seed for p in more_held],
                                guidance=7.5)
    plain = [p.training_wording() for p in prompts]
    plain_images = generate(pipe, [p.text for p in plain], seeds, guidance=7.5)
    by_template = {}
    for t, template in enumerate(_TEMPLATES):
        idx = [i for i, p in enumerate(prompts) if p.template == t]
        by_template[template] = {"n": len(idx), **accuracy([images[i] for i in idx],
                                                           [prompts[i] for i in idx])}
    result = {
        "prompts": n,
        "steps": 30,
        "scheduler": "LMSDiscreteScheduler",
        "guidance_7.5": accuracy(images, prompts),
        "guidance_7.5_seen_pairs": accuracy([images[i] for i in seen], [prompts[i] for i in seen]),
        "guidance_7.5_held_out_pairs": accuracy([images[i] for i in held],
                                                [prompts[i] for i in held]),
        "guidance_7.5_more_held_out_pairs": {"n": len(more_held),
                                             **accuracy(more_held_images, more_held)},
        "guidance_7.5_same_prompts_as_1.0": accuracy(images[:n_low_guidance],
                                                     prompts[:n_low_guidance]),
        "guidance_1.0": accuracy(low, prompts[:n_low_guidance]),
        "guidance_7.5_training_wording": accuracy(plain_images, plain),
        "guidance_3.0": accuracy(mid, prompts),
        "guidance_3.0_held_out_pairs": accuracy([mid[i] for i in held], [prompts[i] for i in held]),
        "guidance_5.0": accuracy(five, prompts),
        "guidance_5.0_held_out_pairs": accuracy([five[i] for i in held],
                                                [prompts[i] for i in held]),
        "guidance_7.5_by_template": by_template,
        "vae_psnr_db": vae_psnr(pipe),
        "vae_roundtrip_judge": vae_roundtrip_accuracy(pipe, prompts),
        "clip_zero_shot": clip_zero_shot(folder, prompts),
        "seconds_per_image": time_one_image(pipe),
        "torch_threads": torch.get_num_threads(),
        "examples": [
            {"prompt": p.text, "seed": p.seed, "judge": judge(im).attributes()}
            for p, im in zip(prompts[:: max(1, n // 10)], images[:: max(1, n // 10)], strict=True)
        ],
    }
    if write:
        save_benchmark(folder, result)
    result["_images"] = images
    result["_prompts"] = prompts
    return result


def save_benchmark(folder: Path, result: dict) -> Path:
    """Write benchmark.json, keeping a graded result already there (`--graded` saves it)."""
    path = folder / "benchmark.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    data = {**result, **({"graded": old["graded"]} if "graded" in old else {})}
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def contact_sheet(images: list[np.ndarray], cols: int = 10, scale: int = 2) -> np.ndarray:
    """A grid of images (for looking at results)."""
    rows = (len(images) + cols - 1) // cols
    pad = [np.zeros_like(images[0])] * (rows * cols - len(images))
    tiles = list(images) + pad
    grid = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], 1) for r in range(rows)])
    return grid.repeat(scale, 0).repeat(scale, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--sheet", default=None, help="save a PNG contact sheet of the images")
    parser.add_argument("--graded", action="store_true",
                        help="run the graded-behaviour benchmark (sdlab.tiny.graded) instead; "
                             "saved under 'graded' in benchmark.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.graded:
        from sdlab.tiny.graded import benchmark_folder, summary  # it imports this module

        print(summary(benchmark_folder(args.folder, write=not args.no_write)))  # noqa: T201
        return
    result = run_benchmark(args.folder, n=args.n, n_low_guidance=min(100, args.n),
                           write=not args.no_write)
    if args.sheet:
        from PIL import Image

        Image.fromarray(contact_sheet(result["_images"])).save(args.sheet)
    shown = {k: v for k, v in result.items() if not k.startswith("_") and k != "examples"}
    print(json.dumps(shown, indent=2))  # noqa: T201 - this is the command's output


if __name__ == "__main__":
    main()
