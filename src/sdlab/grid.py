"""Pictures of a sweep: X/Y image grids with labelled axes (a Z axis gives one grid per
value), and the judge's accuracy against each axis."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from sdlab.errors import SdlabError
from sdlab.outputs import atomic_write
from sdlab.sweep import Axis, Cell, Sweep

MIN_TILE = 128  # small images (the bundled model's 64 px) are scaled up to this, pixel for pixel
PAD = 8
FONT_SIZE = 14
FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans where there is one (the system's, or the copy matplotlib ships), else
    PIL's own font."""
    import matplotlib

    candidates = [*FONT_FILES, str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" /
                                   "DejaVuSans.ttf")]
    for file in candidates:
        if Path(file).is_file():
            return ImageFont.truetype(file, size)
    return ImageFont.load_default()


def grid_axes(sweep: Sweep, x: str | None = None, y: str | None = None,
              z: str | None = None) -> tuple[Axis | None, Axis | None, Axis | None]:
    """The axes a grid shows: those named, else the varying axes: settings, then prompts,
    then seeds (never as Z unless named)."""
    by_name = {a.name: a for a in sweep.axes}
    for name in (x, y, z):
        if name is not None and name not in by_name:
            raise SdlabError(f"--grid axis {name} is not an axis of the sweep "
                             f"({', '.join(by_name)})")
    named = [n for n in (x, y, z) if n]
    free = [a for a in sweep.varying() if a.name not in named]
    # the settings across, the prompts down, seeds last (and never a grid per seed unasked)
    free.sort(key=lambda a: {"prompt": 1, "seed": 2}.get(a.name, 0))
    chosen = []
    for slot, name in enumerate((x, y, z)):
        if name:
            chosen.append(by_name[name])
        elif free and not (slot == 2 and free[0].name == "seed"):
            chosen.append(free.pop(0))
        else:
            chosen.append(None)
    return chosen[0], chosen[1], chosen[2]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_")[:60] or "none"


def write_grids(out: Path, sweep: Sweep, cells: Sequence[Cell], x: str | None = None,
                y: str | None = None, z: str | None = None) -> list[Path]:
    """DIR/grid.png, or DIR/grid-<z value>.png per Z value. Axes the grid does not show
    take their first value."""
    ax, ay, az = grid_axes(sweep, x, y, z)
    shown = {a.name for a in (ax, ay, az) if a}
    first = {a.name: a.labels[0] for a in sweep.axes if a.name not in shown}
    kept = [c for c in cells if all(c.coord(k) == v for k, v in first.items())]
    written = []
    for z_label in (az.labels if az else (None,)):
        here = [c for c in kept if az is None or c.coord(az.name) == z_label]
        title = f"{az.name} = {z_label}" if az else _fixed_title(sweep, first)
        image = grid_image(out, here, ax, ay, title)
        name = f"grid-{_slug(z_label)}.png" if az else "grid.png"
        written.append(atomic_write(out / name, lambda tmp, im=image: im.save(tmp, "PNG")))
    return written


def _fixed_title(sweep: Sweep, first: dict[str, str]) -> str:
    varying = {a.name for a in sweep.varying()}
    return ", ".join(f"{k} = {v}" for k, v in first.items() if k in varying)


def grid_image(out: Path, cells: Sequence[Cell], x: Axis | None, y: Axis | None,
               title: str = "") -> Image.Image:
    """The cells' images in rows (y) and columns (x), each labelled with its value."""
    xs, ys = (x.labels if x else ("",)), (y.labels if y else ("",))
    at = {(c.coord(x.name) if x else "", c.coord(y.name) if y else ""): c for c in cells}
    tiles = {k: Image.open(out / c.file).convert("RGB") for k, c in at.items()}
    w, h = next(iter(tiles.values())).size
    scale = max(1, -(-MIN_TILE // max(w, h)))
    w, h = w * scale, h * scale
    f = font()
    col_text = [_wrap(f"{x.name} = {v}" if x else "", w, f) for v in xs]
    row_text = [_wrap(f"{y.name} = {v}" if y else "", 2 * w, f) for v in ys]
    left = max((_text_size(t, f)[0] for t in row_text), default=0) + 2 * PAD
    top = max((_text_size(t, f)[1] for t in col_text), default=0) + 2 * PAD
    head = _text_size(title, f)[1] + 2 * PAD if title else 0
    sheet = Image.new("RGB", (left + len(xs) * (w + PAD), head + top + len(ys) * (h + PAD)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill="black", font=f)
    for i, text in enumerate(col_text):
        draw.multiline_text((left + i * (w + PAD), head + PAD), text, fill="black", font=f)
    for j, text in enumerate(row_text):
        y0 = head + top + j * (h + PAD)
        draw.multiline_text((PAD, y0 + h // 2 - _text_size(text, f)[1] // 2), text,
                            fill="black", font=f)
        for i, xv in enumerate(xs):
            tile = tiles.get((xv, ys[j]))
            if tile is not None:
                tile = tile.resize((w, h), Image.Resampling.NEAREST)
                sheet.paste(tile, (left + i * (w + PAD), y0))
    return sheet


def _text_size(text: str, f: Any) -> tuple[int, int]:
    if not text:
        return 0, 0
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=f)
    return box[2] - box[0], box[3] - box[1]


def _wrap(text: str, width: int, f: Any) -> str:
    """Wrap `text` to lines no wider than `width` pixels (roughly, by characters)."""
    char = max(1, _text_size("n", f)[0])
    return "\n".join(textwrap.wrap(text, max(8, width // char))) if text else ""


# --- accuracy plots ----------------------------------------------------------------------


def accuracy_by(rows: Sequence[dict[str, Any]], axis: Axis, column: str) -> list[float | None]:
    """Mean of `column` (1/0, "" = not asked) over the rows at each value of `axis`."""
    means = []
    for label, value in zip(axis.labels, axis.values, strict=True):
        marks = [float(r[column]) for r in rows if _matches(r, axis.name, value, label)
                 and r.get(column) not in ("", None)]
        means.append(sum(marks) / len(marks) if marks else None)
    return means


def _matches(row: dict[str, Any], name: str, value: Any, label: str) -> bool:
    got = row.get(name)
    if isinstance(value, tuple):
        return str(got) == "+".join(value)
    if isinstance(value, float):
        return got is not None and got != "" and float(got) == value
    return str(got) == str(value) if value is not None else got in ("", None)


def score_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The 1/0 columns of the table (ok_*), `ok_all` last."""
    names = list(dict.fromkeys(k for r in rows for k in r if k.startswith("ok_")))
    return sorted(names, key=lambda n: n == "ok_all")


def write_plots(out: Path, sweep: Sweep, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """DIR/accuracy-<axis>.png for each varying axis but seed: the share of cells the judge
    read right, per attribute and for all of them, against the axis' values."""
    columns = [c for c in score_columns(rows) if any(r.get(c) not in ("", None) for r in rows)]
    if not columns:
        raise SdlabError("--plot needs scores: the judge scores the bundled model's images "
                         "(or pass a scorer through the API)")
    written = []
    for axis in sweep.varying():
        if axis.name == "seed":
            continue
        figure = accuracy_figure(rows, axis, columns)
        path = out / f"accuracy-{axis.name}.png"
        written.append(atomic_write(path, lambda tmp, fig=figure: fig.savefig(tmp, dpi=100)))
    return written


def accuracy_figure(rows: Sequence[dict[str, Any]], axis: Axis, columns: Sequence[str]
                    ) -> Figure:
    numeric = all(isinstance(v, int | float) for v in axis.values)
    positions = list(axis.values) if numeric else list(range(len(axis.values)))
    figure = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for column in columns:
        means = accuracy_by(rows, axis, column)
        points = [(p, m) for p, m in zip(positions, means, strict=True) if m is not None]
        if not points:
            continue
        style = {"linewidth": 2.5, "color": "black"} if column == "ok_all" else {"alpha": 0.8}
        ax.plot(*zip(*points, strict=True), marker="o", label=column[3:], **style)
    if not numeric:
        ax.set_xticks(positions, [textwrap.shorten(v or "none", 28) for v in axis.labels],
                      rotation=20, ha="right")
    n = len(rows) // max(1, len(axis.values))
    ax.set(xlabel=axis.name, ylabel="share read right by the judge", ylim=(-0.03, 1.03),
           title=f"accuracy against {axis.name} ({n} cells per value)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure
