"""Fixtures of the web tests: `sdlab serve` on the bundled model (once per test session, in
this process, on a free 127.0.0.1 port) and Debian's Chromium driven by Playwright, with
every request that would leave 127.0.0.1 blocked and recorded."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LOCAL_HOSTS = ("127.0.0.1",)
WAITING = 2  # the test server's bound on requests waiting for the model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    ctx: Any  # sdlab.web.context.Context


@pytest.fixture(scope="session")
def web_server() -> Iterator[Server]:
    from sdlab.web.app import launch
    from sdlab.web.serving import Limits

    port = free_port()
    app, ctx = launch("sdlab-tiny", "127.0.0.1", port, Limits(waiting=WAITING), block=False)
    try:
        yield Server(f"http://127.0.0.1:{port}/", ctx)
    finally:
        app.close()
        ctx.workspace.close()


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


@pytest.fixture(scope="module")
def browser(web_server: Server) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("browser tests need Debian's Chromium: apt-get install -y chromium "
                    "(make test does this when run as root)")
    from playwright.sync_api import sync_playwright

    user_data = Path(tempfile.mkdtemp(prefix="sdlab-chromium-"))
    try:
        with sync_playwright() as playwright:
            context = launch_chromium(playwright, user_data)
            found = Browser(context.new_page())
            block_outside(context, found)
            found.page.goto(web_server.url)
            found.page.wait_for_selector("#gen-run")
            yield found
            context.close()
    finally:
        shutil.rmtree(user_data, ignore_errors=True)
