"""Fixtures of the web tests: `sdlab serve` on the bundled model (once per test session, in
this process, on a free 127.0.0.1 port) and Debian's Chromium driven by Playwright, with
every request that would leave 127.0.0.1 blocked and recorded."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LOCAL_HOSTS = ("127.0.0.1",)
NO_CHROMIUM = ("browser tests need Debian's Chromium at /usr/bin/chromium: apt-get install -y "
               "chromium (make test does this when run as root)")
WAITING = 2  # the test server's bound on requests waiting for the model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    ctx: Any  # sdlab.web.context.Context


@contextmanager
def serving(model: str = "sdlab-tiny", waiting: int = WAITING) -> Iterator[Server]:
    """`sdlab serve` in this process on a free 127.0.0.1 port, closed afterwards."""
    from sdlab.web.app import launch
    from sdlab.web.serving import Limits

    port = free_port()
    app, ctx = launch(model, "127.0.0.1", port, Limits(waiting=waiting), block=False)
    try:
        yield Server(f"http://127.0.0.1:{port}/", ctx)
    finally:
        app.close()
        ctx.workspace.close()


@pytest.fixture(scope="session")
def web_server() -> Iterator[Server]:
    with serving() as server:
        yield server


@dataclass
class Browser:
    """A Chromium page on the server, and the requests it tried to send elsewhere."""

    page: Any
    outside: list[str] = field(default_factory=list)
    local: int = 0


def launch_chromium(playwright: Any, user_data: Path) -> Any:
    """Debian's Chromium, headless, a fresh profile, nothing of its own sent anywhere."""
    return playwright.chromium.launch_persistent_context(
        str(user_data), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 1000})


def block_outside(context: Any, found: Browser) -> None:
    """Abort (and record) every request whose host is not this machine's 127.0.0.1."""

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith(("data:", "blob:")) or urlparse(url).hostname in LOCAL_HOSTS:
            found.local += 1
            request_route.continue_()
        else:
            found.outside.append(url)
            request_route.abort()

    context.route("**/*", route)


@contextmanager
def open_page(url: str) -> Iterator[Browser]:
    """The page at `url` in a fresh headless Chromium, outside requests blocked."""
    from playwright.sync_api import sync_playwright

    user_data = Path(tempfile.mkdtemp(prefix="sdlab-chromium-"))
    try:
        with sync_playwright() as playwright:
            context = launch_chromium(playwright, user_data)
            found = Browser(context.new_page())
            block_outside(context, found)
            found.page.goto(url)
            found.page.wait_for_selector("#gen-run")
            yield found
            context.close()
    finally:
        shutil.rmtree(user_data, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(web_server: Server) -> Iterator[Browser]:
    with open_page(web_server.url) as found:
        yield found


# --- what a person does on the page (the tests and scripts/web_screenshots.py) ---------

TIMEOUT = 60_000  # ms: a loaded machine may be slow; the runs take a few seconds


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def shown_images(page, elem_id: str) -> list[str]:
    """The src of each picture (not an icon) shown in an element."""
    return page.eval_on_selector_all(
        f"#{elem_id} img", "els => els.map(e => e.src).filter(s => !s.startsWith('data:'))")


def wait_for_image(page, elem_id: str, not_in: tuple[str, ...] = ()) -> str:
    """Wait until the element shows a picture other than those in `not_in`; its src."""
    page.wait_for_function(
        """([id, old]) => [...document.querySelectorAll('#' + id + ' img')]
               .some(e => !e.src.startsWith('data:') && !old.includes(e.src))""",
        arg=[elem_id, list(not_in)], timeout=TIMEOUT)
    return next(s for s in shown_images(page, elem_id) if s not in not_in)


def fetch_image(page, src: str) -> Image.Image:
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def fill(page, elem_id: str, value: str, kind: str = "textarea, input") -> None:
    page.locator(f"#{elem_id}").locator(kind).first.fill(value)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def choose(page, elem_id: str, option: str) -> None:
    """Pick an option of a dropdown."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def error_text(page) -> str:
    toast = page.locator(".toast-body").first
    toast.wait_for(timeout=TIMEOUT)
    return toast.inner_text()


def close_errors(page) -> None:
    for button in page.locator(".toast-close").all():
        button.click()
