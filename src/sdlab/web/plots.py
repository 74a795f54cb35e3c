"""Figures for the page, drawn off-screen with matplotlib and handed over as images."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from PIL import Image  # noqa: E402


def to_image(fig: plt.Figure) -> Image.Image:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=90)
    finally:
        plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def curves(steps: list[int], sigmas: list[float], losses: dict[str, list[tuple[int, float]]],
           marked: int | None = None) -> Image.Image:
    """Sigma per step (and each guide's loss) with the chosen step marked."""
    panels = 1 + bool(losses)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3), squeeze=False)
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
    steps = [r[0] for r in rows]
    fig, (ax_sigma, ax_t) = plt.subplots(1, 2, figsize=(8, 3))
    ax_sigma.plot(steps, [r[2] for r in rows], marker="o")
    ax_sigma.set(xlabel="step i", ylabel="sigma", title="noise level")
    ax_t.plot(steps, [r[1] for r in rows], marker="o", color="tab:orange")
    ax_t.set(xlabel="step i", ylabel="t", title="timestep")
    fig.suptitle(title)
    fig.tight_layout()
    return to_image(fig)
