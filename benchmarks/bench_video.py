"""A progression video at full size: the cheap linear preview against decoding both frames of
every step with the VAE, as the deep dive did.

    python benchmarks/bench_video.py [--size 512] [--steps 30] [--fast]

Runs on the SD-1.5-shaped random-weight model (speed does not depend on weight values). The
preview run is timed end to end (generation, one frame a step, the MP4). Decoding both frames
of one step with the VAE is timed once and counted for every step: the deep dive's way costs
the same generation plus that decode per step (a full run of it at 512², 30 steps, is about
half an hour of decoding on this machine's CPU) -- the deep dive decoded the two frames one
by one; decoding them in one batch is reported too. With `--fast` the preview video is also
timed with the `--fast` preset, against the same deep-dive baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from sdlab import vae
from sdlab.cache import FAST
from sdlab.generate import generate
from sdlab.models import Parts, load
from sdlab.preview import decoder_for
from sdlab.random_models import build_random_model
from sdlab.recipe import GenerateParams
from sdlab.sampler import StepRecord
from sdlab.trace import VideoFrames, progression_frame, write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--fast", action="store_true", help="Also time the --fast preset.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdlab-video-"))
    parts = load(build_random_model(work / "sd15", "sd15"))
    params = GenerateParams("a watercolor painting of an otter", steps=args.steps,
                            height=args.size, width=args.size)
    kept: list[StepRecord] = []

    def keep_last(record: StepRecord) -> None:
        kept[:] = [record]

    preview_total = preview_video(parts, params, work / "preview.mp4", keep_last)
    record = kept[0]
    start = time.perf_counter()
    progression_frame(decoder_for(parts, "full"), record)  # both frames in one VAE batch
    pair = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():  # the deep dive's way: each frame decoded on its own
        vae.decode(parts, record.latents[:1])
        vae.decode(parts, record.x0_pred[:1])
    separate = time.perf_counter() - start
    print(f"{args.size}x{args.size}, {args.steps} steps, torch threads "
          f"{torch.get_num_threads()}")
    print(f"preview video, end to end: {preview_total:.1f} s")
    print(f"VAE decode of both frames of one step: {separate:.1f} s one by one (the deep "
          f"dive's way), {pair:.1f} s in one batch")
    for name, seconds in (("one by one", separate), ("in one batch", pair)):
        full_total = preview_total + args.steps * seconds
        print(f"the same run + {args.steps} decodes of both frames {name}: {full_total:.1f} s;"
              f" the preview is {full_total / preview_total:.2f}x faster")
    full_total = preview_total + args.steps * separate
    if args.fast:
        fast = preview_video(parts, replace(params, **FAST), work / "fast.mp4")
        print(f"preview video with --fast, end to end: {fast:.1f} s; speed-up against the "
              f"deep dive's way: {full_total / fast:.2f}x")


def preview_video(parts: Parts, params: GenerateParams, path: Path,
                  *callbacks: Callable[[StepRecord], None]) -> float:
    """Seconds for the run with one linear-preview frame a step, and its MP4."""
    start = time.perf_counter()
    frames = VideoFrames(decoder_for(parts, "approx"))
    generate(parts, params, [frames, *callbacks])
    write_video(frames.frames, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
