"""The page: one gr.Blocks with a tab per view, served from this machine alone (no share
link, no analytics, no web fonts: a system font stack)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402 - after the analytics switch

from sdlab.web.context import Context  # noqa: E402
from sdlab.web.edit_views import guidance_tab, img2img_tab, text_tab  # noqa: E402
from sdlab.web.look_views import schedule_tab, vae_tab  # noqa: E402
from sdlab.web.run_views import generate_tab, steps_tab  # noqa: E402
from sdlab.web.serving import Limits  # noqa: E402

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto",
                "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono",
              "monospace"]
TITLE = "sdlab: Stable Diffusion, opened up"


def theme() -> gr.themes.Theme:
    """Gradio's default look with fonts the browser already has (nothing fetched)."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def build_app(ctx: Context) -> gr.Blocks:
    """Every view over one shared, read-only model."""
    # delete_cache: Gradio's copies of uploads and results go after an hour
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(f"## {TITLE}\nModel: `{ctx.model_ref}` — every step of a run, and the "
                    "changes you can make to it.")
        steps_state = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                generate_tab(ctx, steps_state)
            with gr.Tab("Steps", id="steps"):
                steps_tab(ctx, steps_state)
            with gr.Tab("Text", id="text"):
                text_tab(ctx)
            with gr.Tab("img2img", id="img2img"):
                img2img_tab(ctx, steps_state)
            with gr.Tab("VAE", id="vae"):
                vae_tab(ctx)
            with gr.Tab("Schedule", id="schedule"):
                schedule_tab(ctx)
            with gr.Tab("Guidance", id="guidance"):
                guidance_tab(ctx, steps_state)
    # the queue's own bound is the flood guard; the gate says "busy, N waiting" before it
    app.queue(max_size=8 * (ctx.limits.waiting + 1), default_concurrency_limit=None)
    return app


def launch(model: str, host: str = "127.0.0.1", port: int = 7860, limits: Limits = Limits(),  # noqa: B008
           block: bool = True) -> tuple[gr.Blocks, Context]:
    """Load the model once, build the page and serve it (returns at once if not `block`)."""
    ctx = Context.create(model, limits)
    app = build_app(ctx)
    app.launch(server_name=host, server_port=port, share=False, theme=theme(),
               prevent_thread_lock=not block, quiet=True, show_error=True,
               max_file_size=max(limits.image_bytes, limits.embedding_bytes),
               footer_links=["api"], pwa=False, ssr_mode=False, mcp_server=False)
    return app, ctx
