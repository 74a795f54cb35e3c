"""Make the README's pictures (docs/*.png) with the sdlab CLI on the bundled model.

    .venv/bin/python scripts/readme_pictures.py

Every picture comes from the command the README shows next to it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from sdlab.demo import PROMPTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SDLAB = [sys.executable, "-m", "sdlab"]
G = ""  # the bundled model works at the default guidance, SD's 7.5 (its card)


def sdlab(command: str) -> None:
    subprocess.run([*SDLAB, *shlex.split(command)], check=True, cwd=ROOT)


def row(paths: list[Path], out: Path, scale: int = 2) -> None:
    images = [Image.open(p).convert("RGB") for p in paths]
    images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
              for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in images) + 4 * (len(images) - 1),
                               max(im.height for im in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + 4
    canvas.save(out)


def grid(columns: list[list[Path]], out: Path, scale: int = 2) -> None:
    """One column per list of images, top to bottom, 4 px apart."""
    cols = [[Image.open(p).convert("RGB") for p in col] for col in columns]
    w, h = cols[0][0].width * scale, cols[0][0].height * scale
    rows = max(len(col) for col in cols)
    canvas = Image.new("RGB", (len(cols) * (w + 4) - 4, rows * (h + 4) - 4), "white")
    for x, col in enumerate(cols):
        for y, im in enumerate(col):
            canvas.paste(im.resize((w, h), Image.Resampling.NEAREST), (x * (w + 4), y * (h + 4)))
    canvas.save(out)


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        sdlab(f"demo --out {t}/demo")
        grid([sorted((t / "demo").glob(f"demo-{k}-*.png")) for k in range(len(PROMPTS))],
             DOCS / "demo.png")
        sdlab(f'generate {G} "a red circle on a white background" --out {t}/red.png --quiet')
        sdlab(f"vae roundtrip {t}/red.png --out {t}/rt.png")
        row([t / "rt.png"], DOCS / "vae-roundtrip.png")
        sdlab(f"vae encode {t}/red.png --out {t}/red.safetensors "
              f"--channels {DOCS}/vae-channels.png")
        sdlab(f"schedule --steps 15 --plot {DOCS}/schedule.png")
        noisy = []
        for k in (10, 25, 40):
            sdlab(f"noise {t}/red.png --step {k} --steps 50 --out {t}/noise-{k}.png")
            noisy.append(t / f"noise-{k}.png")
        row(noisy, DOCS / "noise.png")
        sdlab(f'generate {G} "a large green square on a black background" --out {t}/sq.png --quiet')
        i2i = []
        for s in (3, 8):
            sdlab(f'img2img {G} {t}/sq.png "a large yellow circle on a purple background" '
                  f"--steps 20 --start-step {s} --out {t}/i2i-{s}.png --quiet")
            i2i.append(t / f"i2i-{s}.png")
        row([t / "sq.png", *i2i], DOCS / "img2img.png")
        sdlab(f'generate {G} "a red circle on a white background" --swap red=blue '
              f"--out {t}/swap.png --quiet")
        row([t / "red.png", t / "swap.png"], DOCS / "swap.png")
        sdlab(f'generate {G} --mix "a red square on a white background:0.5" '
              f'--mix "a blue square on a white background:0.5" --out {t}/mix.png --quiet')
        row([t / "mix.png"], DOCS / "mix.png")
        sdlab(f'generate {G} "a yellow star on a green background" --steps 30 '
              f"--trace {t}/run.safetensors --out {t}/star.png --quiet")
        sdlab(f"trace show {t}/run.safetensors --out {t}/shown")
        frames = [t / "shown" / f"frame-{k:03d}.png" for k in (0, 5, 10, 20, 29)]
        row(frames, DOCS / "progression.png")
        sdlab(f'generate {G} "a yellow triangle on an orange background" --guide blue:200 '
              f"--guide-every 2 --trace {t}/blue.safetensors --out {t}/blue.png --quiet")
        sdlab(f'generate {G} "a yellow triangle on an orange background" '
              f"--out {t}/plain.png --quiet")
        row([t / "plain.png", t / "blue.png"], DOCS / "guidance.png")
        sdlab(f"trace show {t}/blue.safetensors --out {t}/blue-shown")
        (t / "blue-shown" / "loss-blue.png").replace(DOCS / "guidance-loss.png")


if __name__ == "__main__":
    main()
