"""`sdlab attention`: which word of the prompt paints where, as one picture of overlays."""

from __future__ import annotations

import click

from sdlab.attention import AttentionRecorder, maps_picture, parse_steps_range
from sdlab.cli_common import DEVICES, guard, model_option
from sdlab.generate import generate
from sdlab.models import default_model, load
from sdlab.outputs import atomic_write, check_writable
from sdlab.recipe import GenerateParams, parse
from sdlab.schedule import SCHEDULERS


@click.command("attention")
@click.argument("prompt")
@click.option("--words", default="", metavar="WORD,WORD",
              help="Show only these tokens of the prompt (default: every token, the start "
                   "and end tokens and the padding).")
@click.option("--steps-range", metavar="A:B",
              help="Sum the maps of loop steps A <= i < B only (default: every step).")
@click.option("--out", type=click.Path(dir_okay=False), default="maps.png", show_default=True,
              help="PNG: the image, then one overlay per token with its string under it.")
@model_option
@click.option("--steps", type=int, default=30, show_default=True)
@click.option("--guidance", type=float, default=7.5, show_default=True)
@click.option("--seed", type=int, default=32, show_default=True)
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default="lms",
              show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@guard
def attention_cmd(prompt: str, words: str, steps_range: str | None, out: str,
                  model: str | None, steps: int, guidance: float, seed: int, scheduler: str,
                  device: str) -> None:
    """Cross-attention maps of PROMPT: where each word acts, summed over the steps."""
    recipe = parse(GenerateParams(prompt, steps=steps, guidance=guidance, seed=seed,
                                  scheduler=scheduler))
    chosen_steps = parse_steps_range(steps_range) if steps_range else None
    out_path = check_writable(out, ".png")
    parts = load(model or default_model(), device=device)
    recorder = AttentionRecorder.for_run(parts, recipe, steps=chosen_steps)
    entries = recorder.tokens.select([w for w in words.split(",") if w.strip()])
    image = generate(parts, recipe, [recorder]).images[0]
    maps = recorder.maps()[entries]
    sheet = maps_picture(image, maps, [recorder.tokens.labels[k] for k in entries])
    atomic_write(out_path, lambda tmp: sheet.save(tmp, format="PNG"))
    click.echo(str(out_path))
