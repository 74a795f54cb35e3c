"""`make demo`: a few images of each of a few prompts from the default model, written into a
folder, each read back by the bundled model's judge when that model is the one used."""

from __future__ import annotations

from pathlib import Path

from sdlab.generate import GenerateParams, generate
from sdlab.models import BUNDLED_DIR, BUNDLED_NAME, load
from sdlab.outputs import make_folder, recipe_meta, save_png
from sdlab.random_models import build_random_model

# The bundled model's working guidance: SD's 7.5, its best on the benchmark (the guidance
# calibration made it so; its model card).
BUNDLED_GUIDANCE = 7.5

# Images per prompt: one generator seeded once per prompt, as `sdlab generate --batch`. A
# sampler gets some draws wrong; several per prompt show how often, where one would be luck.
IMAGES_PER_PROMPT = 4

# prompt -> what it asks for, in the judge's attributes
PROMPTS: dict[str, dict[str, str]] = {
    "a red circle on a white background":
        {"color": "red", "shape": "circle", "background": "white"},
    "a large blue square on a yellow background":
        {"color": "blue", "shape": "square", "background": "yellow", "size": "large"},
    "a small green triangle at the top, black background":
        {"color": "green", "shape": "triangle", "background": "black", "position": "top"},
    "an orange star on the left of a purple background":
        {"color": "orange", "shape": "star", "background": "purple", "position": "left"},
    "a red star on a blue background (a colour and shape never seen together in training)":
        {"color": "red", "shape": "star", "background": "blue"},
}


def run_demo(out: Path, model: str | None = None) -> list[tuple[Path, str]]:
    """Generate IMAGES_PER_PROMPT images of each demo prompt (prompt k from seed k) into
    demo-K-J.png; returns (path, note) per image."""
    out = make_folder(out)
    random_note = ""
    if model is None and (BUNDLED_DIR / "model_index.json").is_file():
        model = BUNDLED_NAME
    elif model is None:
        model = str(build_random_model(out / "random-model", "tiny"))
        random_note = "(random weights: the bundled model is not installed, so this is noise)"
    parts = load(model)
    extra = {"guidance": BUNDLED_GUIDANCE} if model == BUNDLED_NAME else {}
    results = []
    for k, (prompt, wanted) in enumerate(PROMPTS.items()):
        params = GenerateParams(prompt.split(" (")[0], seed=k, batch=IMAGES_PER_PROMPT, **extra)
        for j, image in enumerate(generate(parts, params).images):
            path = save_png(image, out / f"demo-{k}-{j}.png",
                            recipe_meta(model, parts.folder, params.to_dict(), index=j))
            note = random_note or _verdict(model, image, wanted)
            results.append((path, f"{prompt}  {note}".strip()))
    return results


def _verdict(model: str, image: object, wanted: dict[str, str]) -> str:
    """The judge's reading of an image of the bundled model's world."""
    if model != BUNDLED_NAME:
        return ""
    from sdlab.tiny.judge import judge, score

    reading = judge(image)
    ok = score(reading, wanted)
    marks = ", ".join(f"{k}={getattr(reading, k)}{'' if ok[k] else ' (wrong)'}" for k in wanted)
    return f"-> judge: {marks}"
