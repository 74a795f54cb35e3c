"""The web app's serving rules without a server: the gate's bound, upload checks, and where
a request may read from and write to."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from sdlab.errors import SdlabError
from sdlab.web.serving import (
    Busy,
    Limits,
    ModelGate,
    Workspace,
    check_embedding_file,
    check_image,
)


def test_gate_runs_one_and_bounds_the_wait() -> None:
    gate = ModelGate(waiting=1)
    running, release = threading.Event(), threading.Event()
    order = []

    def hold() -> None:
        with gate.turn():
            order.append("first")
            running.set()
            release.wait(10)

    def wait_in_line() -> None:
        with gate.turn():
            order.append("second")

    first = threading.Thread(target=hold)
    first.start()
    running.wait(10)
    second = threading.Thread(target=wait_in_line)
    second.start()
    while gate.waiting != 1:
        pass
    with pytest.raises(Busy, match="one run in progress and 1 waiting"), gate.turn():
        pass
    release.set()
    first.join(10)
    second.join(10)
    assert order == ["first", "second"]
    assert (gate.running, gate.waiting) == (0, 0)


def test_image_checks(tmp_path: Path) -> None:
    good = tmp_path / "ok.png"
    Image.new("RGB", (32, 16), "red").save(good)
    assert check_image(good, Limits()).size == (32, 16)
    with pytest.raises(SdlabError, match="MB; the limit is"):
        check_image(good, Limits(image_bytes=10))
    with pytest.raises(SdlabError, match="pixels; the limit is 100 pixels"):
        check_image(good, Limits(image_pixels=100))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])  # a header, then nothing
    with pytest.raises(SdlabError, match="not a readable image"):
        check_image(cut, Limits())
    tiff = tmp_path / "photo.tiff"
    Image.new("RGB", (8, 8)).save(tiff)
    with pytest.raises(SdlabError, match="the upload is TIFF"):
        check_image(tiff, Limits())


def test_embedding_file_checks(tmp_path: Path) -> None:
    script = tmp_path / "emb.py"
    script.write_text("print('hi')")
    with pytest.raises(SdlabError, match="ends in .safetensors"):
        check_embedding_file(script, Limits())
    big = tmp_path / "emb.safetensors"
    big.write_bytes(b"0" * 2000)
    with pytest.raises(SdlabError, match="MB; the limit is"):
        check_embedding_file(big, Limits(embedding_bytes=1000))


def test_workspace_reads_only_uploads(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    inside = uploads / "abc" / "x.png"
    inside.write_bytes(b"x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    space = Workspace(tmp_path / "root", uploads)
    (tmp_path / "root").mkdir()
    assert space.upload(str(inside), "image") == inside.resolve()
    for path in (str(outside), str(uploads / "abc" / ".." / ".." / "secret.png")):
        with pytest.raises(SdlabError, match="uploaded through this page"):
            space.upload(path, "image")
    with pytest.raises(SdlabError, match="no image uploaded"):
        space.upload(None, "image")
    folder = space.request_folder()
    assert folder.parent == tmp_path / "root" and folder.is_dir()
