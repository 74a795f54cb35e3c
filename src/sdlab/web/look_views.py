"""Views that look at a stage: the VAE (latent channels, round trip) and the Schedule
(sigmas, an image noised to a step)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdlab.errors import SdlabError
from sdlab.web import service
from sdlab.web.context import Context, shown
from sdlab.web.panel import enlarged, picture
from sdlab.web.plots import schedule
from sdlab.web.serving import check_image, upload_box


def vae_tab(ctx: Context) -> None:
    image = upload_box("Image (PNG or JPEG)", "vae-image")
    run = gr.Button("Encode and decode", variant="primary", elem_id="vae-run")
    facts = gr.Markdown(elem_id="vae-facts")
    with gr.Row():
        channels = picture("The 4 latent channels", "vae-channels")
        decoded = picture("Round trip (decoded)", "vae-decoded")

    @shown
    def on_run(image: str | None) -> tuple[Any, Any, str]:
        pic = _upload(ctx, image)
        with ctx.gate.turn():
            strip, back, psnr, factor = service.vae_roundtrip(ctx.parts, pic)
        size = f"{pic.width}x{pic.height}"
        facts = (f"PSNR **{psnr:.2f} dB** · the latents are **{factor:.0f}x** smaller than "
                 f"the {size} image")
        return enlarged(strip), enlarged(back), facts

    run.click(on_run, image, [channels, decoded, facts], concurrency_limit=None,
              api_name="vae")


def schedule_tab(ctx: Context) -> None:
    with gr.Row():
        scheduler = gr.Dropdown(list(service.SCHEDULERS), value="lms", label="Scheduler",
                                elem_id="sched-scheduler")
        steps = gr.Slider(1, 100, value=15, step=1, label="Steps", elem_id="sched-steps")
    show = gr.Button("Show the schedule", variant="primary", elem_id="sched-show")
    with gr.Row():
        table = gr.Dataframe(headers=["i", "t", "sigma"], label="Schedule", interactive=False,
                             elem_id="sched-table")
        plot = picture("sigma and t per step", "sched-plot")
    gr.Markdown("An image noised to step k with the scheduler's `add_noise`:")
    with gr.Row():
        image = upload_box("Image (PNG or JPEG)", "sched-image")
        noised = picture("Noised to step k (decoded)", "sched-noised")
    with gr.Row():
        step = gr.Slider(0, 99, value=5, step=1, label="Step k", elem_id="sched-step")
        seed = gr.Number(value=0, precision=0, label="Noise seed", elem_id="sched-seed")
    noise = gr.Button("Noise it", elem_id="sched-noise")

    @shown
    def on_show(scheduler: str, steps: int) -> tuple[list[list[float]], Any]:
        rows = service.schedule_rows(ctx.parts, scheduler, int(steps))
        table = [[i, round(t, 2), round(sigma, 4)] for i, t, sigma in rows]
        return table, schedule(rows, f"{scheduler}, {int(steps)} steps")

    @shown
    def on_noise(image: str | None, scheduler: str, steps: int, k: int, seed: int) -> Any:
        pic = _upload(ctx, image)
        with ctx.gate.turn():
            return enlarged(service.noised_to_step(ctx.parts, pic, scheduler, int(steps),
                                                   int(k), int(seed)))

    show.click(on_show, [scheduler, steps], [table, plot], api_name="schedule")
    noise.click(on_noise, [image, scheduler, steps, step, seed], noised,
                concurrency_limit=None, api_name="noise")


def _upload(ctx: Context, image: str | None) -> Any:
    """A checked upload at the model's size."""
    if not image:
        raise SdlabError("no image uploaded: choose a PNG or JPEG first")
    file = ctx.workspace.upload(image, "image")
    check_image(file, ctx.limits)
    return service.load_picture(str(file), ctx.parts)
