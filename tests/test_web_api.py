# ruff: noqa: F811 - pytest fixtures imported from web_fixtures are redefined as arguments
"""`sdlab serve` through its API (gradio_client): simultaneous requests never see each
other's settings, the wait for the model is bounded with a clear answer past it, uploads are
checked, and a failing request leaves the server serving."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from safetensors.torch import save_file

from sdlab.cli import main
from sdlab.text import token_embedding_table
from sdlab.tiny.judge import judge
from sdlab.web import service
from web_fixtures import WAITING, Server, free_port, web_server  # noqa: F401 - fixtures

PROMPT = "a red circle on a white background"
SWAPS = [("red", "blue"), ("red", "green"), ("circle", "square")]
STEPS = 10


@pytest.fixture(scope="module")
def client(web_server: Server) -> Client:
    return Client(web_server.url, verbose=False)


def text_edit(old: str, new: str) -> tuple:
    return (PROMPT, old, new, "", 0.5, None, "", STEPS, 7.5, 32, "lms")


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def wait_until(condition, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the server never reached the expected state")
        time.sleep(0.01)


def test_simultaneous_swaps_equal_each_run_alone(client: Client) -> None:
    jobs = [client.submit(*text_edit(old, new), api_name="/text_edit") for old, new in SWAPS]
    together = [job.result(timeout=120) for job in jobs]
    for (old, new), (plain, edited, said) in zip(SWAPS, together, strict=True):
        alone_plain, alone_edited, _ = client.predict(*text_edit(old, new),
                                                      api_name="/text_edit")
        assert f"{old}={new}" in said
        assert np.array_equal(pixels(edited), pixels(alone_edited))
        assert np.array_equal(pixels(plain), pixels(alone_plain))
        assert not np.array_equal(pixels(edited), pixels(plain))
    edited = [pixels(result[1]) for result in together]
    assert not np.array_equal(edited[0], edited[1])  # blue and green differ


def generate(client: Client, steps: int) -> Future:
    return client.submit(PROMPT, "", steps, 7.5, 32, "lms", 64, 64, 1, api_name="/generate")


def test_past_the_bound_the_answer_is_busy(client: Client, web_server: Server) -> None:
    gate = web_server.ctx.gate
    other = Client(web_server.url, verbose=False)  # another visitor, with a long run
    long_run = generate(other, 150)
    wait_until(lambda: gate.running == 1)
    waiting = [generate(client, 2) for _ in range(WAITING)]
    wait_until(lambda: gate.waiting == WAITING)
    with pytest.raises(AppError, match=f"busy: one run in progress and {WAITING} waiting"):
        generate(client, 2).result(timeout=120)
    web_server.ctx.stop(other.session_hash)  # what the other visitor's Stop button does
    assert long_run.result(timeout=120)[-1].startswith("stopped after")
    for job in waiting:  # those admitted all run
        assert job.result(timeout=120)[-1].startswith("done: 2 steps")


@pytest.mark.parametrize(("name", "content", "message"), [
    ("broken.png", b"not an image", "not a readable image"),
    ("notes.txt", b"not an image", "Invalid file type"),
    ("huge.png", None, "pixels; the limit is"),
])
def test_uploads_are_checked(client: Client, tmp_path: Path, name: str, content: bytes | None,
                             message: str) -> None:
    path = tmp_path / name
    if content is None:  # a PNG whose pixel count is over the limit, small in bytes
        Image.new("1", (5000, 4000)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), api_name="/vae")


def test_a_path_the_request_names_is_not_read(web_server: Server, tmp_path: Path) -> None:
    """A request that names a file on the server (rather than uploading one) is refused."""
    outside = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), "red").save(outside)
    url = f"{web_server.url}gradio_api/call/vae"
    data = {"data": [{"path": str(outside), "meta": {"_type": "gradio.FileData"}}]}
    event = httpx.post(url, json=data, timeout=30).json()["event_id"]
    answer = httpx.get(f"{url}/{event}", timeout=60).text
    assert "event: error" in answer and "PSNR" not in answer


def test_a_failing_request_leaves_the_server_serving(client: Client) -> None:
    with pytest.raises(AppError, match="multiple of the VAE factor"):
        client.predict(PROMPT, "", 5, 7.5, 32, "lms", 60, 64, 1, api_name="/generate")
    result = client.predict(PROMPT, "", 3, 7.5, 32, "lms", 64, 64, 1, api_name="/generate")
    assert result[-1].startswith("done: 3 steps")


def test_sdlab_serve_starts_and_serves_the_page() -> None:
    """The command itself: the bundled model, 127.0.0.1, the page's title."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sdlab", "serve", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        page = None
        end = time.monotonic() + 120
        while page is None and time.monotonic() < end and server.poll() is None:
            try:
                page = httpx.get(url, timeout=5)
            except httpx.TransportError:
                time.sleep(0.2)
        assert page is not None and page.status_code == 200, server.stdout
        assert "sdlab: Stable Diffusion, opened up" in page.text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_sdlab_serve_refuses_a_bad_port() -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "0"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --port must be in 1..65535 (got 0)"


def test_a_learned_embedding_upload_takes_its_word(client: Client, web_server: Server,
                                                   tmp_path: Path) -> None:
    """A textual-inversion file holding the embedding of "blue" makes <my-colour> blue."""
    parts = web_server.ctx.parts
    blue = parts.tokenizer("blue", add_special_tokens=False).input_ids[0]
    vector = token_embedding_table(parts)[blue].detach().clone()
    file = tmp_path / "my-colour.safetensors"
    save_file({"<my-colour>": vector}, str(file))
    prompt = "a <my-colour> circle on a white background"
    _, edited, said = client.predict(prompt, "", "", "", 0.5, handle_file(str(file)), "", 20,
                                     7.5, 32, "lms", api_name="/text_edit")
    assert "embedding" in said
    image = Image.open(edited).convert("RGB").resize((64, 64), Image.Resampling.NEAREST)
    assert judge(image).color == "blue"


def test_a_mix_at_weight_zero_is_the_unedited_run(client: Client) -> None:
    plain, edited, said = client.predict(PROMPT, "", "", "a blue square on a yellow background",
                                         0.0, None, "", STEPS, 7.5, 32, "lms",
                                         api_name="/text_edit")
    assert "mix" in said
    assert np.array_equal(pixels(plain), pixels(edited))


def test_the_shape_words_map_lies_where_the_judge_sees_the_shape(web_server: Server,
                                                                   tmp_path: Path) -> None:
    """What the Steps view shows: the run the app makes (attention recorded, each kept
    step's maps) puts the summed map of 'circle' on the side the judge reads the circle."""
    ctx = web_server.ctx
    recipe = service.make_recipe(ctx.parts, {
        "prompt": "a red circle on the left, white background", "steps": 20, "seed": 30})
    done = service.run(ctx.parts, ctx.model_ref, recipe, tmp_path, attention=True)
    seen = judge(done.generation.images[0])
    assert seen.shape == "circle" and seen.position == "left"
    maps = done.attention
    assert maps.maps.shape[0] == len(done.records)  # one map per step the slider shows
    heat = maps.summed(maps.labels.index("circle"))
    assert service.centroid(heat)[0] < heat.shape[1] / 2  # left of the centre
    pixels_sum = maps.maps.sum(1)  # each pixel's attention spread over the tokens
    assert torch.allclose(pixels_sum, torch.ones_like(pixels_sum), atol=1e-4)
