"""`make demo`: a few images from the default model, written into a folder."""

from __future__ import annotations

import logging
from pathlib import Path

from sdlab.generate import GenerateParams, generate
from sdlab.models import BUNDLED_DIR, BUNDLED_NAME, load
from sdlab.outputs import recipe, save_png
from sdlab.random_models import build_random_model

log = logging.getLogger(__name__)

PROMPTS = (
    "a red circle on a white background",
    "a large blue square on a yellow background",
    "a small green triangle, top left, black background",
    "a purple star in the center, orange background",
)


def run_demo(out: Path, model: str | None = None) -> list[tuple[Path, str]]:
    """Generate the demo prompts; returns (path, note) per image."""
    out.mkdir(parents=True, exist_ok=True)
    note = ""
    if model is None and (BUNDLED_DIR / "model_index.json").is_file():
        model = BUNDLED_NAME
    elif model is None:
        model = str(build_random_model(out / "random-model", "tiny"))
        note = "(random weights: the bundled model is not installed, so this is noise)"
    parts = load(model)
    results = []
    for k, prompt in enumerate(PROMPTS):
        params = GenerateParams(prompt, seed=k)
        image = generate(parts, params).images[0]
        meta = recipe(model, parts.folder, params.to_dict())
        path = save_png(image, out / f"demo-{k}.png", meta)
        results.append((path, f"{prompt} {note}".strip()))
    return results
