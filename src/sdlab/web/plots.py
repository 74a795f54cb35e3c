"""Figures for the page, drawn off-screen with matplotlib and handed over as images."""

from __future__ import annotations

import io

from matplotlib.figure import Figure
from PIL import Image

from sdlab.viz import schedule_figure


def to_image(fig: Figure) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def curves(steps: list[int], sigmas: list[float], losses: dict[str, list[tuple[int, float]]],
           marked: int | None = None) -> Image.Image:
    """Sigma per step (and each guide's loss) with the chosen step marked."""
    panels = 1 + bool(losses)
    fig = Figure(figsize=(4.5 * panels, 3))
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, sigmas, marker=".")
    ax.set(xlabel="step i", ylabel="sigma", title="noise level")
    if losses:
        ax_loss = axes[0][1]
        for name, points in losses.items():
            ax_loss.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax_loss.set(xlabel="step i", ylabel="loss", title="guide loss")
        ax_loss.legend()
    if marked is not None:
        for row in axes:
            for a in row:
                a.axvline(marked, color="tab:red", linestyle="--", linewidth=1)
    fig.tight_layout()
    return to_image(fig)


def schedule(rows: list[tuple[int, float, float]], title: str) -> Image.Image:
    """Sigma and timestep against the step index."""
    return to_image(schedule_figure(rows, title, size=(8, 3)))
