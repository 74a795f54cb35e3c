"""Screenshots of each view of `sdlab serve` for the README (docs/web-*.png), taken in
Debian's Chromium with the browser tests' own code (tests/web_fixtures.py).

    .venv/bin/python scripts/web_screenshots.py --out docs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from PIL import Image  # noqa: E402

from web_fixtures import (  # noqa: E402
    choose,
    fill,
    open_page,
    open_tab,
    serving,
    set_number,
    wait_for_image,
)

PROMPT = "a red circle on a white background"


def sample_image(folder: Path) -> Path:
    """A blue square on yellow, the kind of picture the bundled model knows."""
    path = folder / "square.png"
    image = Image.new("RGB", (64, 64), "yellow")
    image.paste((0, 0, 255), (18, 18, 46, 46))
    image.save(path)
    return path


def shoot(page, out: Path, name: str) -> Path:
    path = out / f"web-{name}.png"
    page.wait_for_timeout(300)  # let the last update settle
    page.screenshot(path=str(path), full_page=True)
    return path


def take(out: Path, model: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="sdlab-shots-"))
    picture = sample_image(scratch)
    written = []
    with serving(model) as server, open_page(server.url) as browser:
        page = browser.page
        fill(page, "gen-prompt", PROMPT, "textarea")
        page.locator("#gen-run").click()
        wait_for_image(page, "gen-result")
        page.get_by_text("done:").wait_for()
        written.append(shoot(page, out, "generate"))

        open_tab(page, "Steps")
        first = wait_for_image(page, "steps-frame")
        set_number(page, "steps-slider", 8)
        wait_for_image(page, "steps-frame", (first,))
        choose(page, "steps-word", "circle")
        page.locator("#steps-attention").get_by_text("'circle' at step 8").wait_for()
        wait_for_image(page, "steps-attention-sum")
        written.append(shoot(page, out, "steps"))

        open_tab(page, "Text")
        page.locator("#text-show").click()
        fill(page, "text-swap-old", "red")
        fill(page, "text-swap-new", "blue")
        page.locator("#text-run").click()
        wait_for_image(page, "text-edited")
        written.append(shoot(page, out, "text"))

        open_tab(page, "img2img")
        page.locator("#i2i-image input[type=file]").set_input_files(str(picture))
        page.locator("#i2i-run").click()
        wait_for_image(page, "i2i-result")
        written.append(shoot(page, out, "img2img"))

        open_tab(page, "VAE")
        page.locator("#vae-image input[type=file]").set_input_files(str(picture))
        page.locator("#vae-run").click()
        wait_for_image(page, "vae-decoded")
        written.append(shoot(page, out, "vae"))

        open_tab(page, "Schedule")
        page.locator("#sched-show").click()
        wait_for_image(page, "sched-plot")
        page.locator("#sched-image input[type=file]").set_input_files(str(picture))
        page.locator("#sched-noise").click()
        wait_for_image(page, "sched-noised")
        written.append(shoot(page, out, "schedule"))

        open_tab(page, "Guidance")
        page.locator("#guide-run").click()
        wait_for_image(page, "guide-loss")
        written.append(shoot(page, out, "guidance"))
        if browser.outside:
            raise SystemExit(f"the page tried to reach outside: {browser.outside}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--model", default="sdlab-tiny")
    args = parser.parse_args()
    for path in take(args.out, args.model):
        print(path)


if __name__ == "__main__":
    main()
