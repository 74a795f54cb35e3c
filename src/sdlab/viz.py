"""Plots, drawn off-screen on `matplotlib.figure.Figure` (no pyplot: a notebook's or app's
backend is left as it is)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from sdlab.outputs import atomic_write
from sdlab.trace import Trace


def plot_schedule(rows: list[tuple[int, float, float]], title: str, path: str | Path) -> Path:
    """Sigma and timestep against the step index, as a PNG."""
    return save_figure(schedule_figure(rows, title), path)


def schedule_figure(rows: list[tuple[int, float, float]], title: str,
                    size: tuple[float, float] = (9, 3.5)) -> Figure:
    """Sigma and timestep against the step index."""
    steps = [r[0] for r in rows]
    fig = Figure(figsize=size)
    ax_sigma, ax_t = fig.subplots(1, 2)
    ax_sigma.plot(steps, [r[2] for r in rows], marker="o")
    ax_sigma.set(xlabel="step i", ylabel="sigma", title="noise level")
    ax_t.plot(steps, [r[1] for r in rows], marker="o", color="tab:orange")
    ax_t.set(xlabel="step i", ylabel="t", title="timestep")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def trace_plots(trace: Trace, folder: Path) -> list[Path]:
    """sigma per step, the spread of the latents and of the predicted x0, and each guide's
    loss curve."""
    steps = trace.tensors["i"].tolist()
    written = [plot_series(steps, {"sigma": trace.tensors["sigma"].tolist()}, "sigma",
                           folder / "sigma.png")]
    spread = {name: trace.tensors[name].flatten(1).std(dim=1).tolist()
              for name in ("latents", "x0_pred") if name in trace.tensors}
    written.append(plot_series(steps, spread, "std", folder / "spread.png"))
    for name, points in trace.meta.get("losses", {}).items():
        if points:
            safe = "".join(c if c.isalnum() else "-" for c in name)
            written.append(plot_series([p[0] for p in points], {name: [p[1] for p in points]},
                                       "loss", folder / f"loss-{safe}.png"))
    return written


def plot_series(x: list[int], series: dict[str, list[float]], ylabel: str,
                path: str | Path) -> Path:
    """Lines against the step index."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for name, values in series.items():
        ax.plot(x, values, marker="o", label=name)
    ax.set(xlabel="step i", ylabel=ylabel)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Figure, path: str | Path) -> Path:
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
