"""Sweeps: prompts x seeds x settings, every cell a recipe, run here or on a Ray cluster.

A sweep is a base recipe and a list of axes, each over one recipe field (`guidance`,
`scheduler`, `steps`, `swap`, `guide`, ...). Its cells are the product of the axes' values;
each cell's identity is a hash of its recipe (canonical JSON of the settings and the model's
weights hash), so a sweep started again skips the cells it has. Everything lands in one
folder:

    DIR/cells/<hash>.png    the image, with its recipe inside (`sdlab generate --from` re-runs it)
    DIR/cells/<hash>.json   the cell's row of the table (written after its PNG)
    DIR/results.csv         one row per cell, in the sweep's order (+ results.parquet when
                            pyarrow is installed)

Rows hold the recipe fields, the file, the scores of a scoring callable (on the bundled
model: what the judge read and whether it is what the prompt asked for) and `seconds`, the
one column that differs between runs of the same sweep.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from sdlab.errors import SdlabError
from sdlab.models import BUNDLED_DIR, Parts, folder_scale_factor, load, read_configs, resolve
from sdlab.models import weights_hash as folder_weights_hash
from sdlab.outputs import atomic_write, check_writable, recipe_meta, save_png
from sdlab.recipe import GenerateParams, Recipe, parse
from sdlab.run import check_for_model, execute
from sdlab.surgery import conditioning

MAX_CELLS = 10_000
MAX_PROMPTS = 1_000
MAX_AXIS_VALUES = 1_000
TIMING_COLUMNS = ("seconds",)  # the only columns that differ between runs of one sweep
TABLE_EVERY = 25  # rewrite results.csv every this many finished cells (and at the end)

PARAM_FIELDS = {f.name: f for f in fields(GenerateParams)}
TUPLE_FIELDS = ("swap", "mix", "embedding", "token", "guide")
INT_FIELDS = ("steps", "seed", "height", "width", "guide_every")
FLOAT_FIELDS = ("guidance",)
OPTIONAL_FIELDS = ("height", "width", "clip_model")  # "" stands for None
AXIS_FIELDS = tuple(name for name in PARAM_FIELDS if name != "batch")  # a cell is one image
ENTRY_SEPARATOR = "+"  # several entries of a tuple field in one axis value: a=b+c=d


# --- axes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One recipe field and the values a sweep gives it; `labels` as the user wrote them."""

    name: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]

    @classmethod
    def of(cls, name: str, raw_values: Sequence[str]) -> Axis:
        """An axis from strings as the command line gives them ("" = none / no edit)."""
        if name not in AXIS_FIELDS:
            raise SdlabError(f"--axis {name}: not a recipe field; choose one of "
                             f"{', '.join(AXIS_FIELDS)}")
        if not raw_values:
            raise SdlabError(f"--axis {name}: give at least one value")
        if len(raw_values) > MAX_AXIS_VALUES:
            raise SdlabError(f"--axis {name}: {len(raw_values)} values is over the limit of "
                             f"{MAX_AXIS_VALUES}")
        values = tuple(field_value(name, raw) for raw in raw_values)
        return cls(name, values, tuple(raw_values))


def parse_axis(text: str) -> Axis:
    """`NAME=V1,V2,...` (or `NAME=V1|V2|...` when values hold commas) -> Axis."""
    name, sep, rest = text.partition("=")
    if not sep:
        raise SdlabError(f"--axis {text}: write NAME=VALUE,VALUE,... e.g. guidance=1,3,5")
    separator = "|" if "|" in rest else ","
    return Axis.of(name.strip(), [v.strip() for v in rest.split(separator)])


def field_value(name: str, raw: str) -> Any:
    """A recipe field's value from its text: numbers parsed, "" as None for optional fields,
    tuple fields split on `+` ("" is the empty tuple)."""
    if name in TUPLE_FIELDS:
        entries = tuple(e.strip() for e in raw.split(ENTRY_SEPARATOR) if e.strip())
        if name == "embedding":
            return tuple(str(Path(e).resolve()) for e in entries)
        return entries
    if name in OPTIONAL_FIELDS and raw == "":
        return None
    try:
        if name in INT_FIELDS:
            return int(raw)
        if name in FLOAT_FIELDS:
            return float(raw)
    except ValueError:
        kind = "a whole number" if name in INT_FIELDS else "a number"
        raise SdlabError(f"--axis {name}={raw}: not {kind}") from None
    return raw


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0-99`, `0,3,7` or a mix (`0-3,10`) -> the seeds, in order, each once."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else ("", part)
                first, last = int(lo), int(hi)
                if last < first or last - first >= MAX_CELLS:
                    raise SdlabError(f"--seeds {text}: the range {part} is empty or longer "
                                     f"than {MAX_CELLS}")
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise SdlabError(f"--seeds {text}: write 0-99, 0,3,7 or both (0-3,10)") from None
        if len(seeds) > MAX_CELLS:
            raise SdlabError(f"--seeds {text}: over the limit of {MAX_CELLS} seeds")
    return tuple(dict.fromkeys(seeds))


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """One prompt a line (blank lines skipped), at most MAX_PROMPTS."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = list(itertools.islice(stream, MAX_PROMPTS * 4 + 1))
    except (OSError, UnicodeDecodeError) as err:
        raise SdlabError(f"cannot read the prompts file {path}: {err}") from err
    prompts = [line.strip() for line in lines if line.strip()]
    if len(prompts) > MAX_PROMPTS or len(lines) > MAX_PROMPTS * 4:
        raise SdlabError(f"{path}: more than {MAX_PROMPTS} prompts; split the sweep")
    if not prompts:
        raise SdlabError(f"{path} holds no prompt (one prompt a line)")
    return tuple(prompts)


# --- the sweep and its cells -------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One recipe of the sweep: its settings (size filled in, batch 1), its key (hash) and
    its coordinates (the label of each axis' value)."""

    params: GenerateParams
    key: str
    coords: tuple[tuple[str, str], ...]

    @property
    def file(self) -> str:
        return f"cells/{self.key}.png"

    def coord(self, axis: str) -> str:
        return dict(self.coords)[axis]


@dataclass(frozen=True)
class Sweep:
    """A base recipe and the axes that vary it (prompt and seed are axes like the others)."""

    base: GenerateParams
    axes: tuple[Axis, ...]

    def __post_init__(self) -> None:
        names = [a.name for a in self.axes]
        for name in names:
            if names.count(name) > 1:
                raise SdlabError(f"the axis {name} is given twice: give its values once")
        count = self.size
        if count > MAX_CELLS:
            raise SdlabError(f"the sweep has {count} cells, over the limit of {MAX_CELLS}: "
                             "give fewer prompts, seeds or axis values")

    @classmethod
    def of(cls, prompts: Sequence[str], seeds: Sequence[int], axes: Sequence[Axis] = (),
           base: GenerateParams | None = None) -> Sweep:
        """prompts x seeds x axes over `base` (the recipe defaults when None)."""
        if not prompts:
            raise SdlabError("give at least one --prompt (or --prompts FILE)")
        if len(prompts) > MAX_PROMPTS:
            raise SdlabError(f"{len(prompts)} prompts is over the limit of {MAX_PROMPTS}")
        prompt_axis = Axis("prompt", tuple(prompts), tuple(prompts))
        seed_axis = Axis("seed", tuple(seeds), tuple(str(s) for s in seeds))
        for axis in axes:
            if axis.name in ("prompt", "seed"):
                raise SdlabError(f"give {axis.name}s with --{axis.name}"
                                 f"{'s' if axis.name == 'seed' else ''}, not --axis")
        return cls(base or GenerateParams(prompt=""), (prompt_axis, *axes, seed_axis))

    @property
    def size(self) -> int:
        count = 1
        for axis in self.axes:
            count *= len(axis.values)
        return count

    def varying(self) -> list[Axis]:
        """The axes with more than one value (those a grid or a plot can show)."""
        return [a for a in self.axes if len(a.values) > 1]


def plan(sweep: Sweep, folder: Path) -> list[Cell]:
    """Every cell of the sweep, checked (one-line SdlabError naming the axis and value)
    before any cell runs, with the model's native size filled in and its hash."""
    configs = read_configs(folder)
    native = int(configs["unet"]["sample_size"]) * folder_scale_factor(folder)
    _check_axes(sweep, folder)
    digest = folder_weights_hash(folder)
    cells = []
    for combo in itertools.product(*(zip(a.values, a.labels, strict=True) for a in sweep.axes)):
        changes = {a.name: value for a, (value, _) in zip(sweep.axes, combo, strict=True)}
        params = replace(sweep.base, **changes, batch=1)
        params = replace(params, height=params.height or native, width=params.width or native)
        check_for_model(parse(params), folder)
        coords = tuple((a.name, label) for a, (_, label) in zip(sweep.axes, combo, strict=True))
        cells.append(Cell(params, cell_key(params, digest), coords))
    return cells


def _check_axes(sweep: Sweep, folder: Path) -> None:
    """Each axis value on the base recipe alone, so a bad one is named."""
    base = replace(sweep.base, prompt=sweep.axes[0].values[0] if sweep.axes else "")
    for axis in sweep.axes:
        for value, label in zip(axis.values, axis.labels, strict=True):
            try:
                check_for_model(parse(replace(base, **{axis.name: value})), folder)
            except SdlabError as err:
                raise SdlabError(f"--axis {axis.name}={label}: {err}") from None


def cell_key(params: GenerateParams, weights_hash: str) -> str:
    """The cell's identity: sha256 of its canonical recipe and the model's weights hash."""
    text = json.dumps({"params": params.to_dict(), "weights_hash": weights_hash},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_text_edits(parts: Parts, cells: Iterable[Cell]) -> None:
    """Run each distinct prompt / text-edit combination through the text encoder once, so
    an edit that cannot apply (a swap of a word the prompt lacks) fails before any cell."""
    seen = set()
    for cell in cells:
        p = cell.params
        combo = (p.prompt, p.negative, p.guidance != 1, p.swap, p.mix, p.embedding, p.token)
        if combo in seen:
            continue
        seen.add(combo)
        try:
            conditioning(parts, parse(p))
        except SdlabError as err:
            where = ", ".join(f"{k}={v}" for k, v in cell.coords if k != "seed")
            raise SdlabError(f"cell {where}: {err}") from None


# --- running a cell ----------------------------------------------------------------------


def render(parts: Parts, recipe: Recipe | GenerateParams) -> Image.Image:
    """The one place a cell is run: its recipe through the run service (the PNG is written
    by the sweep's driver, so Ray workers need no shared disk)."""
    return execute(parts, recipe if isinstance(recipe, Recipe) else parse(recipe)
                   ).generation.images[0]


class Runner(Protocol):
    """Runs cells, yielding (cell, image, seconds) as each finishes, in any order."""

    def __call__(self, cells: Sequence[Cell]) -> Iterator[tuple[Cell, Image.Image, float]]:
        ...


@dataclass
class LocalRunner:
    """Cells one at a time in this process."""

    parts: Parts

    def __call__(self, cells: Sequence[Cell]) -> Iterator[tuple[Cell, Image.Image, float]]:
        for cell in cells:
            start = time.perf_counter()
            image = render(self.parts, cell.params)
            yield cell, image, time.perf_counter() - start


# --- scores ------------------------------------------------------------------------------

Scorer = Callable[[Image.Image, GenerateParams], dict[str, Any]]


def judge_scorer(image: Image.Image, params: GenerateParams) -> dict[str, Any]:
    """The bundled model's scores: what the judge read (`read_<attribute>`), whether it is
    what the prompt (after its swaps) names (`ok_<attribute>`: 1, 0, or "" when the prompt
    does not name it) and `ok_all` (every named attribute right)."""
    from sdlab.tiny.caption import parse_caption
    from sdlab.tiny.judge import ATTRIBUTES, judge, score

    wanted = parse_caption(params.prompt, params.swap) if params.prompt else {}
    reading = judge(image)
    ok = score(reading, wanted)
    row: dict[str, Any] = {f"read_{a}": getattr(reading, a) or "" for a in ATTRIBUTES}
    row.update({f"ok_{a}": int(ok[a]) if a in ok else "" for a in ATTRIBUTES})
    row["ok_all"] = int(all(ok.values())) if ok else ""
    return row


def default_scorer(folder: Path) -> Scorer | None:
    """The judge for the bundled model (its world is what the judge reads), else none."""
    bundled = BUNDLED_DIR.resolve()
    if folder.resolve() == bundled or folder_weights_hash(folder) == folder_weights_hash(bundled):
        return judge_scorer
    return None


# --- the table ---------------------------------------------------------------------------

RECIPE_COLUMNS = tuple(name for name in PARAM_FIELDS if name != "batch")


def cell_row(cell: Cell, seconds: float, scores: dict[str, Any]) -> dict[str, Any]:
    params = cell.params.to_dict()
    row: dict[str, Any] = {"cell": cell.key, "file": cell.file}
    for name in RECIPE_COLUMNS:
        value = params[name]
        row[name] = ENTRY_SEPARATOR.join(value) if name in TUPLE_FIELDS else value
    row.update(scores)
    row["seconds"] = round(seconds, 4)
    return row


def table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """cell, file, the recipe, the scores (in first-seen order), seconds last."""
    columns = list(dict.fromkeys(k for row in rows for k in row if k not in TIMING_COLUMNS))
    return [*columns, *TIMING_COLUMNS]


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, table_columns(rows), lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return stream.getvalue()


def write_table(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """results.csv (and results.parquet when pyarrow is installed), written atomically."""
    text = table_csv(rows)
    written = [atomic_write(out / "results.csv", lambda tmp: tmp.write_text(text))]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    columns = table_columns(rows)
    data = {c: [("" if row.get(c) is None else str(row.get(c, ""))) for row in rows]
            for c in columns}
    table = pa.table(data)
    written.append(atomic_write(out / "results.parquet",
                                lambda tmp: pq.write_table(table, str(tmp))))
    return written


def read_table(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


# --- running a sweep ---------------------------------------------------------------------


@dataclass
class SweepResult:
    out: Path
    cells: list[Cell]
    rows: list[dict[str, Any]]  # one per cell, in the sweep's order
    ran: int  # cells run now (the others were already in the folder)
    files: list[Path] = field(default_factory=list)  # table, grids, plots


def _stored_row(out: Path, cell: Cell) -> dict[str, Any] | None:
    """The row of a finished cell: its PNG and row file both there, the row its own."""
    row_file = out / "cells" / f"{cell.key}.json"
    if not (out / cell.file).is_file() or not row_file.is_file():
        return None
    try:
        row = json.loads(row_file.read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) and row.get("cell") == cell.key else None


def model_reference(model: str, folder: Path) -> str:
    """What the PNG's recipe names: a path as an absolute path, a name as itself."""
    return str(folder.resolve()) if Path(model).exists() else model


def run_sweep(sweep: Sweep, out: str | Path, model: str, *,
              runner: Callable[[Parts], Runner] | None = None,
              scorer: Scorer | None | str = "default", device: str = "cpu",
              on_cell: Callable[[int, int], None] | None = None) -> SweepResult:
    """Run the cells of `sweep` that `out` does not have yet, write each (PNG + row) as it
    finishes, then the table. `runner(parts)` gives what runs the cells (default:
    LocalRunner, one at a time here; a `sdlab.sweep_ray.RayRunner` for a cluster);
    `scorer` scores each image (default: the judge on the bundled model, nothing on
    others; None for no scores). `on_cell(done, total)` reports progress, first with the
    cells already there."""
    out = Path(out)
    folder = resolve(model)
    cells = plan(sweep, folder)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    check_writable(out / "results.csv", ".csv")
    rows: dict[str, dict[str, Any]] = {}
    for cell in cells:
        if (row := _stored_row(out, cell)) is not None:
            rows[cell.key] = row
    todo = [c for c in cells if c.key not in rows]
    if scorer == "default":
        scorer = default_scorer(folder)
    if on_cell:
        on_cell(len(rows), len(cells))
    if todo:
        parts = load(model, device=device)
        check_text_edits(parts, todo)
        run = (runner or LocalRunner)(parts)
        meta_for = _meta_writer(model_reference(model, folder), folder)
        for cell, image, seconds in run(todo):
            rows[cell.key] = _finish(out, cell, image, seconds, meta_for, scorer)
            if on_cell:
                on_cell(len(rows), len(cells))
            if len(rows) % TABLE_EVERY == 0:
                write_table([rows[c.key] for c in cells if c.key in rows], out)
    ordered = [rows[c.key] for c in cells]
    files = write_table(ordered, out)
    return SweepResult(out, cells, ordered, len(todo), files)


def _meta_writer(model_ref: str, folder: Path) -> Callable[[GenerateParams], dict[str, Any]]:
    base = recipe_meta(model_ref, folder, {})
    return lambda params: {**base, "params": params.to_dict(), "index": 0}


def _finish(out: Path, cell: Cell, image: Image.Image, seconds: float,
            meta_for: Callable[[GenerateParams], dict[str, Any]],
            scorer: Scorer | None) -> dict[str, Any]:
    """Write the cell's PNG (recipe inside), then its row file: a cell with both is done."""
    save_png(image, out / cell.file, meta_for(cell.params))
    row = cell_row(cell, seconds, scorer(image, cell.params) if scorer else {})
    text = json.dumps(row, sort_keys=True)
    atomic_write(out / "cells" / f"{cell.key}.json", lambda tmp: tmp.write_text(text))
    return row
