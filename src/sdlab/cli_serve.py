"""`sdlab serve`: the web app on this machine (a thin shell over sdlab.web)."""

from __future__ import annotations

import click

from sdlab.cli_common import guard, model_option
from sdlab.errors import SdlabError


@click.command("serve")
@model_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0 opens the page to the network).")
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--queue", "waiting", type=int, default=4, show_default=True,
              help="Requests that may wait for the model; past it the page says busy.")
@guard
def serve_cmd(model: str | None, host: str, port: int, waiting: int) -> None:
    """Open the deep dive in a browser: generate, scrub the steps, edit the text, look at
    the VAE and the schedule, guide by a loss."""
    if not 0 < port < 65536:
        raise SdlabError(f"--port must be in 1..65535 (got {port})")
    if waiting < 0:
        raise SdlabError(f"--queue must be 0 or more (got {waiting})")
    from sdlab.models import default_model
    from sdlab.web.app import launch
    from sdlab.web.serving import Limits

    click.echo(f"sdlab serve: http://{host}:{port}  (Ctrl+C stops it)")
    try:
        launch(model or default_model(), host, port, Limits(waiting=waiting), block=True)
    except OSError as err:
        raise SdlabError(f"cannot serve on {host}:{port}: {err.strerror or err}") from err
