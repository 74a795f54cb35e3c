"""Bad input, as a user (or a shared PNG) gives it: every case is one line, before any work,
and nothing is half-written; the library changes no global state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from sdlab.cli import main
from sdlab.generate import GenerateParams, generate
from sdlab.models import Parts, weights_hash
from sdlab.outputs import read_png_meta
from sdlab.vae import load_image


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(result: Result, words: str) -> None:
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert words in lines[0], lines[0]


def _no_loading(*args: object, **kwargs: object) -> None:
    raise AssertionError("weights were loaded before the input was checked")


# --- bounds on work and memory -----------------------------------------------------------


def test_huge_image_is_refused_from_its_header(tiny_folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(big)  # a few KB on disk, 10^8 pixels
    monkeypatch.setattr("sdlab.cli_image.load", _no_loading)
    for command in ("encode", "roundtrip"):
        result = run("vae", command, str(big), "--model", str(tiny_folder), "--out",
                     str(tmp_path / ("x.safetensors" if command == "encode" else "x.png")))
        one_line_error(result, "10000x10000 x batch 1 = 100000000 pixels is over the limit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def test_huge_latents_file_is_refused_before_decoding(tiny_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "big.safetensors"
    save_file({"latents": torch.zeros(1, 4, 1024, 1024)}, str(file))
    monkeypatch.setattr("sdlab.cli_image.load", _no_loading)
    result = run("vae", "decode", str(file), "--model", str(tiny_folder), "--out",
                 str(tmp_path / "x.png"))
    one_line_error(result, "pixels is over the limit")


def test_model_config_with_a_huge_native_size(tiny_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = shutil.copytree(tiny_folder, tmp_path / "model")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["sample_size"] = 100000
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("sdlab.cli.load", _no_loading)
    result = run("generate", "x", "--model", str(folder), "--out", str(tmp_path / "x.png"))
    one_line_error(result, "pixels is over the limit")


def test_a_limit_can_be_raised(monkeypatch: pytest.MonkeyPatch, tiny_folder: Path,
                               tmp_path: Path) -> None:
    monkeypatch.setenv("SDLAB_MAX_BATCH", "32")
    monkeypatch.setattr("sdlab.cli.load", _no_loading)
    with pytest.raises(AssertionError, match="weights were loaded"):
        run("generate", "x", "--model", str(tiny_folder), "--batch", "20",
            "--out", str(tmp_path / "x.png"))


# --- non-finite numbers and damaged files --------------------------------------------------


@pytest.mark.parametrize(("tensor", "words"), [
    (torch.full((1, 4, 8, 8), float("nan")), "NaN, infinite"),
    (torch.zeros(1, 4, 0, 0), "do not fit this model"),
    (torch.zeros(1, 3, 8, 8), "do not fit this model"),
])
def test_bad_latents_files_are_one_line(tiny_folder: Path, tmp_path: Path, tensor: torch.Tensor,
                                        words: str) -> None:
    file = tmp_path / "l.safetensors"
    save_file({"latents": tensor}, str(file))
    result = run("vae", "decode", str(file), "--model", str(tiny_folder), "--out",
                 str(tmp_path / "x.png"))
    one_line_error(result, words)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage that is not safetensors"])
def test_unreadable_safetensors_are_one_line(tiny_folder: Path, tmp_path: Path,
                                             content: bytes) -> None:
    file = tmp_path / "bad.safetensors"
    file.write_bytes(content)
    one_line_error(run("vae", "decode", str(file), "--model", str(tiny_folder), "--out",
                       str(tmp_path / "x.png")), "cannot read")
    one_line_error(run("trace", "show", str(file), "--out", str(tmp_path / "show")),
                   "cannot read trace")


def test_damaged_trace_is_one_line(tiny_folder: Path, tmp_path: Path) -> None:
    file = tmp_path / "t.safetensors"
    save_file({"t": torch.zeros(3), "i": torch.zeros(2), "sigma": torch.zeros(3)}, str(file))
    one_line_error(run("trace", "show", str(file), "--out", str(tmp_path / "show")),
                   "not an sdlab trace")


def test_demo_into_an_impossible_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(run("demo", "--out", str(blocker / "demo")), "cannot create the output")


def test_sixteen_bit_grey_png_keeps_its_grey(tmp_path: Path) -> None:
    grey = np.full((16, 16), 32768, dtype=np.uint16)  # mid-grey at 16 bits
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    image = load_image(tmp_path / "g16.png")
    assert image.mode == "RGB"
    assert abs(np.asarray(image).mean() - 127.5) <= 1
    Image.new("LA", (16, 16), (0, 0)).save(tmp_path / "clear.png")  # transparent: white
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255


def test_a_bad_weights_hash_cache_is_rebuilt(tiny_folder: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    expected = weights_hash(tiny_folder)
    for damaged in ("[1, 2]", "null", "{not json", '{"k": [1]}'):
        (tmp_path / "cache" / "weights-hash.json").write_text(damaged)
        assert weights_hash(tiny_folder) == expected


# --- --from: an untrusted recipe, and options given with it --------------------------------


def png_with(tmp_path: Path, meta: object, name: str = "r.png") -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("sdlab", json.dumps(meta))
    path = tmp_path / name
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(("meta", "words"), [
    ([1, 2], "is not a recipe"),
    ({"model": "m", "params": [1]}, "is not a recipe"),
    ({"model": "m", "params": {"prompt": None}}, "no prompt text"),
    ({"model": "m", "params": {"prompt": "x", "steps": "many"}}, "'steps' should be int"),
    ({"model": "m", "params": {"prompt": "x", "guidance": float("nan")}}, "finite number"),
    ({"model": "m", "params": {"prompt": "x", "batch": 100000}}, "over the limit"),
    ({"model": "m", "params": {"prompt": "x", "height": 100000, "width": 100000}},
     "at most 4096"),
    ({"model": "m", "params": {"prompt": "x", "evil": 1}}, "does not know: evil"),
    ({"params": {"prompt": "x"}}, "names no model"),
])
def test_bad_recipes_are_one_line_before_any_work(tmp_path: Path, meta: object, words: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sdlab.cli.load", _no_loading)
    one_line_error(run("generate", "--from", str(png_with(tmp_path, meta))), words)


def test_bad_image_index_fails_before_the_run(tiny_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sdlab.cli.load", _no_loading)
    meta = {"model": str(tiny_folder), "params": {"prompt": "x", "batch": 2}, "index": 5}
    one_line_error(run("generate", "--from", str(png_with(tmp_path, meta))),
                   "image index 5, outside its batch of 2")


def test_options_given_with_from_replace_the_recipes(tiny: Parts, tiny_folder: Path,
                                                     tmp_path: Path) -> None:
    base = tmp_path / "base.png"
    assert run("generate", "a red circle", "--model", str(tiny_folder), "--steps", "2",
               "--seed", "1", "--out", str(base), "--quiet").exit_code == 0
    five = tmp_path / "five.png"
    assert run("generate", "--from", str(base), "--seed", "5", "--out", str(five),
               "--quiet").exit_code == 0
    stored = read_png_meta(five)["params"]
    assert (stored["seed"], stored["steps"], stored["prompt"]) == (5, 2, "a red circle")
    expected = generate(tiny, GenerateParams("a red circle", steps=2, seed=5)).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(five)), np.asarray(expected))
    star = tmp_path / "star.png"
    assert run("generate", "a blue star", "--from", str(base), "--out", str(star),
               "--quiet").exit_code == 0
    assert read_png_meta(star)["params"]["prompt"] == "a blue star"
    assert read_png_meta(star)["params"]["seed"] == 1


# --- the library leaves global state alone --------------------------------------------------


def test_the_library_changes_no_global_state(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = f"""
import matplotlib, torch, transformers, diffusers
backend = matplotlib.get_backend()
verbosity = (transformers.utils.logging.get_verbosity(), diffusers.utils.logging.get_verbosity())
torch.manual_seed(123)
state = torch.get_rng_state()
import sdlab.viz, sdlab.generate, sdlab.run
from sdlab.models import load
from sdlab.random_models import build_random_model
folder = build_random_model({str(tmp_path / 'm')!r}, "tiny", seed=7)
load(folder)
assert matplotlib.get_backend() == backend, (matplotlib.get_backend(), backend)
assert (transformers.utils.logging.get_verbosity(),
        diffusers.utils.logging.get_verbosity()) == verbosity
assert torch.equal(torch.get_rng_state(), state)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"MPLBACKEND": "svg", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]


# --- train-tiny never overwrites what it did not write --------------------------------------


def test_train_tiny_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    from training.cli import DEFAULT_OUT
    from training.cli import main as train_tiny

    assert "assets" not in DEFAULT_OUT.parts  # a bare run never replaces the bundled model
    mine = tmp_path / "mine"
    (mine / "unet").mkdir(parents=True)
    (mine / "unet" / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(train_tiny, ["--quick", "--out", str(mine), "--workdir",
                                             str(tmp_path / "w")])
    assert result.exit_code != 0
    assert "not empty and holds no model" in result.output
    assert (mine / "unet" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "w").exists()


def test_a_full_disk_at_the_trace_keeps_the_image(tiny_folder: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sdlab.trace.save_file", no_space)
    result = run("generate", "a cat", "--model", str(tiny_folder), "--steps", "2", "--out",
                 str(tmp_path / "a.png"), "--trace", str(tmp_path / "t.safetensors"), "--quiet")
    one_line_error(result, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # the image, whole
    assert read_png_meta(tmp_path / "a.png")["params"]["prompt"] == "a cat"


def test_from_with_a_new_prompt_keeps_the_recipes_other_edits(tiny: Parts, tiny_folder: Path,
                                                              tmp_path: Path) -> None:
    file = tmp_path / "e.safetensors"
    vectors = tiny.text_encoder.get_input_embeddings().weight[[42194]].detach().clone()
    save_file({"<e>": vectors.contiguous()}, str(file))
    base = tmp_path / "base.png"
    assert run("generate", "a <e>", "--embedding", str(file), "--model", str(tiny_folder),
               "--steps", "2", "--out", str(base), "--quiet").exit_code == 0
    again = tmp_path / "again.png"
    assert run("generate", "two <e>", "--from", str(base), "--out", str(again),
               "--quiet").exit_code == 0
    stored = read_png_meta(again)["params"]
    assert stored["prompt"] == "two <e>"
    assert stored["embedding"] == [str(file.resolve())]
    fast = tmp_path / "fast.png"
    assert run("generate", "--from", str(base), "--fast", "--out", str(fast),
               "--quiet").exit_code == 0
    assert read_png_meta(fast)["params"]["cache_interval"] > 1
