"""Loading: folders, the Hugging Face cache (offline), and a one-line error for each way
a model can be unusable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdlab.errors import SdlabError
from sdlab.models import Parts, load, resolve, weights_hash


@pytest.fixture()
def model_copy(tiny_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_folder, tmp_path / "copy"))


def assert_one_line(err: pytest.ExceptionInfo[SdlabError], *words: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_loads_a_diffusers_folder(tiny_folder: Path) -> None:
    parts = load(tiny_folder)
    assert parts.vae_scale_factor == 8
    assert parts.native_size == 64
    assert parts.tokenizer("A picture of a puppy").input_ids == [
        49406, 320, 1674, 539, 320, 6829, 49407]
    assert len(parts.tokenizer) == 49408


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SdlabError) as err:
        resolve(tmp_path / "nothing-here")
    assert_one_line(err, "not found", "nothing-here")


def test_folder_without_model_index(tmp_path: Path) -> None:
    with pytest.raises(SdlabError) as err:
        resolve(tmp_path)
    assert_one_line(err, "model_index.json")


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_missing_component(model_copy: Path, component: str) -> None:
    shutil.rmtree(model_copy / component)
    with pytest.raises(SdlabError) as err:
        resolve(model_copy)
    assert_one_line(err, f"'{component}' is missing")


def test_truncated_weights(model_copy: Path) -> None:
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SdlabError) as err:
        load(model_copy)
    assert_one_line(err, "cannot load", "corrupt or truncated")


def test_garbage_weights(model_copy: Path) -> None:
    (model_copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 4096)
    with pytest.raises(SdlabError) as err:
        load(model_copy)
    assert_one_line(err, "cannot load")


def test_pickled_weights_are_refused(model_copy: Path) -> None:
    """Only safetensors load: a .bin (pickle) is never opened."""
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(SdlabError) as err:
        resolve(model_copy)
    assert_one_line(err, "no safetensors weights", "unet")


def test_unknown_architecture(model_copy: Path) -> None:
    index = json.loads((model_copy / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SdlabError) as err:
        resolve(model_copy)
    assert_one_line(err, "unsupported architecture", "StableDiffusionXLPipeline")


def test_hub_id_not_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(SdlabError) as err:
        resolve("CompVis/stable-diffusion-v1-4")
    assert_one_line(err, "not in the Hugging Face cache",
                    "hf download CompVis/stable-diffusion-v1-4")


def fake_hf_cache(cache: Path, repo_id: str, model: Path) -> None:
    """The hub cache layout: models--org--name/{refs/main, snapshots/<sha>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)


def test_hub_id_from_the_cache_offline(tiny_folder: Path, tmp_path: Path) -> None:
    """A real process with HF_HUB_CACHE set and the network forbidden finds the snapshot."""
    fake_hf_cache(tmp_path / "hub", "someone/tiny-sd", tiny_folder)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cached.png"
    proc = subprocess.run(
        [sys.executable, "-m", "sdlab", "generate", "a cat", "--model", "someone/tiny-sd",
         "--steps", "2", "--out", str(out), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_weights_hash_is_cached(model_copy: Path) -> None:
    first = weights_hash(model_copy)
    assert len(first) == 16
    cache = json.loads((Path(os.environ["SDLAB_CACHE"]) / "weights-hash.json").read_text())
    assert first in cache.values()
    assert weights_hash(model_copy) == first
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_hash(model_copy) != first


def test_fp16_variant_only_folder(tiny: Parts, tmp_path: Path) -> None:
    """A cache that holds only `variant="fp16"` files (as `hf download --include *fp16*`
    leaves it) loads, and gives the same model up to fp16 rounding."""
    from sdlab.random_models import build_random_model

    folder = build_random_model(tmp_path / "m", "tiny", seed=0)
    original = load(folder)
    for name in ("text_encoder", "vae", "unet"):
        module = getattr(original, name)
        for f in (folder / name).glob("*.safetensors"):
            f.unlink()
        module.half().save_pretrained(folder / name, variant="fp16", safe_serialization=True)
    names = sorted(f.name for f in (folder / "unet").iterdir())
    assert names == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    parts = load(folder)
    assert parts.unet.dtype == torch.float32
    weight = parts.unet.conv_in.weight
    torch.testing.assert_close(weight, tiny.unet.conv_in.weight, atol=1e-3, rtol=1e-3)
    assert len(weights_hash(folder)) == 16
