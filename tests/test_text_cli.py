"""`sdlab tokens`, `sdlab embed`, `sdlab interpolate` and generate's text edits end to end
(in process): tables, recipes that re-run their edits, a video with one frame per point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from safetensors.torch import save_file

from sdlab.cli import main
from sdlab.models import Parts
from sdlab.text import token_embedding_table


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_tokens_table(tiny_folder: Path) -> None:
    result = run("tokens", "A picture of a puppy", "--model", str(tiny_folder))
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:-1]]
    assert rows == [["0", "49406", "<|startoftext|>"], ["1", "320", "a</w>"],
                    ["2", "1674", "picture</w>"], ["3", "539", "of</w>"], ["4", "320", "a</w>"],
                    ["5", "6829", "puppy</w>"], ["6", "49407", "<|endoftext|>"]]
    assert result.output.splitlines()[-1] == "7 tokens + 70 padding = 77"


def test_embed_reports_shapes_norms_and_by_hand_difference(tiny: Parts,
                                                           tiny_folder: Path) -> None:
    result = run("embed", "A picture of a puppy", "--model", str(tiny_folder))
    assert result.exit_code == 0, result.output
    assert "token embedding table     (49408, 32)" in result.output
    assert "position embedding table  (77, 32)" in result.output
    puppy = next(line for line in result.output.splitlines() if "puppy</w>" in line).split()
    norm = token_embedding_table(tiny)[6829].norm().item()
    assert float(puppy[3]) == pytest.approx(norm, abs=1e-4)
    diff = re.search(r"max \|diff\| = (\S+) \(same within 1e-5\)", result.output)
    assert diff and float(diff.group(1)) <= 1e-5


def test_generate_with_edits_stores_and_reruns_them(tiny_folder: Path, tmp_path: Path) -> None:
    emb = tmp_path / "toy.safetensors"
    save_file({"<toy>": torch.randn(2, 32) * 0.1}, str(emb))
    out = tmp_path / "edited.png"
    result = run("generate", "A mouse and a <toy>:0.35", "--mix", "A leopard:0.65",
                 "--swap", "mouse=skunk", "--embedding", str(emb), "--model", str(tiny_folder),
                 "--steps", "3", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    params = json.loads(Image.open(out).info["sdlab"])["params"]
    assert params["prompt"] == ""
    assert params["mix"] == ["A mouse and a <toy>:0.35", "A leopard:0.65"]
    assert params["swap"] == ["mouse=skunk"]
    assert params["embedding"] == [str(emb.resolve())]
    plain = tmp_path / "plain.png"
    run("generate", "A mouse and a <toy>:0.35", "--mix", "A leopard:0.65",
        "--model", str(tiny_folder), "--steps", "3", "--out", str(plain), "--quiet")
    rerun = tmp_path / "rerun.png"
    assert run("generate", "--from", str(out), "--out", str(rerun), "--quiet").exit_code == 0
    np.testing.assert_array_equal(pixels(out), pixels(rerun))
    assert not np.array_equal(pixels(out), pixels(plain))  # the edits are in the re-run


@pytest.mark.parametrize(("args", "says"), [
    (["a puppy", "--swap", "kitten=cat"], "'kitten' is not a token of the prompt"),
    (["a puppy", "--swap", "teddybear=cat"], "'teddybear' is 2 tokens"),
    (["a puppy", "--mix", "a cat:0.5"], "the PROMPT argument must be PROMPT:W too"),
    (["--mix", "a cat"], "not PROMPT:WEIGHT"),
])
def test_generate_edit_errors_are_one_line(tiny_folder: Path, tmp_path: Path,
                                           args: list[str], says: str) -> None:
    out = tmp_path / "x.png"
    result = run("generate", *args, "--model", str(tiny_folder), "--steps", "1",
                 "--out", str(out), "--quiet")
    assert result.exit_code == 1
    assert says in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_interpolate_writes_one_frame_per_point(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "lerp.mp4"
    result = run("interpolate", "a red square", "a blue square", "--frames", "5",
                 "--model", str(tiny_folder), "--steps", "2", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    reader = imageio.get_reader(str(out), format="FFMPEG")
    frames = list(reader.iter_data())  # (its len() is inf: count by reading)
    reader.close()
    assert len(frames) == 5
    assert frames[0].shape == (64, 64, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["lerp.mp4"]  # no temporary file left


def test_interpolate_needs_two_frames(tiny_folder: Path, tmp_path: Path) -> None:
    result = run("interpolate", "a", "b", "--frames", "1", "--model", str(tiny_folder),
                 "--out", str(tmp_path / "x.mp4"))
    assert result.exit_code == 1 and "--frames must be at least 2" in result.output
