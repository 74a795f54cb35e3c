"""The panel a run fills while it runs and after: progress, live preview, Stop, the result
with its recipe and downloads. Generate, img2img and Guidance each have one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from sdlab.web import service
from sdlab.web.context import Context, stream_run


@dataclass
class RunView:
    """What the Steps view shows of the last run of a session (a new run replaces it, so a
    session holds one run's records and attention maps at most)."""

    records: list[service.StepRecord] = field(default_factory=list)
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    video: Path | None = None
    trace: Path | None = None
    attention: service.StepAttention | None = None
    image: Image.Image | None = None  # the run's (first) result


@dataclass
class Panel:
    progress: gr.HTML
    preview: gr.Image
    result: gr.Gallery
    recipe: gr.JSON
    png: gr.File
    latents: gr.File
    status: gr.Markdown

    def outputs(self) -> list[Any]:
        return [self.progress, self.preview, self.result, self.recipe, self.png, self.latents,
                self.status]


def enlarged(image: Image.Image, side: int = 256) -> Image.Image:
    """A small picture scaled up by a whole factor (nearest: the pixels stay visible)."""
    factor = max(1, side // max(image.size))
    return image.resize((image.width * factor, image.height * factor),
                        Image.Resampling.NEAREST)


def picture(label: str, elem_id: str, height: int = 256) -> gr.Image:
    """An image the page shows (PNG, so what the page holds is what the run made)."""
    return gr.Image(label=label, type="pil", format="png", interactive=False, elem_id=elem_id,
                    height=height)


def build_panel(prefix: str) -> Panel:
    progress = gr.HTML(progress_html(0, 0, None), elem_id=f"{prefix}-progress")
    with gr.Row():
        preview = picture("Live preview (predicted x0)", f"{prefix}-preview")
        result = gr.Gallery(label="Result", elem_id=f"{prefix}-result", height="auto",
                            columns=4, object_fit="contain", format="png", preview=False)
    status = gr.Markdown(elem_id=f"{prefix}-status")
    with gr.Accordion("Recipe and downloads", open=True):
        recipe = gr.JSON(label="Recipe (stored in the PNG)", elem_id=f"{prefix}-recipe",
                         max_height=220)
        with gr.Row():
            png = gr.File(label="PNG with its recipe (sdlab generate --from re-runs it)",
                          elem_id=f"{prefix}-png", file_count="multiple")
            latents = gr.File(label="Final latents (.safetensors)", elem_id=f"{prefix}-latents")
    return Panel(progress, preview, result, recipe, png, latents, status)


def progress_html(done: int, total: int, sigma: float | None) -> str:
    if not total:
        return '<div class="sdlab-progress">ready</div>'
    text = f"step {done}/{total}" + (f", sigma {sigma:.3f}" if sigma is not None else "")
    return (f'<div class="sdlab-progress"><progress value="{done}" max="{total}" '
            f'style="width:100%"></progress><span>{text}</span></div>')


def stream_panel(ctx: Context, session: str, recipe: service.Recipe, panel: Panel,
                 steps_state: gr.State) -> Iterator[dict[Any, Any]]:
    """The updates of a run's panel (and the session's Steps view) as it runs."""
    planned = service.planned_steps(recipe)
    yield {panel.status: "", panel.progress: progress_html(0, planned, None)}
    for kind, value in stream_run(ctx, session, recipe):
        if kind == "step":
            i, done, total, sigma, image = value
            yield {panel.progress: progress_html(done, total, sigma),
                   panel.preview: enlarged(image)}
            continue
        outputs: service.RunOutputs = value
        generation = outputs.generation
        ran = len(outputs.records)
        note = f"stopped after {ran} steps" if ran < planned else f"done: {ran} steps"
        yield {
            panel.result: generation.images,
            panel.recipe: outputs.meta,
            panel.png: [str(p) for p in outputs.pngs],
            panel.latents: str(outputs.latents),
            panel.status: f"{note}; seed {recipe.params.seed}. The Steps tab shows every step.",
            steps_state: RunView(outputs.records, generation.losses, outputs.video,
                                 outputs.trace, outputs.attention, generation.images[0]),
        }
