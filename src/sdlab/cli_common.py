"""Pieces every CLI command shares: one-line errors and the --model option."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from sdlab.errors import SdlabError


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an SdlabError into one line, `Error: ...`, and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SdlabError as err:
            raise click.ClickException(str(err)) from None

    return wrapper


DEVICES = ("auto", "cpu", "cuda", "mps")

model_option = click.option(
    "--model", help="diffusers folder, cached hub id, or 'sdlab-tiny' (the default).")


def quiet_libraries() -> None:
    """Loading bars and advice from transformers/diffusers are noise in a CLI's output."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
