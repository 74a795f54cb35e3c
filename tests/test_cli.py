"""`sdlab generate` end to end (in process): PNGs that re-run themselves, latents files,
and a one-line error before any work for each kind of bad input."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from safetensors.torch import load_file

from sdlab.cli import main
from sdlab.generate import GenerateParams, generate
from sdlab.models import Parts


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_generate_writes_png_with_recipe_and_reruns_exactly(tiny_folder: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "otter.png"
    result = run("generate", "a watercolor painting of an otter", "--model", str(tiny_folder),
                 "--steps", "4", "--seed", "5", "--negative", "blurry", "--scheduler", "euler",
                 "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    meta = json.loads(Image.open(out).info["sdlab"])
    assert meta["params"] == {"prompt": "a watercolor painting of an otter",
                              "negative": "blurry", "steps": 4, "guidance": 7.5, "seed": 5,
                              "scheduler": "euler", "height": 64, "width": 64, "batch": 1,
                              "swap": [], "mix": [], "embedding": [], "token": [],
                              "guide": [], "guide_every": 5, "guide_decoder": "full",
                              "clip_model": None, "cfg_until": 1.0, "cache_interval": 1,
                              "cache_branch": 0}
    assert meta["model"] == str(tiny_folder.resolve())
    assert len(meta["weights_hash"]) == 16 and meta["sdlab_version"]
    rerun = tmp_path / "again.png"
    assert run("generate", "--from", str(out), "--out", str(rerun), "--quiet").exit_code == 0
    np.testing.assert_array_equal(pixels(out), pixels(rerun))


def test_batch_writes_numbered_files_and_latents(tiny: Parts, tiny_folder: Path,
                                                 tmp_path: Path) -> None:
    out, lat = tmp_path / "b.png", tmp_path / "b.safetensors"
    result = run("generate", "a red circle", "--model", str(tiny_folder), "--steps", "3",
                 "--batch", "2", "--height", "48", "--width", "80", "--out", str(out),
                 "--save-latents", str(lat), "--quiet")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "b-0.png").size == (80, 48)
    latents = load_file(lat)["latents"]
    assert latents.shape == (2, 4, 6, 10)
    expected = generate(tiny, GenerateParams("a red circle", steps=3, batch=2, height=48,
                                             width=80)).latents
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    # the second image of the batch re-runs on its own
    rerun = tmp_path / "b1.png"
    assert run("generate", "--from", str(tmp_path / "b-1.png"), "--out", str(rerun),
               "--quiet").exit_code == 0
    np.testing.assert_array_equal(pixels(tmp_path / "b-1.png"), pixels(rerun))
    assert not pixels(tmp_path / "b-0.png").tolist() == pixels(rerun).tolist()


@pytest.mark.parametrize("args, words", [
    (["--height", "60"], "multiple of the VAE factor 8"),
    (["--width", "4"], "multiple of the VAE factor 8"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--guidance", "-1"], "--guidance must be in 0..100"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--guidance", "1e30"], "--guidance must be in 0..100"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--batch", "10000"], "over the limit of 16 (set SDLAB_MAX_BATCH"),
    (["--height", "100000", "--width", "100000"], "--height must be at most 4096"),
    (["--height", "4096", "--width", "4096"], "pixels is over the limit"),
    (["--steps", "100000"], "over the limit of 1000 (set SDLAB_MAX_STEPS"),
    (["--seed", "18446744073709551616"], "--seed must be at most"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--mix", "a:1e308"], "|weight| must be at most 100"),
    (["--mix", "a:nan"], "finite weight"),
    (["--guide", "blue:inf"], "NAME:SCALE"),
    (["--out", "picture.jpg"], "must end in .png"),
    (["--save-latents", "lat.pt"], "must end in .safetensors"),
])
def test_bad_input_is_one_line_before_any_work(tiny_folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               args: list[str], words: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sdlab.cli.load", _no_loading)
    prompt = [] if "--mix" in args else ["x"]
    result = run("generate", *prompt, "--model", str(tiny_folder), *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert words in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_more_steps_than_train_steps_is_one_line(tiny_folder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDLAB_MAX_STEPS", "5000")  # the limit raised, the model's still holds
    monkeypatch.setattr("sdlab.cli.load", _no_loading)
    result = run("generate", "x", "--model", str(tiny_folder), "--steps", "2000",
                 "--scheduler", "ddim", "--out", str(tmp_path / "a.png"))
    assert result.exit_code == 1
    assert "more than the 1000 timesteps" in result.output


def _no_loading(*args: object, **kwargs: object) -> None:
    raise AssertionError("weights were loaded before the input was checked")


def test_unknown_scheduler_is_refused(tiny_folder: Path) -> None:
    result = run("generate", "x", "--model", str(tiny_folder), "--scheduler", "magic")
    assert result.exit_code == 2
    assert "'magic' is not one of" in result.output


def test_unwritable_output(tiny_folder: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sdlab.cli.load", _no_loading)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "blocker").write_text("a file, not a folder")
    result = run("generate", "x", "--model", str(tiny_folder),
                 "--out", str(locked / "blocker" / "x.png"))
    assert result.exit_code == 1
    assert "Error: cannot create the output folder" in result.output


def test_failed_run_leaves_no_partial_file(tiny_folder: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    result = run("generate", "x", "--model", str(tiny_folder), "--steps", "1",
                 "--out", str(tmp_path / "x.png"), "--quiet")
    assert result.exit_code == 1
    expected = f"Error: cannot write {tmp_path / 'x.png'}: No space left on device"
    assert result.output.strip() == expected
    assert list(tmp_path.iterdir()) == []


def test_from_a_png_without_recipe(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    result = run("generate", "--from", str(tmp_path / "plain.png"))
    assert result.exit_code == 1
    assert "has no sdlab metadata" in result.output


def test_no_model_and_no_bundled_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sdlab.models.BUNDLED_DIR", tmp_path / "absent")
    result = run("generate", "x")
    assert result.exit_code == 1
    assert "pass --model" in result.output


def test_unavailable_device_is_one_line(tiny_folder: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run("generate", "x", "--model", str(tiny_folder), "--device", "cuda")
    assert result.exit_code == 1
    assert "torch sees no CUDA GPU (try --device cpu)" in result.output
