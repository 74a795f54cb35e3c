"""Views that change a run: Text (tokens, swap, mix, learned embeddings), img2img and
Guidance by a loss."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from sdlab.errors import SdlabError
from sdlab.web import service
from sdlab.web.context import Context, shown
from sdlab.web.panel import build_panel, enlarged, picture, stream_panel
from sdlab.web.plots import curves
from sdlab.web.run_views import DECODER_CHOICES, settings_row, stop_button
from sdlab.web.serving import EMBEDDING_SUFFIXES, check_embedding_file, check_image, upload_box

GUIDES = ["blue", "contrast", "color", "clip"]
COLOR_NAMES = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]


def text_tab(ctx: Context) -> None:
    prompt = gr.Textbox(label="Prompt", value="a red circle on a white background",
                        elem_id="text-prompt")
    show = gr.Button("Show tokens", elem_id="text-show")
    table = gr.Dataframe(headers=["position", "id", "token"], label="Tokens",
                         interactive=False, elem_id="text-tokens")
    with gr.Row():
        swap_old = gr.Textbox(label="Swap this word…", placeholder="red", elem_id="text-swap-old")
        swap_new = gr.Textbox(label="…for this word's embedding", placeholder="blue",
                              elem_id="text-swap-new")
    with gr.Row():
        mix_prompt = gr.Textbox(label="Mix with a second prompt",
                                placeholder="a blue square on a yellow background",
                                elem_id="text-mix")
        mix_weight = gr.Slider(0, 1, value=0.5, step=0.05, label="Weight of the second prompt",
                               elem_id="text-mix-weight")
    with gr.Row():
        embedding = gr.File(label="Textual-inversion embedding (" +
                            ", ".join(EMBEDDING_SUFFIXES) + "; pickled code is refused)",
                            file_types=list(EMBEDDING_SUFFIXES), type="filepath",
                            elem_id="text-embedding")
        token = gr.Textbox(label="Prompt word it replaces (empty: the file's own token)",
                           elem_id="text-token")
    settings = settings_row(ctx, "text", steps=30)
    run = gr.Button("Run with the edits", variant="primary", elem_id="text-run")
    status = gr.Markdown(elem_id="text-status")
    with gr.Row():
        plain = picture("Unedited (same seed)", "text-plain")
        edited = picture("Edited", "text-edited")

    @shown
    def on_show(prompt: str) -> list[list[Any]]:
        with ctx.gate.turn():
            rows = service.tokens(ctx.parts, prompt)
        return [[r.position, r.id, r.token] for r in rows]

    @shown
    def on_run(prompt: str, swap_old: str, swap_new: str, mix_prompt: str, mix_weight: float,
               embedding: str | None, token: str, steps: int, guidance: float, seed: int,
               scheduler: str) -> tuple[Any, Any, str]:
        edits = text_edits(ctx, prompt, swap_old, swap_new, mix_prompt, mix_weight, embedding,
                           token)
        common = {"steps": steps, "guidance": guidance, "seed": seed, "scheduler": scheduler}
        base = service.make_recipe(ctx.parts, {"prompt": prompt, **common})
        changed = service.make_recipe(ctx.parts, {"prompt": prompt, **edits, **common})
        with ctx.gate.turn():
            left = service.run(ctx.parts, ctx.model_ref, base, ctx.workspace.request_folder())
            right = service.run(ctx.parts, ctx.model_ref, changed,
                                ctx.workspace.request_folder())
        said = ", ".join(f"{k}: {', '.join(map(str, v))}" for k, v in edits.items())
        return (enlarged(left.generation.images[0]), enlarged(right.generation.images[0]),
                f"edits: {said}")

    show.click(on_show, prompt, table, api_name="tokens")
    run.click(on_run, [prompt, swap_old, swap_new, mix_prompt, mix_weight, embedding, token,
                       *settings], [plain, edited, status], concurrency_limit=None,
              api_name="text_edit")


def text_edits(ctx: Context, prompt: str, swap_old: str, swap_new: str, mix_prompt: str,
               mix_weight: float, embedding: str | None, token: str) -> dict[str, Any]:
    """The recipe fields of the edits asked for; one edit at least."""
    edits: dict[str, Any] = {}
    if swap_old.strip() or swap_new.strip():
        edits["swap"] = [f"{swap_old.strip()}={swap_new.strip()}"]
    if mix_prompt.strip():
        weight = float(mix_weight)
        edits["mix"] = [f"{prompt}:{1 - weight!r}", f"{mix_prompt.strip()}:{weight!r}"]
        edits["prompt"] = ""
    if embedding:
        file = check_embedding_file(ctx.workspace.upload(embedding, "embedding"), ctx.limits)
        service.check_embedding(str(file))  # refuses pickled code before any run
        edits["embedding"] = [str(file)]
        edits["token"] = [token.strip()] if token.strip() else []
    if not edits:
        raise SdlabError("no edit given: swap a word, mix in a second prompt or upload an "
                         "embedding")
    return edits


def img2img_tab(ctx: Context, steps_state: gr.State) -> None:
    image = upload_box("Start image (PNG or JPEG)", "i2i-image")
    prompt = gr.Textbox(label="Prompt", value="a blue circle on a white background",
                        elem_id="i2i-prompt")
    with gr.Row():
        mode = gr.Radio([("strength", "strength"), ("start step", "start")], value="strength",
                        label="Start from", elem_id="i2i-mode")
        strength = gr.Slider(0.05, 1, value=0.6, step=0.05, label="Strength",
                             elem_id="i2i-strength")
        start = gr.Number(value=10, precision=0, label="Start step", elem_id="i2i-start")
    settings = settings_row(ctx, "i2i")
    with gr.Row():
        run = gr.Button("Run img2img", variant="primary", elem_id="i2i-run")
        stop = gr.Button("Stop", variant="stop", elem_id="i2i-stop")
    panel = build_panel("i2i")

    @shown
    def on_run(image: str | None, prompt: str, mode: str, strength: float, start: int,
               steps: int, guidance: float, seed: int, scheduler: str,
               request: gr.Request) -> Iterator[dict[Any, Any]]:
        file = ctx.workspace.upload(image, "start image")
        check_image(file, ctx.limits)
        value = (service.strength_for(int(start or 0), int(steps)) if mode == "start"
                 else strength)
        native = ctx.parts.native_size  # the upload is resized to the model's size
        recipe = service.make_recipe(ctx.parts, {
            "image": str(file), "prompt": prompt, "steps": steps, "guidance": guidance,
            "seed": seed, "scheduler": scheduler, "strength": value, "width": native,
            "height": native})
        yield from stream_panel(ctx, request.session_hash, recipe, panel, steps_state)

    run.click(on_run, [image, prompt, mode, strength, start, *settings],
              [*panel.outputs(), steps_state], show_progress="hidden", concurrency_limit=None,
              api_name="img2img")
    stop_button(ctx, stop)


def guidance_tab(ctx: Context, steps_state: gr.State) -> None:
    prompt = gr.Textbox(label="Prompt", value="a red circle on a white background",
                        elem_id="guide-prompt")
    with gr.Row():
        kind = gr.Dropdown(GUIDES, value="blue", label="Loss", elem_id="guide-kind")
        color = gr.Dropdown(COLOR_NAMES, value="blue", label="Colour (for colour)",
                            elem_id="guide-color")
        text = gr.Textbox(label="Text (for CLIP)", value="a blue circle",
                          elem_id="guide-text")
    with gr.Row():
        scale = gr.Number(value=200, label="Scale", elem_id="guide-scale")
        every = gr.Slider(1, 10, value=5, step=1, label="Every N steps", elem_id="guide-every")
        decoder = gr.Radio(DECODER_CHOICES, value="full", label="The loss sees",
                           elem_id="guide-decoder")
    settings = settings_row(ctx, "guide")
    with gr.Row():
        run = gr.Button("Run guided", variant="primary", elem_id="guide-run")
        stop = gr.Button("Stop", variant="stop", elem_id="guide-stop")
    panel = build_panel("guide")
    loss_plot = picture("Loss per guided step", "guide-loss")

    @shown
    def on_run(prompt: str, kind: str, color: str, text: str, scale: float, every: int,
               decoder: str, steps: int, guidance: float, seed: int, scheduler: str,
               request: gr.Request) -> Iterator[dict[Any, Any]]:
        recipe = service.make_recipe(ctx.parts, {
            "prompt": prompt, "steps": steps, "guidance": guidance, "seed": seed,
            "scheduler": scheduler, "guide": [guide_spec(kind, color, text, scale)],
            "guide_every": every, "guide_decoder": decoder})
        for update in stream_panel(ctx, request.session_hash, recipe, panel, steps_state):
            view = update.get(steps_state)
            if view is not None and view.records:
                update[loss_plot] = curves([r.i for r in view.records],
                                           [float(r.sigma) for r in view.records], view.losses)
            yield update

    run.click(on_run, [prompt, kind, color, text, scale, every, decoder, *settings],
              [*panel.outputs(), steps_state, loss_plot], show_progress="hidden",
              concurrency_limit=None, api_name="guided")
    stop_button(ctx, stop)


def guide_spec(kind: str, color: str, text: str, scale: float | None) -> str:
    """The recipe's NAME:SCALE for the chosen loss."""
    if scale is None:
        raise SdlabError("give the guide a scale (a number, e.g. 200)")
    scale = float(scale)
    if kind == "color":
        return f"color:{color}:{scale!r}"
    if kind == "clip":
        if not text.strip() or '"' in text:
            raise SdlabError('the CLIP guide needs a text without double quotes')
        return f'clip:"{text.strip()}":{scale!r}'
    return f"{kind}:{scale!r}"
