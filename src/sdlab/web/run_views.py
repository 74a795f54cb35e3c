"""Generate (the view the page opens on) and Steps (a scrubber over the last run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from sdlab.web import service
from sdlab.web.context import Context, shown
from sdlab.web.panel import Panel, RunView, build_panel, enlarged, picture, stream_panel
from sdlab.web.plots import curves

DECODER_CHOICES = [("linear preview (cheap)", "approx"), ("full VAE decode", "full")]


def settings_row(ctx: Context, prefix: str, steps: int = 30) -> list[gr.components.Component]:
    """steps, guidance, seed, scheduler: the settings every run view has."""
    with gr.Row():
        return [
            gr.Slider(1, 150, value=steps, step=1, label="Steps", elem_id=f"{prefix}-steps"),
            gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance", elem_id=f"{prefix}-guidance"),
            gr.Number(value=32, precision=0, label="Seed", elem_id=f"{prefix}-seed"),
            gr.Dropdown(list(service.SCHEDULERS), value="lms", label="Scheduler",
                        elem_id=f"{prefix}-scheduler"),
        ]


def generate_tab(ctx: Context, steps_state: gr.State) -> Panel:
    native = ctx.parts.native_size
    factor = ctx.parts.vae_scale_factor
    prompt = gr.Textbox(label="Prompt", value="a red circle on a white background", lines=2,
                        elem_id="gen-prompt")
    negative = gr.Textbox(label="Negative prompt", elem_id="gen-negative")
    settings = settings_row(ctx, "gen")
    with gr.Row():
        width = gr.Number(value=native, precision=0, step=factor, label="Width",
                          elem_id="gen-width")
        height = gr.Number(value=native, precision=0, step=factor, label="Height",
                           elem_id="gen-height")
        batch = gr.Slider(1, 4, value=1, step=1, label="Batch", elem_id="gen-batch")
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="gen-run")
        stop = gr.Button("Stop", variant="stop", elem_id="gen-stop")
    panel = build_panel("gen")

    @shown
    def on_generate(prompt: str, negative: str, steps: int, guidance: float, seed: int,
                    scheduler: str, width: int, height: int, batch: int,
                    request: gr.Request) -> Iterator[dict[Any, Any]]:
        recipe = service.make_recipe(ctx.parts, {
            "prompt": prompt, "negative": negative, "steps": steps, "guidance": guidance,
            "seed": seed, "scheduler": scheduler, "width": width, "height": height,
            "batch": batch})
        yield from stream_panel(ctx, request.session_hash, recipe, panel, steps_state)

    run.click(on_generate, [prompt, negative, *settings, width, height, batch],
              [*panel.outputs(), steps_state], show_progress="hidden",
              concurrency_limit=None, api_name="generate")
    stop_button(ctx, stop)
    return panel


def stop_button(ctx: Context, stop: gr.Button) -> None:
    """Stop ends the session's run at its next step (the result so far is shown)."""

    def on_stop(request: gr.Request) -> None:
        ctx.stop(request.session_hash)

    stop.click(on_stop, None, None, queue=False, api_name=False)


def steps_tab(ctx: Context, steps_state: gr.State) -> None:
    gr.Markdown("Every step of the last run: the noisy latents beside the predicted x0, the "
                "noise level, how far the prompt pulls the noise prediction, and where each "
                "word of the prompt attends (cross-attention, averaged over heads and layers).")
    with gr.Row():
        step = gr.Slider(0, 1, value=0, step=1, label="Step i", elem_id="steps-slider")
        decoder = gr.Radio(DECODER_CHOICES, value="approx", label="Decode with",
                           elem_id="steps-decoder")
        word = gr.Dropdown([], value=None, label="Attention of the word", elem_id="steps-word")
    with gr.Row():
        frame = picture("latents | predicted x0", "steps-frame")
        plot = picture("sigma (and loss) per step", "steps-curves")
    with gr.Row():
        at_step = picture("the word's attention at this step, over the predicted x0",
                          "steps-attention")
        summed = picture("the word's attention summed over all steps, over the result",
                         "steps-attention-sum")
    facts = gr.Markdown(FIRST, elem_id="steps-facts")
    with gr.Row():
        video = gr.File(label="Progression video (.mp4)", elem_id="steps-video")
        trace = gr.File(label="Trace: every step (.safetensors)", elem_id="steps-trace")

    @shown
    def on_run(view: RunView | None) -> dict[Any, Any]:
        if not view or not view.records:
            return {step: gr.Slider(0, 1, value=0)}
        last = len(view.records) - 1
        att = view.attention
        return {step: gr.Slider(0, last, value=last, step=1),
                word: gr.Dropdown(list(zip(att.labels, range(len(att.labels)), strict=True)),
                                  value=att.default) if att else gr.Dropdown([], value=None),
                video: str(view.video) if view.video else None,
                trace: str(view.trace) if view.trace else None}

    @shown
    def on_step(view: RunView | None, k: int, decoder: str, entry: int | None) -> tuple:
        if not view or not view.records:
            return None, None, FIRST, None, None
        k = max(0, min(int(k), len(view.records) - 1))
        record = view.records[k]
        if decoder == "full":
            with ctx.gate.turn():
                pair, x0 = service.step_pictures(ctx.parts, record, decoder)
        else:
            pair, x0 = service.step_pictures(ctx.parts, record, decoder)
        steps = [r.i for r in view.records]
        sigmas = [float(r.sigma) for r in view.records]
        return (enlarged(pair), curves(steps, sigmas, view.losses, record.i),
                step_facts(record, view), *attention_pictures(view, k, x0, entry))

    steps_state.change(on_run, steps_state, [step, word, video, trace], api_name=False,
                       show_progress="hidden")
    for event in (step.change, decoder.change, word.change):
        event(on_step, [steps_state, step, decoder, word], [frame, plot, facts, at_step, summed],
              concurrency_limit=None, api_name=False, show_progress="hidden")


FIRST = "Run something first (Generate, img2img or Guidance)."


def attention_pictures(view: RunView, k: int, x0: Any, entry: int | None) -> tuple[Any, Any]:
    """The chosen word's map at step k over that step's predicted x0, and summed over all
    steps over the result (None, None: the run kept no maps)."""
    att = view.attention
    if att is None:
        return None, None
    if entry is None or not 0 <= int(entry) < len(att.labels):  # the list is being refilled
        entry = att.default
    entry = int(entry)
    name = att.labels[entry]
    here = service.attention_overlay(enlarged(x0), att.at_step(k, entry))
    total = service.attention_overlay(enlarged(view.image), att.summed(entry))
    return (gr.Image(here, label=f"'{name}' at step {view.records[k].i}, over the predicted x0"),
            gr.Image(total, label=f"'{name}' summed over all {len(view.records)} steps, "
                                  "over the result"))


def step_facts(record: service.StepRecord, view: RunView) -> str:
    """sigma, t, the size of eps_cond - eps_uncond and any guide's loss at this step."""
    lines = [f"**step {record.i}** · sigma **{float(record.sigma):.4f}** · "
             f"t **{float(record.t):.1f}**"]
    size = service.guidance_size(record)
    if size is None:
        lines.append("guidance 1: no unconditional pass, so no guidance direction")
    else:
        lines.append(f"guidance direction |pred_cond − pred_uncond| (RMS) **{size:.4f}**")
    for name, points in view.losses.items():
        at = [loss for i, loss in points if i == record.i]
        if at:
            lines.append(f"loss {name}: **{at[0]:.4f}**")
    return "  \n".join(lines)
