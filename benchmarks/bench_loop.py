"""Speed of sdlab's open loop against diffusers' pipeline, side by side, on an SD-1.5-shaped
random-weight model (860 M-parameter UNet), and the cost of guidance's two decoders.

    python benchmarks/bench_loop.py --size 256 --steps 3

Prints seconds per run and the ratio sdlab / diffusers (1.00 = the same speed). Timings
on a busy machine wander; the ratio of runs made side by side is what to read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from sdlab.generate import GenerateParams, generate
from sdlab.models import load
from sdlab.random_models import build_random_model
from sdlab.schedule import make_scheduler


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--guide", action="store_true", help="also time guidance decoders")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_random_model(Path(tmp) / "sd15", "sd15")
        parts = load(folder)
        params = GenerateParams("a watercolor painting of an otter", steps=args.steps,
                                height=args.size, width=args.size)
        pipe = StableDiffusionPipeline(
            vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
            unet=parts.unet, scheduler=make_scheduler("lms", parts.scheduler_config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def ours() -> None:
            generate(parts, params)

        def reference() -> None:
            pipe(params.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
                 generator=torch.Generator().manual_seed(32))

        reference()  # warm both paths up once, then interleave so load changes hit both
        ours()
        t_ours, t_ref = float("inf"), float("inf")
        for _ in range(args.repeat):
            t_ref = min(t_ref, timed(reference, 1))
            t_ours = min(t_ours, timed(ours, 1))
        print(f"{args.size}², {args.steps} steps: sdlab {t_ours:.1f} s, diffusers {t_ref:.1f} s, "
              f"ratio {t_ours / t_ref:.2f}")
        if args.guide:
            for decoder in ("approx", "full"):
                guided = GenerateParams(params.prompt, steps=args.steps, height=args.size,
                                        width=args.size, guide=("blue:200",), guide_every=1,
                                        guide_decoder=decoder)
                t = timed(lambda g=guided: generate(parts, g), 1)
                print(f"blue guidance every step, decoder {decoder}: {t:.1f} s "
                      f"({(t - t_ours) / args.steps:.1f} s per guided step)")


if __name__ == "__main__":
    main()
