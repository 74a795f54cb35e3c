"""What the speed options cost in quality.

    python benchmarks/bench_fast.py quality [--n 200] [--json OUT]
        the bundled model over the benchmark's prompts (sdlab.tiny.benchmark: 30 LMS steps,
        guidance 7.5, fixed seeds): judge accuracy (all five attributes and each) of the
        exact run and of each speed setting, and the mean pixel difference to the exact run
    python benchmarks/bench_fast.py psnr FOLDER [--size 256] [--steps 20]
        PSNR of the speed settings' decoded images against the exact run's (e.g. on the
        SD-1.5-shaped random model)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sdlab import vae
from sdlab.cache import FAST
from sdlab.generate import GenerateParams, denoiser, generate, last_record, prepare
from sdlab.models import Parts, load
from sdlab.sampler import denoise
from sdlab.surgery import Conditioning
from sdlab.tiny.benchmark import accuracy, benchmark_prompts

SETTINGS = {
    "exact": {},
    "cache3": {"cache_interval": 3, "cache_branch": 0},
    "cache2": {"cache_interval": 2, "cache_branch": 0},
    "cfg_until_0.5": {"cfg_until": 0.5},
    "cache4": {"cache_interval": 4, "cache_branch": 0},
    "cache5": {"cache_interval": 5, "cache_branch": 0},
    "cache3_cfg0.8": {"cache_interval": 3, "cache_branch": 0, "cfg_until": 0.8},
    "cfg_until_0.8": {"cfg_until": 0.8},
    "fast": FAST,
}


def batched(parts: Parts, params: list[GenerateParams]) -> list[np.ndarray]:
    """The runs of `params` (same settings, own prompts and seeds) as one batch through
    the loop: each prompt's own text states and seeded noise, the denoiser of the recipe."""
    runs = [prepare(parts, p) for p in params]
    text = Conditioning(torch.cat([r.text.cond for r in runs]),
                        torch.cat([r.text.uncond for r in runs]), ())
    scheduler = runs[0].scheduler
    model = denoiser(parts, text, params[0], len(scheduler.timesteps))
    latents = torch.cat([r.latents for r in runs])
    last = last_record(denoise(model, scheduler, latents))
    return [np.asarray(im) for im in vae.to_pil(vae.decode(parts, last.next_latents))]


def quality(n: int, names: list[str], batch: int = 25, exact_file: str | None = None) -> dict:
    parts = load("sdlab-tiny")
    prompts = benchmark_prompts(n)
    images: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    if exact_file and Path(exact_file).is_file():  # the exact run's images, kept from before
        images["exact"] = list(np.load(exact_file)["images"])
    for name in names:
        if name in images:
            continue
        start = time.perf_counter()
        params = [GenerateParams(p.text, steps=30, guidance=7.5, seed=p.seed, scheduler="lms",
                                 **SETTINGS[name]) for p in prompts]
        images[name] = [im for k in range(0, n, batch) for im in batched(parts,
                                                                        params[k:k + batch])]
        seconds[name] = time.perf_counter() - start
        if name == "exact" and exact_file:
            np.savez_compressed(exact_file, images=np.stack(images[name]))
    out = {"prompts": n, "seconds": seconds, "accuracy": {}, "mean_abs_pixel_diff": {}}
    for name, ims in images.items():
        out["accuracy"][name] = accuracy(ims, prompts)
        out["mean_abs_pixel_diff"][name] = float(np.mean(
            [np.abs(a.astype(float) - b.astype(float)).mean()
             for a, b in zip(ims, images["exact"], strict=True)]))
    return out


def psnr(folder: str, size: int, steps: int, names: list[str]) -> dict:
    parts = load(folder)
    base = GenerateParams("a watercolor painting of an otter", steps=steps, height=size,
                          width=size, scheduler="lms")
    decoded = {}
    for name in names:
        params = GenerateParams(**{**base.to_dict(), **SETTINGS[name]})
        decoded[name] = np.asarray(generate(parts, params).images[0]).astype(float)
    out = {}
    for name, image in decoded.items():
        mse = float(np.mean((image - decoded["exact"]) ** 2))
        out[name] = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return {"size": size, "steps": steps, "psnr_db": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["quality", "psnr"])
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    parser.add_argument("--exact-file", help="keep (or reuse) the exact run's images (.npz)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["exact", *[s for s in args.settings.split(",") if s != "exact"]]
    result = (quality(args.n, names, exact_file=args.exact_file) if args.what == "quality"
              else psnr(args.folder, args.size, args.steps, names))
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)  # noqa: T201 - the script's output


if __name__ == "__main__":
    main()
