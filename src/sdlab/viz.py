"""Plots (matplotlib, drawn off-screen) and grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from sdlab.outputs import atomic_write  # noqa: E402


def plot_schedule(rows: list[tuple[int, float, float]], title: str, path: str | Path) -> Path:
    """Sigma and timestep against the step index, as a PNG."""
    steps = [r[0] for r in rows]
    fig, (ax_sigma, ax_t) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_sigma.plot(steps, [r[2] for r in rows], marker="o")
    ax_sigma.set(xlabel="step i", ylabel="sigma", title="noise level")
    ax_t.plot(steps, [r[1] for r in rows], marker="o", color="tab:orange")
    ax_t.set(xlabel="step i", ylabel="t", title="timestep")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curve(values: list[float], xlabel: str, ylabel: str, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(len(values)), values, marker="o")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
