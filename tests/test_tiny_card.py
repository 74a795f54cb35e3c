"""The bundled model's card: a template filled from the run's config and logs and the
benchmark's results, never typed by hand."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from training.card import (
    STAGES,
    Benchmark,
    TrainingRecord,
    bar_rows,
    end_to_end_minutes,
    log_table,
    provenance,
    render_card,
)
from training.config import TinyConfig
from training.fit import LossLog

FOLDER = Path(__file__).resolve().parent.parent / "src" / "sdlab" / "assets" / "sdlab-tiny"


def _workdir(tmp_path: Path, config: TinyConfig, sittings: dict[str, list[list[float]]]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    for stage, runs in sittings.items():
        losses = LossLog(tmp_path / stage / "log.jsonl")
        for times in runs:
            for step, t in enumerate(times):
                losses.write(step, time=t, loss=1.0 / (step + 1))
    return tmp_path


UNBROKEN = {"vae": [[0, 600]], "clip": [[0, 900]], "unet": [[0, 1200, 3000]],
            "vae_decoder": [[0, 600]]}


def test_the_shipped_card_is_the_template_filled_from_its_folder():
    """The committed README.md is exactly what the template makes of the folder's weights,
    benchmark.json and training.json: no number in it was typed by hand."""
    assert (FOLDER / "README.md").read_text() == render_card(FOLDER)


def test_the_card_is_the_template_filled_from_the_folder(tmp_path):
    """Rendered from a model folder (weights, benchmark.json, training.json), the card holds
    the measured bars, the run's provenance and stage logs, and no placeholder."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(FOLDER, folder)
    record = TrainingRecord.from_workdir(_workdir(tmp_path / "run", TinyConfig(), UNBROKEN))
    (folder / "training.json").write_text(record.to_json())
    card = render_card(folder)
    for bar, measured, met in bar_rows(Benchmark.read(folder / "benchmark.json")):
        assert f"| {bar} | {measured} | {'yes' if met else 'no'} |" in card, bar
    assert "one unbroken run (seed 0) of this configuration" in card
    assert log_table(record.logs) in card and "$" not in card
    assert f"clean captions, {TinyConfig().unet.steps:,} steps" in card


def test_bars_follow_the_results():
    bench = Benchmark.read(FOLDER / "benchmark.json")
    rows = {bar: ok for bar, _, ok in bar_rows(bench)}
    color_bar = next(b for b in rows if b.startswith("color at guidance 7.5"))
    worse = dataclasses.replace(bench.by_guidance["7.5"], color=0.5)
    low = dict(bench.by_guidance, **{"7.5": worse})
    rows_low = {bar: ok for bar, _, ok in bar_rows(dataclasses.replace(bench, by_guidance=low))}
    assert rows_low[color_bar] is False
    assert {b: ok for b, ok in rows_low.items() if b != color_bar} == {
        b: ok for b, ok in rows.items() if b != color_bar}


def test_stage_minutes_and_the_end_to_end_time_come_from_the_logs(tmp_path):
    """Each pair of side-by-side stages takes as long as its slower one; a resumed stage's
    restarted clock is summed."""
    resumed = dict(UNBROKEN, unet=[[0, 1200], [0, 1800]])
    record = TrainingRecord.from_workdir(_workdir(tmp_path, TinyConfig(), resumed))
    assert record.logs["unet"].minutes == pytest.approx(50.0)
    assert record.logs["unet"].resumed and not record.logs["clip"].resumed
    assert end_to_end_minutes(record.logs) == pytest.approx(15.0 + 50.0)
    table = log_table(record.logs)
    assert f"| {STAGES['unet']} | 4 | 50.0 | 1.0000 | 0.5000 | - |" in table


@pytest.mark.parametrize("resumed, other, expected", [
    (False, False, "one unbroken run (seed 0) of this configuration"),
    (True, False, "one resumed run (seed 0) of this configuration"),
    (False, True, "a configuration other than this one"),
])  # fmt: skip
def test_provenance_says_what_the_logs_and_config_show(tmp_path, resumed, other, expected):
    config = TinyConfig()
    if other:
        config.unet = dataclasses.replace(config.unet, steps=config.unet.steps + 1)
    sittings = dict(UNBROKEN, vae=[[0, 300], [0, 300]]) if resumed else UNBROKEN
    record = TrainingRecord.from_workdir(_workdir(tmp_path, config, sittings))
    assert expected in provenance(record.config, record.logs)


def test_the_training_record_round_trips(tmp_path):
    record = TrainingRecord.from_workdir(_workdir(tmp_path, TinyConfig(seed=3), UNBROKEN))
    (tmp_path / "training.json").write_text(record.to_json())
    assert TrainingRecord.read(tmp_path) == record
