"""`sdlab attention`: which word of the prompt paints where, as one picture of overlays."""

from __future__ import annotations

import click

from sdlab.attention import (
    DEFAULT_BLOCKS,
    DEFAULT_UPSAMPLING,
    UPSAMPLING,
    AttentionRecorder,
    maps_picture,
    parse_blocks,
    parse_steps_range,
)
from sdlab.cli_common import DEVICES, guard, model_option
from sdlab.generate import generate
from sdlab.models import default_model, load, resolve
from sdlab.outputs import atomic_write, check_writable
from sdlab.recipe import GenerateParams, defaults, parse
from sdlab.run import check_for_model
from sdlab.schedule import SCHEDULERS

DEFAULTS = defaults()


@click.command("attention")
@click.argument("prompt")
@click.option("--words", default="", metavar="WORD,WORD",
              help="Show only these tokens of the prompt (default: every token, the start "
                   "and end tokens and the padding).")
@click.option("--steps-range", metavar="A:B",
              help="Sum the maps of loop steps A <= i < B only (default: every step).")
@click.option("--layers", default=",".join(DEFAULT_BLOCKS), show_default=True,
              metavar="BLOCK,BLOCK",
              help="The UNet blocks whose cross-attention layers are summed: 'all' or some "
                   "of down,mid,up.")
@click.option("--upsampling", type=click.Choice(UPSAMPLING), default=DEFAULT_UPSAMPLING,
              show_default=True,
              help="Each layer's map to the latent grid bilinearly, or to the image size "
                   "bicubically (as the DAAM paper does).")
@click.option("--out", type=click.Path(dir_okay=False), default="maps.png", show_default=True,
              help="PNG: the image, then one overlay per token with its string under it.")
@model_option
@click.option("--steps", type=int, default=DEFAULTS["steps"], show_default=True)
@click.option("--guidance", type=float, default=DEFAULTS["guidance"], show_default=True)
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True)
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)),
              default=DEFAULTS["scheduler"], show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@guard
def attention_cmd(prompt: str, words: str, steps_range: str | None, layers: str,
                  upsampling: str, out: str, model: str | None, steps: int, guidance: float,
                  seed: int, scheduler: str, device: str) -> None:
    """Cross-attention maps of PROMPT: where each word acts, summed over the steps."""
    recipe = parse(GenerateParams(prompt, steps=steps, guidance=guidance, seed=seed,
                                  scheduler=scheduler))
    chosen_steps = parse_steps_range(steps_range) if steps_range else None
    blocks = parse_blocks(layers)
    out_path = check_writable(out, ".png")
    model = model or default_model()
    check_for_model(recipe, resolve(model))
    parts = load(model, device=device)
    recorder = AttentionRecorder.for_run(parts, recipe, steps=chosen_steps, blocks=blocks,
                                         upsampling=upsampling)
    entries = recorder.tokens.select([w for w in words.split(",") if w.strip()])
    image = generate(parts, recipe, [recorder]).images[0]
    maps = recorder.maps()[entries]
    sheet = maps_picture(image, maps, [recorder.tokens.labels[k] for k in entries])
    atomic_write(out_path, lambda tmp: sheet.save(tmp, format="PNG"))
    click.echo(str(out_path))
