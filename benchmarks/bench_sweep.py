"""Sweep throughput on the bundled model: cells one at a time (what `sdlab sweep` does)
against cells that share steps, scheduler, size and guidance run as one UNet batch -- and
whether each batched cell stays pixel-identical to its own one-at-a-time run (what
`sdlab generate --from` re-runs). Batching is only worth having if it is.

    .venv/bin/python benchmarks/bench_sweep.py [--cells 16] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sdlab import vae
from sdlab.denoisers import CFGDenoiser, CondDenoiser
from sdlab.generate import prepare
from sdlab.models import BUNDLED_NAME, Parts, load
from sdlab.recipe import GenerateParams, parse
from sdlab.sampler import denoise
from sdlab.sweep import render

PROMPTS = ("a red circle on a white background", "a large blue square on a yellow background",
           "a small green triangle at the top, black background",
           "an orange star on the left of a purple background")


def batched(parts: Parts, cells: list[GenerateParams]) -> list[np.ndarray]:
    """Cells of one steps/scheduler/size/guidance as one batch: each its own seeded noise
    and its own text states, stacked along the batch."""
    runs = [prepare(parts, parse(c)) for c in cells]
    first = runs[0]
    latents = torch.cat([r.latents for r in runs])
    cond = torch.cat([r.text.cond for r in runs])
    if first.text.uncond is None:
        model = CondDenoiser(parts.unet, cond)
    else:
        uncond = torch.cat([r.text.uncond for r in runs])
        model = CFGDenoiser(parts.unet, uncond, cond, cells[0].guidance)
    for record in denoise(model, first.scheduler, latents):
        latents = record.next_latents
    return [np.asarray(im) for im in vae.to_pil(vae.decode(parts, latents))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = load(BUNDLED_NAME)
    cells = [GenerateParams(PROMPTS[k % len(PROMPTS)], seed=k, steps=args.steps)
             for k in range(args.cells)]
    render(parts, cells[0])  # warm up
    start = time.perf_counter()
    single = [np.asarray(render(parts, c)) for c in cells]
    t_single = time.perf_counter() - start
    start = time.perf_counter()
    together = []
    for k in range(0, len(cells), args.batch):
        together += batched(parts, cells[k:k + args.batch])
    t_batched = time.perf_counter() - start
    same = sum(np.array_equal(a, b) for a, b in zip(single, together, strict=True))
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max())
                for a, b in zip(single, together, strict=True))
    print(f"{args.cells} cells, {args.steps} steps, {args.threads} thread(s)")
    print(f"one at a time: {60 * args.cells / t_single:.1f} cells/min")
    print(f"batches of {args.batch}: {60 * args.cells / t_batched:.1f} cells/min")
    print(f"pixel-identical to their one-at-a-time run: {same} of {args.cells} "
          f"(largest difference {worst} of 255)")


if __name__ == "__main__":
    main()
