"""Attention maps: do they mean something, and what do they cost in memory?

Meaning, on the bundled model: for unseen prompts that name a position (left, right, top,
bottom; the model benchmark's wordings and seeds, which training never used), the share
where the centroid of the shape word's map lies on the same side of the image centre
(along the named axis) as the judge's shape centroid, and the share where the background
colour word's map puts more of its mass outside the judge's shape mask (the judge's shape
template at its centroid and radius) than the shape word's map does.

Memory: peak RSS of a plain run and of a recorded run (maps aggregated as they go), each
in its own process, at 512x512 on the SD-1.5-shaped random model, 2 steps, guidance 7.5.

    python benchmarks/bench_attention.py [--n 100] [--no-memory] [--memory-only]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from sdlab.attention import AttentionRecorder, centroid, mass_outside, upsample
from sdlab.generate import generate
from sdlab.models import load
from sdlab.recipe import GenerateParams
from sdlab.tiny import world
from sdlab.tiny.benchmark import _TEMPLATES, benchmark_prompts
from sdlab.tiny.judge import judge

SIDE_AXIS = {"left": 0, "right": 0, "top": 1, "bottom": 1}


def meaning_case(parts, text: str, seed: int, shape: str, background: str,
                 position: str) -> dict | None:
    """One prompt: the two checks, or None when the judge sees no shape."""
    params = GenerateParams(text, steps=30, seed=seed)
    recorder = AttentionRecorder.for_run(parts, params)
    image = generate(parts, params, [recorder]).images[0]
    seen = judge(image)
    if not seen.found:
        return None
    maps = upsample(recorder.maps(), (image.height, image.width))
    shape_map = maps[recorder.tokens.index(shape)]
    background_map = maps[recorder.tokens.index(background)]
    axis = SIDE_AXIS[position]
    centre = image.width / 2 if axis == 0 else image.height / 2
    side = np.sign(centroid(shape_map)[axis] - centre) == np.sign(seen.centroid[axis] - centre)
    mask = world.render_mask(seen.shape, *seen.centroid, seen.radius, image.width)
    outside = mass_outside(background_map, mask) > mass_outside(shape_map, mask)
    return {"side": bool(side), "background": bool(outside)}


def meaning(n: int) -> dict:
    parts = load("sdlab-tiny")
    prompts = [p for p in benchmark_prompts(4 * n) if p.scene.position in SIDE_AXIS][:n]
    start = time.perf_counter()
    results, by_template = [], defaultdict(list)
    for p in prompts:
        s = p.scene
        case = meaning_case(parts, p.text, p.seed, s.shape, s.background, s.position)
        if case is not None:
            results.append(case)
            by_template[_TEMPLATES[p.template]].append(case)
    share = lambda rows, key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return {
        "prompts": len(prompts), "judged": len(results),
        "shape_word_on_the_judged_side": share(results, "side"),
        "background_word_more_outside_the_shape": share(results, "background"),
        "by_template": {t: {"n": len(rows), "side": share(rows, "side"),
                            "background": share(rows, "background")}
                        for t, rows in by_template.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def memory_child(folder: str, recorded: bool) -> None:
    """One 512x512 run of 2 steps; print its peak RSS in MiB (Linux reports KiB)."""
    parts = load(folder)
    params = GenerateParams("a watercolor painting of an otter", steps=2, height=512,
                            width=512, seed=32)
    callbacks = [AttentionRecorder.for_run(parts, params)] if recorded else []
    start = time.perf_counter()
    generate(parts, params, callbacks)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"recorded": recorded, "peak_rss_mib": round(peak, 1),  # noqa: T201
                      "seconds": round(seconds, 1)}))


def memory() -> dict:
    from sdlab.random_models import build_random_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_random_model(Path(tmp) / "sd15", "sd15")
        rows = {}
        for recorded in (False, True):
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(folder),
                                  *(["--recorded"] if recorded else [])],
                                 check=True, capture_output=True, text=True).stdout
            rows["recorded" if recorded else "plain"] = json.loads(out.strip().splitlines()[-1])
    plain, rec = rows["plain"]["peak_rss_mib"], rows["recorded"]["peak_rss_mib"]
    return {**rows, "increase": round(rec / plain - 1, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--memory-child", metavar="FOLDER")
    parser.add_argument("--recorded", action="store_true")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.recorded)
        return
    result = {}
    if not args.memory_only:
        result["meaning"] = meaning(args.n)
    if not args.no_memory:
        result["memory_512_sd15"] = memory()
    print(json.dumps(result, indent=2))  # noqa: T201 - the benchmark's output
    if "meaning" in result:
        m = result["meaning"]
        print(f"shape word on the judged side: {m['shape_word_on_the_judged_side']:.0%}; "  # noqa: T201
              f"background word more outside the shape: "
              f"{m['background_word_more_outside_the_shape']:.0%} (bars: 80% each)")
    if "memory_512_sd15" in result:
        print(f"peak RSS increase with the recorder: "  # noqa: T201
              f"{result['memory_512_sd15']['increase']:.1%} (bar: 15%)")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
