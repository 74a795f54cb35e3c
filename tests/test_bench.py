"""`sdlab bench --quick` runs both sides in their worker processes and prints the table
(timings are never asserted: the machine is shared)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sdlab.cli import main


def test_quick_bench_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()  # progress lines (stderr), then the table
    header = next(k for k, line in enumerate(lines) if line.startswith("engine"))
    engines = [line.split()[0] for line in lines[header + 1:header + 4]]
    assert engines == ["diffusers", "sdlab", "sdlab-fast"]
    assert "GFLOP/s" in result.output
    data = json.loads(out.read_text())
    assert data["spec"]["steps"] == 2 and data["spec"]["rounds"] == 1
    assert set(data["seconds"]) == {"diffusers", "sdlab", "sdlab-fast"}
    assert all(len(v) == 1 and v[0] > 0 for v in data["seconds"].values())
    assert data["peak_rss_mb"]["sdlab"] > 0 and data["peak_rss_mb"]["diffusers"] > 0
    assert data["unet_gflop"] > 0
    assert data["ratio_to_diffusers"]["diffusers"] == 1.0


def test_bench_refuses_bad_settings_before_work() -> None:
    result = CliRunner().invoke(main, ["bench", "--size", "100"])
    assert result.exit_code == 1 and "not a multiple of 8" in result.output
