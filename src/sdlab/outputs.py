"""Writing results: PNGs that carry their own recipe, latents as safetensors -- always
through a temporary file and a rename, so a failed run never leaves half a file."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

import sdlab
from sdlab.errors import SdlabError
from sdlab.models import weights_hash

META_KEY = "sdlab"


def check_writable(path: str | Path, suffix: str) -> Path:
    """Fail before any work if `path` cannot be written or has the wrong extension."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise SdlabError(f"output {path} must end in {suffix}")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SdlabError(f"cannot create the output folder {parent}: {err.strerror}") from err
    if path.is_dir():
        raise SdlabError(f"output {path} is a folder (give a file name)")
    try:  # the only sure test: create (and remove) a file where the output will go
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SdlabError(f"output {path} is not writable ({err.strerror}): choose another --out"
                         ) from err
    if path.exists() and not os.access(path, os.W_OK):
        raise SdlabError(f"output {path} exists and is read-only: choose another --out")
    return path


def make_folder(path: str | Path) -> Path:
    """An output folder, created if needed, or a one-line error."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SdlabError(f"cannot create the output folder {folder}: {err.strerror}") from err
    if not os.access(folder, os.W_OK):
        raise SdlabError(f"the output folder {folder} is not writable: choose another")
    return folder


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    # the temporary name keeps the suffix: writers such as ffmpeg pick the format by it
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}",
                                   dir=path.parent)
    except OSError as err:
        raise SdlabError(f"cannot write {path}: {err.strerror or err}") from err
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a vanished folder: one line, no partial file
        raise SdlabError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it sets it, briefly: not in every write)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def numbered(path: Path, index: int, count: int) -> Path:
    """`out.png` for a single image, `out-0.png`, `out-1.png`, ... for a batch."""
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def recipe_meta(model: str, folder: Path, params: dict[str, Any], index: int = 0
                ) -> dict[str, Any]:
    """What a PNG stores to be re-run: the model, its weights' hash, settings, batch index."""
    return {"sdlab_version": sdlab.__version__, "model": model,
            "weights_hash": weights_hash(folder), "params": params, "index": index}


def save_png(image: Image.Image, path: str | Path, meta: dict[str, Any]) -> Path:
    """Save a PNG whose text chunk `sdlab` holds the JSON recipe that made it."""
    info = PngImagePlugin.PngInfo()
    info.add_text(META_KEY, json.dumps(meta, sort_keys=True))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_png_meta(path: str | Path) -> dict[str, Any]:
    """The recipe stored by `save_png`."""
    try:
        with Image.open(path) as image:
            text = image.info.get(META_KEY)
    except (OSError, ValueError) as err:
        raise SdlabError(f"cannot read {path} as a PNG: {err}") from err
    if text is None:
        raise SdlabError(f"{path} has no sdlab metadata: it was not written by sdlab generate")
    try:
        return json.loads(text)
    except ValueError as err:
        raise SdlabError(f"the sdlab metadata in {path} is damaged: {err}") from err


def save_latents(latents: torch.Tensor, path: str | Path) -> Path:
    """Latents (N, C, h, w) under the key `latents` in a safetensors file."""
    tensor = latents.detach().float().cpu().contiguous()
    return atomic_write(path, lambda tmp: save_file({"latents": tensor}, str(tmp)))
