"""Make the README's pictures (docs/*.png) with the sdlab CLI on the bundled model.

    .venv/bin/python scripts/readme_pictures.py

Every picture comes from the command the README shows next to it.
"""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from sdlab.demo import PROMPTS
from sdlab.tiny.graded import BLUE_EVERY, BLUE_SCALES, IMG2IMG_STRENGTHS, MIX_WEIGHTS
from sdlab.trace import read_video

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SDLAB = [sys.executable, "-m", "sdlab"]
G = ""  # the bundled model works at the default guidance, SD's 7.5 (its card)
# The graded rows: the graded benchmark's weights, scales and strengths, on one prompt each.
MIX = ("a red square on a white background", "a blue square on a white background", 1)
BLUE = ("a picture of a large black circle on the left hand side, red backdrop", 22002)
IMG2IMG = ("a large green square on a black background",
           "a large yellow circle on a purple background", 2)
ATTENTION = ("a white star at the bottom, green background", 1)
SWEEP_PROMPTS = ("a red circle on a white background",
                 "a large blue square on a yellow background",
                 "a small green triangle at the top, black background",
                 "an orange star on the left of a purple background",
                 "a red star on a blue background")


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
        img2img_row(t)
        sdlab(f'generate {G} "a red circle on a white background" --swap red=blue '
              f"--out {t}/swap.png --quiet")
        row([t / "red.png", t / "swap.png"], DOCS / "swap.png")
        mix_rows(t)
        sdlab(f'generate {G} "a yellow star on a green background" --steps 30 '
              f"--trace {t}/run.safetensors --out {t}/star.png --quiet")
        sdlab(f"trace show {t}/run.safetensors --out {t}/shown")
        frames = [t / "shown" / f"frame-{k:03d}.png" for k in (0, 5, 10, 20, 29)]
        row(frames, DOCS / "progression.png")
        blue_row(t)
        sdlab(f'attention "{ATTENTION[0]}" --seed {ATTENTION[1]} --out {DOCS}/attention.png')
        sweep_pictures(t)


def sweep_pictures(t: Path) -> None:
    """The README's sweep of the demo prompts over guidance: its grid and accuracy plot."""
    prompts = " ".join(f'--prompt "{p}"' for p in SWEEP_PROMPTS)
    sdlab(f"sweep {prompts} --seeds 0-3 --axis guidance=1,3,5,7.5,10 --out {t}/sweep --plot")
    (t / "sweep" / "grid.png").replace(DOCS / "sweep-grid.png")
    (t / "sweep" / "accuracy-guidance.png").replace(DOCS / "sweep-accuracy-guidance.png")
    with open(t / "sweep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for g in dict.fromkeys(r["guidance"] for r in rows):  # the numbers the README quotes
        oks = [r["ok_all"] == "1" for r in rows if r["guidance"] == g]
        print(f"sweep: guidance {g}: all five right in {sum(oks)}/{len(oks)}")


def img2img_row(t: Path) -> None:
    """The input, then img2img towards another prompt at each strength."""
    source, prompt, seed = IMG2IMG
    sdlab(f'generate {G} "{source}" --seed {seed} --out {t}/source.png --quiet')
    outs = []
    for strength in IMG2IMG_STRENGTHS:
        sdlab(f'img2img {G} {t}/source.png "{prompt}" --strength {strength} --seed {seed} '
              f"--out {t}/i2i-{strength}.png --quiet")
        outs.append(t / f"i2i-{strength}.png")
    row([t / "source.png", *outs], DOCS / "img2img.png")


def mix_rows(t: Path) -> None:
    """The mix at each weight of the second prompt, and the interpolation's frames."""
    start, end, seed = MIX
    outs = []
    for w in MIX_WEIGHTS:
        sdlab(f'generate {G} --mix "{start}:{1 - w}" --mix "{end}:{w}" --seed {seed} '
              f"--out {t}/mix-{w}.png --quiet")
        outs.append(t / f"mix-{w}.png")
    row(outs, DOCS / "mix.png")
    sdlab(f'interpolate "{start}" "{end}" --frames {len(MIX_WEIGHTS)} --seed {seed} '
          f"--out {t}/lerp.mp4 --quiet")
    frames = []
    for k, frame in enumerate(read_video(t / "lerp.mp4")):
        Image.fromarray(frame).save(t / f"lerp-{k}.png")
        frames.append(t / f"lerp-{k}.png")
    row(frames, DOCS / "interpolation.png")


def blue_row(t: Path) -> None:
    """The prompt at each scale of the blue loss (0: unguided), and the loss per step."""
    prompt, seed = BLUE
    outs = []
    for scale in BLUE_SCALES:
        guide = f"--guide blue:{scale:g} --guide-every {BLUE_EVERY}" if scale else ""
        trace = f"--trace {t}/blue.safetensors" if scale == BLUE_SCALES[-1] else ""
        sdlab(f'generate {G} "{prompt}" --seed {seed} {guide} {trace} '
              f"--out {t}/blue-{scale:g}.png --quiet")
        outs.append(t / f"blue-{scale:g}.png")
    row(outs, DOCS / "guidance.png")
    sdlab(f"trace show {t}/blue.safetensors --out {t}/blue-shown")
    (t / "blue-shown" / "loss-blue.png").replace(DOCS / "guidance-loss.png")


if __name__ == "__main__":
    main()
