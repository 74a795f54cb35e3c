"""The text instruments on the command line: `sdlab tokens`, `sdlab embed`,
`sdlab interpolate`, and the text-edit options of `sdlab generate` (--swap, --mix,
--embedding, --token). Thin shells over `sdlab.text` and `sdlab.surgery`.

`sdlab.cli` registers these commands (wrapping them so an SdlabError is one line); this
module does not import `sdlab.cli`, so either can be imported first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from tqdm.auto import tqdm

from sdlab.cli_common import DEVICES, model_option
from sdlab.errors import SdlabError
from sdlab.generate import generate
from sdlab.models import default_model, load, load_tokenizer, resolve
from sdlab.outputs import check_writable
from sdlab.recipe import GenerateParams, defaults, parse, parse_mix
from sdlab.run import check_for_model
from sdlab.schedule import SCHEDULERS
from sdlab.surgery import interpolation_mixes
from sdlab.text import embedding_report, token_rows
from sdlab.trace import write_video

DEFAULTS = defaults()


def text_edit_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--swap, --mix, --embedding, --token: options of `generate` (and img2img)."""
    options = [
        click.option("--swap", multiple=True, metavar="WORD=WORD",
                     help="Replace a token's input embedding by another's, e.g. "
                          "puppy=skunk (repeatable; both single tokens)."),
        click.option("--mix", multiple=True, metavar="PROMPT:W",
                     help="Condition on Σ W·states(PROMPT) (repeatable); a PROMPT argument "
                          "given too must be PROMPT:W and joins the mix."),
        click.option("--embedding", multiple=True,
                     type=click.Path(exists=True, dir_okay=False),
                     help="Textual-inversion file (.safetensors, diffusers .bin, A1111 .pt); "
                          "its token in the prompt takes the learned vectors (repeatable)."),
        click.option("--token", multiple=True,
                     help="The prompt word for each --embedding (default: the file's own)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def text_settings(prompt: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """GenerateParams keywords from the CLI: with --mix the PROMPT argument (if any) joins
    the mix and the prompt is ""; embedding files are stored as absolute paths."""
    settings = dict(settings)
    mix = tuple(settings.get("mix", ()))
    if mix and prompt is not None:
        try:
            parse_mix(prompt)
        except SdlabError:
            raise SdlabError(f"with --mix, the PROMPT argument must be PROMPT:W too "
                             f"(got '{prompt}'), or leave it out") from None
        mix = (prompt, *mix)
    elif prompt is None and not mix:
        raise SdlabError("give a PROMPT (or --from a PNG written by sdlab)")
    settings["mix"] = mix
    settings["embedding"] = tuple(str(Path(f).resolve()) for f in settings.get("embedding", ()))
    return {"prompt": "" if mix else prompt, **settings}


@click.command("tokens")
@click.argument("prompt")
@click.option("--model", help="Model whose tokenizer to use (default: sdlab-tiny).")
def tokens_cmd(prompt: str, model: str | None) -> None:
    """The prompt's token ids and strings, position by position."""
    tokenizer = load_tokenizer(model or default_model())
    rows = token_rows(tokenizer, prompt)
    click.echo(f"{'pos':>3}  {'id':>5}  token")
    for row in rows:
        click.echo(f"{row.position:>3}  {row.id:>5}  {row.token}")
    pad = tokenizer.model_max_length - len(rows)
    click.echo(f"{len(rows)} tokens + {pad} padding = {tokenizer.model_max_length}")


@click.command("embed")
@click.argument("prompt")
@model_option
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
def embed_cmd(prompt: str, model: str | None, device: str) -> None:
    """Token + position embeddings, their sum, the encoder output, and the by-hand encoder's
    distance from the text encoder."""
    parts = load(model or default_model(), device=device)
    r = embedding_report(parts, prompt)
    n = len(r.rows)
    click.echo(f"token embedding table     {r.token_table_shape}   (vocab, d)")
    click.echo(f"position embedding table  {r.position_table_shape}   (positions, d)")
    click.echo(f"input embeddings          {tuple(r.input_embeds.shape)}   token + position")
    click.echo(f"encoder output            {tuple(r.states.shape)}")
    click.echo(f"{'pos':>3}  {'id':>5}  {'token':<20} {'|token|':>8} {'|position|':>10} "
               f"{'|input|':>8} {'|output|':>8}")
    norms = [t[:n].float().norm(dim=-1).tolist()
             for t in (r.token_embeds, r.position_embeds, r.input_embeds, r.states)]
    for row, *values in zip(r.rows, *norms, strict=True):
        tok, pos, inp, out = values
        click.echo(f"{row.position:>3}  {row.id:>5}  {row.token:<20} {tok:>8.4f} {pos:>10.4f} "
                   f"{inp:>8.4f} {out:>8.4f}")
    if n < len(r.states):
        click.echo(f"(+ {len(r.states) - n} padding positions)")
    verdict = "same within 1e-5" if r.max_abs_diff <= 1e-5 else "DIFFERENT"
    click.echo(f"by-hand encoder vs text encoder: max |diff| = {r.max_abs_diff:.3g} ({verdict})")


@click.command("interpolate")
@click.argument("prompt_a")
@click.argument("prompt_b")
@click.option("--frames", type=int, default=8, show_default=True,
              help="Interpolation points, A and B included: one video frame each.")
@click.option("--out", type=click.Path(dir_okay=False), default="interpolation.mp4",
              show_default=True)
@click.option("--fps", type=int, default=4, show_default=True)
@model_option
@click.option("--negative", default=DEFAULTS["negative"], show_default=True)
@click.option("--steps", type=int, default=DEFAULTS["steps"], show_default=True)
@click.option("--guidance", type=float, default=DEFAULTS["guidance"], show_default=True)
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True,
              help="The same seed (the same initial noise) for every frame.")
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)),
              default=DEFAULTS["scheduler"], show_default=True)
@click.option("--height", type=int, help="Pixels (default: the model's native size).")
@click.option("--width", type=int, help="Pixels (default: the model's native size).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def interpolate_cmd(prompt_a: str, prompt_b: str, frames: int, out: str, fps: int,
                    model: str | None, device: str, quiet: bool, **settings: Any) -> None:
    """A video from PROMPT_A to PROMPT_B: same seed, encoder states lerped frame by frame."""
    mixes = interpolation_mixes(prompt_a, prompt_b, frames)
    if fps < 1:
        raise SdlabError(f"--fps must be at least 1 (got {fps})")
    base = GenerateParams(prompt="", mix=mixes[0], **settings)
    recipes = [parse(replace(base, mix=mix)) for mix in mixes]
    out_path = check_writable(out, ".mp4")
    model = model or default_model()
    check_for_model(recipes[0], resolve(model))
    parts = load(model, device=device)
    images = [generate(parts, recipe).images[0]
              for recipe in tqdm(recipes, desc="frames", unit="frame", disable=quiet,
                                 file=sys.stderr, leave=False)]
    write_video(images, out_path, fps)
    if not quiet:
        click.echo(str(out_path))


COMMANDS = (tokens_cmd, embed_cmd, interpolate_cmd)
