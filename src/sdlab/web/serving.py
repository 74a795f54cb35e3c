"""Serving: one model shared by every request, one run at a time, a bounded wait, checked
uploads and a private temporary folder per request."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sdlab.errors import SdlabError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
EMBEDDING_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class Limits:
    """What one request may send and how many may wait."""

    waiting: int = 4  # requests that may wait for the model behind the running one
    image_bytes: int = 10 * 1024 * 1024
    image_pixels: int = 4096 * 4096
    embedding_bytes: int = 2 * 1024 * 1024


class Busy(SdlabError):
    """The model is running and the waiting line is full."""


class ModelGate:
    """One model run at a time; at most `waiting` requests wait, the rest are told so."""

    def __init__(self, waiting: int) -> None:
        self.waiting_limit = waiting
        self._lock = threading.Lock()  # the model: held while it runs
        self._count = threading.Lock()  # the counters
        self.running = 0
        self.waiting = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for the model (or be refused at once when the line is full), then hold it."""
        with self._count:
            if self.running + self.waiting > self.waiting_limit:
                raise Busy(f"sdlab is busy: one run in progress and {self.waiting} waiting "
                           f"(at most {self.waiting_limit}); try again in a moment")
            self.waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self.waiting -= 1
        with self._count:
            self.running += 1
        try:
            yield
        finally:
            with self._count:
                self.running -= 1
            self._lock.release()


class Workspace:
    """A folder of the server's own; each request writes only into a fresh folder in it,
    and reads uploads only from the folder Gradio keeps them in."""

    def __init__(self, root: Path, uploads: Path) -> None:
        self.root = root
        self.uploads = uploads

    @classmethod
    def create(cls) -> Workspace:
        root = Path(tempfile.mkdtemp(prefix="sdlab-serve-"))
        from gradio.utils import get_upload_folder  # where Gradio keeps uploads

        return cls(root, Path(get_upload_folder()))

    def request_folder(self, keep_seconds: float = 3600) -> Path:
        """A fresh folder for one request; those older than `keep_seconds` are removed
        (the page holds its own copies of what it shows)."""
        now = time.time()
        for old in self.root.glob("run-*"):
            if now - old.stat().st_mtime > keep_seconds:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.root))

    def upload(self, path: str | None, what: str) -> Path:
        """An uploaded file's path, refused unless it lies in the upload folder."""
        if not path:
            raise SdlabError(f"no {what} uploaded: choose a file first")
        file = Path(path).resolve()
        if not file.is_file() or not file.is_relative_to(self.uploads.resolve()):
            raise SdlabError(f"the {what} must be a file uploaded through this page")
        return file

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def upload_box(label: str, elem_id: str) -> Any:
    """An image upload that reaches sdlab's checks as a path (Gradio's image box would
    decode it first, with its own error)."""
    import gradio as gr

    return gr.File(label=label, file_types=list(IMAGE_SUFFIXES), type="filepath",
                   elem_id=elem_id, height=120)


def check_image(path: Path, limits: Limits) -> Image.Image:
    """An uploaded image: a known type, not too many bytes or pixels, and decodable."""
    size = path.stat().st_size
    if size > limits.image_bytes:
        raise SdlabError(f"the image is {size / 1e6:.1f} MB; the limit is "
                         f"{limits.image_bytes / 1e6:.0f} MB: send a smaller file")
    try:
        with Image.open(path) as probe:
            kind, (width, height) = probe.format, probe.size
            if kind not in IMAGE_FORMATS:
                raise SdlabError(f"the upload is {kind or 'not an image'}: send "
                                 f"{', '.join(IMAGE_FORMATS)}")
            if width * height > limits.image_pixels:
                raise SdlabError(f"the image is {width}x{height} pixels; the limit is "
                                 f"{limits.image_pixels:,} pixels: send a smaller one")
            probe.load()
            return probe.convert("RGB")
    except SdlabError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise SdlabError(f"the upload is not a readable image ({type(err).__name__}): "
                         f"send a PNG or JPEG") from err


def check_embedding_file(path: Path, limits: Limits) -> Path:
    """An uploaded textual-inversion file: a known suffix and a bounded size."""
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise SdlabError(f"an embedding file ends in {', '.join(EMBEDDING_SUFFIXES)} "
                         f"(got '{path.suffix}')")
    size = path.stat().st_size
    if size > limits.embedding_bytes:
        raise SdlabError(f"the embedding file is {size / 1e6:.1f} MB; the limit is "
                         f"{limits.embedding_bytes / 1e6:.0f} MB")
    return path
