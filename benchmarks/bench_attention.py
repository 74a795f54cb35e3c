"""Attention maps: do they mean something, and what do they cost in memory?

Meaning, on the bundled model (30 LMS steps, guidance 7.5): for unseen prompts that name a
position (left, right, top, bottom; the model benchmark's unseen wordings, which training
never used), the share where the centroid of the shape word's map lies on the same side of
the image centre (along the named axis) as the judge's shape centroid, and the share where
the background colour word's map puts more of its mass outside the judge's shape mask (the
judge's shape template at its centroid and radius) than the shape word's map does.

Two sets of 100: `dev` (the generator with another seed, texts not in the test set, image
seeds from 20000) to choose the aggregation on, and `test` (the model benchmark's prompts
and seeds) to measure the choice. Each run records every layer's map at every step once,
and every aggregation is computed from it: UNet blocks (all, down, mid, up) x steps (all,
15 to the end) x upsampling (bilinear to the latent grid; bicubic to the image size, as the
DAAM paper does). The table marks the library's default with *.

Memory: peak RSS of a plain run and of a recorded run (maps aggregated as they go), each
in its own process, at 512x512 on the SD-1.5-shaped random model, 2 steps, guidance 7.5.

    python benchmarks/bench_attention.py [--n 100] [--sets dev,test] [--no-memory]
                                         [--memory-only]
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sdlab.attention import (
    BLOCKS,
    DEFAULT_BLOCKS,
    DEFAULT_UPSAMPLING,
    UPSAMPLING,
    AttentionRecorder,
    block_of,
    centroid,
    layer_maps,
    mass_outside,
    normalise_maps,
    parse_blocks,
    upsample,
)
from sdlab.generate import generate
from sdlab.models import load
from sdlab.recipe import GenerateParams
from sdlab.tiny import world
from sdlab.tiny.benchmark import _TEMPLATES, Prompt, benchmark_prompts
from sdlab.tiny.judge import judge

SIDE_AXIS = {"left": 0, "right": 0, "top": 1, "bottom": 1}
DEV_SEED = 11  # the development prompts' generator seed (the test prompts': 2024)
DEV_IMAGE_SEED = 20_000  # their image seeds start here (the test prompts': 10_000)
# The aggregations compared: UNet blocks x loop steps x upsampling of each layer's map
# (bilinear to the latent grid, or bicubic to the image size as the DAAM paper does).
BLOCK_CHOICES = ("all", "down", "mid", "up")
STEP_CHOICES = {"all": (0, None), "15:": (15, None)}
UPSAMPLING_CHOICES = UPSAMPLING


class LayerRecorder(AttentionRecorder):
    """Keeps every layer's entries at its own grid, per step, so that each aggregation can
    be computed from one run."""

    def _reset(self) -> None:
        super()._reset()
        self.raw: list[list[tuple[str, torch.Tensor]]] = []
        self._layers: list[tuple[str, torch.Tensor]] = []

    def add_layer(self, probs: torch.Tensor, name: str = "") -> None:
        self._layers.append((name, self.entries(probs)))

    def __call__(self, record) -> None:
        self.raw.append(self._layers)
        self._layers = []


def aggregate(rec: LayerRecorder, blocks: str, steps: tuple[int, int | None],
              upsampling: str, size: tuple[int, int]) -> torch.Tensor:
    """(tokens, H, W) maps at the image size, normalised per token, with one aggregation
    (the library's own `layer_maps`)."""
    chosen = parse_blocks(blocks)
    scale = size[0] // rec._grid[0] if upsampling == "bicubic" else 1
    grid = (rec._grid[0] * scale, rec._grid[1] * scale)
    total = None
    for i, layers in enumerate(rec.raw):
        if i < steps[0] or (steps[1] is not None and i >= steps[1]):
            continue
        for name, entries in layers:
            if block_of(name) in chosen:
                m = layer_maps(entries, rec._grid, grid, upsampling)
                total = m if total is None else total + m
    return upsample(normalise_maps(total), size)


def judge_maps(maps: torch.Tensor, tokens, seen, shape: str, background: str,
               position: str, size: int) -> dict:
    """The two checks on one prompt's maps."""
    shape_map = maps[tokens.index(shape)]
    background_map = maps[tokens.index(background)]
    axis = SIDE_AXIS[position]
    centre = size / 2
    side = np.sign(centroid(shape_map)[axis] - centre) == np.sign(seen.centroid[axis] - centre)
    mask = world.render_mask(seen.shape, *seen.centroid, seen.radius, size)
    outside = mass_outside(background_map, mask) > mass_outside(shape_map, mask)
    return {"side": bool(side), "background": bool(outside)}


def candidates() -> list[tuple[str, str, str]]:
    return [(b, s, u) for b in BLOCK_CHOICES for s in STEP_CHOICES for u in UPSAMPLING_CHOICES]


def name_of(candidate: tuple[str, str, str]) -> str:
    return f"layers={candidate[0]} steps={candidate[1]} {candidate[2]}"


def prompt_sets(n: int) -> dict[str, list[Prompt]]:
    """The test prompts (the model benchmark's unseen wordings naming a side) and the
    development prompts (the same generator, another seed; other texts, other seeds)."""
    test = [p for p in benchmark_prompts(4 * n) if p.scene.position in SIDE_AXIS][:n]
    texts = {p.text for p in test}
    dev = [replace(p, seed=DEV_IMAGE_SEED + k)
           for k, p in enumerate(benchmark_prompts(8 * n, seed=DEV_SEED))
           if p.scene.position in SIDE_AXIS and p.text not in texts][:n]
    return {"dev": dev, "test": test}


def evaluate(parts, prompts: list[Prompt]) -> dict:
    """Every aggregation on one prompt set: the two shares, overall and per template."""
    rows: dict[str, list[dict]] = defaultdict(list)
    templates: dict[str, list[str]] = defaultdict(list)
    for p in prompts:
        s = p.scene
        params = GenerateParams(p.text, steps=30, seed=p.seed)
        rec = LayerRecorder.for_run(parts, params)
        image = generate(parts, params, [rec]).images[0]
        seen = judge(image)
        if not seen.found:
            continue
        size = (image.height, image.width)
        for c in candidates():
            maps = aggregate(rec, c[0], STEP_CHOICES[c[1]], c[2], size)
            case = judge_maps(maps, rec.tokens, seen, s.shape, s.background, s.position,
                              image.width)
            rows[name_of(c)].append(case)
            templates[name_of(c)].append(_TEMPLATES[p.template])
    share = lambda cases, key: float(np.mean([r[key] for r in cases]))  # noqa: E731
    out = {}
    for name, cases in rows.items():
        by_template = defaultdict(list)
        for t, case in zip(templates[name], cases, strict=True):
            by_template[t].append(case)
        out[name] = {
            "judged": len(cases), "side": share(cases, "side"),
            "background": share(cases, "background"),
            "by_template": {t: {"n": len(v), "side": share(v, "side"),
                                "background": share(v, "background")}
                            for t, v in by_template.items()},
        }
    return out


def meaning(n: int, sets: tuple[str, ...] = ("dev", "test")) -> dict:
    parts = load("sdlab-tiny")
    chosen = prompt_sets(n)
    result = {}
    for key in sets:
        start = time.perf_counter()
        result[key] = {"prompts": len(chosen[key]), "by_aggregation": evaluate(parts, chosen[key]),
                       "seconds": round(time.perf_counter() - start, 1)}
    return result


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


def print_table(meaning: dict) -> None:
    """One line per aggregation: shape word on the judged side, background word more
    outside the shape, on each set (bars: 80% each); * marks the library's default."""
    default = name_of((",".join(DEFAULT_BLOCKS) if DEFAULT_BLOCKS != BLOCKS else "all",
                       "all", DEFAULT_UPSAMPLING))
    sets = list(meaning)
    print("aggregation".ljust(36) + "".join(f"{k}: side  bg   ".rjust(18) for k in sets))  # noqa: T201
    for c in candidates():
        name = name_of(c)
        cells = "".join(f"{meaning[k]['by_aggregation'][name]['side']:>11.0%}"
                        f"{meaning[k]['by_aggregation'][name]['background']:>6.0%} "
                        for k in sets)
        print(("* " if name == default else "  ") + name.ljust(34) + cells)  # noqa: T201


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--memory-child", metavar="FOLDER")
    parser.add_argument("--recorded", action="store_true")
    parser.add_argument("--sets", default="dev,test",
                        help="dev, test or both: choose on dev, then measure test")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.recorded)
        return
    result = {}
    if not args.memory_only:
        result["meaning"] = meaning(args.n, tuple(args.sets.split(",")))
    if not args.no_memory:
        result["memory_512_sd15"] = memory()
    print(json.dumps(result, indent=2))  # noqa: T201 - the benchmark's output
    if "meaning" in result:
        print_table(result["meaning"])
    if "memory_512_sd15" in result:
        print(f"peak RSS increase with the recorder: "  # noqa: T201
              f"{result['memory_512_sd15']['increase']:.1%} (bar: 15%)")


if __name__ == "__main__":
    torch.set_num_threads(1)  # the machine is shared; one thread is the steadiest
    main()
