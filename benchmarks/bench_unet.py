"""One UNet forward (the CFG batch of 2) under each variant, interleaved round by round,
medians: the full UNet, the step cache's shallow path per branch, channels_last, and
torch thread counts.

    python benchmarks/bench_unet.py FOLDER [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from sdlab.cache import StepCache
from sdlab.generate import GenerateParams, prepare
from sdlab.models import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="full,shallow0,shallow1,channels_last,threads1")
    args = parser.parse_args()
    parts = load(args.folder)
    run = prepare(parts, GenerateParams("a watercolor painting of an otter", steps=20,
                                        height=args.size, width=args.size))
    x = torch.cat([run.latents] * 2)
    states = torch.cat([run.text.uncond, run.text.cond])
    t = run.scheduler.timesteps[3]
    unet = parts.unet
    threads = torch.get_num_threads()

    def full() -> None:
        unet(x, t, encoder_hidden_states=states, return_dict=False)

    caches = {b: StepCache(unet, 2, b) for b in (0, 1)}
    for cache in caches.values():
        cache(x, t, states, 0)  # keep a deep feature

    def channels_last() -> None:
        unet(x.contiguous(memory_format=torch.channels_last), t,
             encoder_hidden_states=states, return_dict=False)

    def nothing() -> None:
        pass

    # name: (set up, run, tear down); only the run is timed
    variants: dict[str, tuple[Callable[[], object], ...]] = {
        "full": (nothing, full, nothing),
        "shallow0": (nothing, lambda: caches[0].shallow(x, t, states), nothing),
        "shallow1": (nothing, lambda: caches[1].shallow(x, t, states), nothing),
        "channels_last": (lambda: unet.to(memory_format=torch.channels_last), channels_last,
                          lambda: unet.to(memory_format=torch.contiguous_format)),
        "threads1": (lambda: torch.set_num_threads(1), full,
                     lambda: torch.set_num_threads(threads))}
    chosen = args.variants.split(",")
    times: dict[str, list[float]] = {name: [] for name in chosen}
    with torch.no_grad():
        full()  # warm-up
        for _ in range(args.rounds):
            for name in chosen:
                setup, fn, teardown = variants[name]
                setup()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
                teardown()
    medians = {name: statistics.median(v) for name, v in times.items()}
    print(json.dumps({"size": args.size, "threads": threads, "seconds": times,  # noqa: T201
                      "median_s": medians,
                      "relative_to_full": {k: v / medians["full"] for k, v in medians.items()}},
                     indent=2))


if __name__ == "__main__":
    main()
