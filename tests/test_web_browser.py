# ruff: noqa: F811 - pytest fixtures imported from web_fixtures are redefined as arguments
"""`sdlab serve` in a real browser: Debian's Chromium driven by Playwright, on the bundled
model. Every view is used as a person would; nothing may leave 127.0.0.1."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
from PIL import Image

from sdlab.outputs import read_png_meta
from sdlab.tiny.judge import judge
from sdlab.web.service import schedule_rows
from web_fixtures import (  # noqa: F401 - browser, web_server: fixtures
    CHROMIUM,
    NO_CHROMIUM,
    TIMEOUT,
    Browser,
    Server,
    browser,
    choose,
    close_errors,
    error_text,
    fetch_image,
    fill,
    open_tab,
    set_number,
    shown_images,
    wait_for_image,
    web_server,
)

if not Path(CHROMIUM).exists():
    pytest.skip(NO_CHROMIUM, allow_module_level=True)


def test_generate_shows_preview_result_and_recipe(browser: Browser) -> None:
    page = browser.page
    fill(page, "gen-prompt", "a red circle on a white background", "textarea")
    set_number(page, "gen-steps", 20)
    page.locator("#gen-run").click()
    wait_for_image(page, "gen-preview")
    result = wait_for_image(page, "gen-result")
    page.get_by_text("done: 20 steps").wait_for(timeout=TIMEOUT)
    assert fetch_image(page, result).size == (64, 64)
    link = page.locator("#gen-png a").first.get_attribute("href")
    body = page.request.get(link).body()
    stored = read_png_meta(io.BytesIO(body))
    assert stored["params"]["prompt"] == "a red circle on a white background"
    assert stored["params"]["steps"] == 20
    assert page.locator("#gen-latents a").first.get_attribute("href").endswith(
        "latents.safetensors")


def test_stop_ends_the_run_early(browser: Browser) -> None:
    page = browser.page
    set_number(page, "gen-steps", 150)
    old = tuple(shown_images(page, "gen-preview"))
    page.locator("#gen-run").click()
    wait_for_image(page, "gen-preview", old)  # the run has begun
    page.locator("#gen-stop").click()
    page.get_by_text("stopped after").wait_for(timeout=TIMEOUT)
    set_number(page, "gen-steps", 20)
    old = tuple(shown_images(page, "gen-result"))
    page.locator("#gen-run").click()  # the next run is whole again
    wait_for_image(page, "gen-result", old)
    page.get_by_text("done: 20 steps").wait_for(timeout=TIMEOUT)


def test_steps_slider_moves_frame_and_sigma(browser: Browser) -> None:
    page = browser.page
    open_tab(page, "Steps")
    page.locator("#steps-facts").get_by_text("step 19 ·").wait_for(timeout=TIMEOUT)  # the last
    first = wait_for_image(page, "steps-frame")
    facts = page.locator("#steps-facts").inner_text()
    set_number(page, "steps-slider", 2)
    page.get_by_text("step 2 ·").wait_for(timeout=TIMEOUT)
    moved = wait_for_image(page, "steps-frame", (first,))
    assert fetch_image(page, moved) != fetch_image(page, first)
    sigma_late = float(facts.split("sigma")[1].split()[0])
    sigma_early = float(page.locator("#steps-facts").inner_text().split("sigma")[1].split()[0])
    assert sigma_early > sigma_late  # earlier steps are noisier
    assert page.locator("#steps-video a").first.get_attribute("href").endswith(".mp4")
    assert page.locator("#steps-trace a").first.get_attribute("href").endswith(".safetensors")


def test_steps_attention_follows_the_word_and_the_step(browser: Browser) -> None:
    page = browser.page
    open_tab(page, "Steps")
    word = page.locator("#steps-word input").first
    assert word.input_value() == "a"  # the first word after the start token
    set_number(page, "steps-slider", 10)
    attention = page.locator("#steps-attention")
    attention.get_by_text("'a' at step 10").wait_for(timeout=TIMEOUT)
    first = wait_for_image(page, "steps-attention")
    summed = wait_for_image(page, "steps-attention-sum")
    choose(page, "steps-word", "circle")
    attention.get_by_text("'circle' at step 10").wait_for(timeout=TIMEOUT)
    circle = wait_for_image(page, "steps-attention", (first,))
    circle_sum = wait_for_image(page, "steps-attention-sum", (summed,))
    assert fetch_image(page, circle) != fetch_image(page, first)
    assert fetch_image(page, circle_sum) != fetch_image(page, summed)
    set_number(page, "steps-slider", 3)
    attention.get_by_text("'circle' at step 3").wait_for(timeout=TIMEOUT)
    early = wait_for_image(page, "steps-attention", (circle,))
    assert fetch_image(page, early) != fetch_image(page, circle)
    assert word.input_value() == "circle"


def test_swap_differs_from_the_unedited_run(browser: Browser) -> None:
    page = browser.page
    open_tab(page, "Text")
    fill(page, "text-prompt", "a red circle on a white background")
    page.locator("#text-show").click()
    page.locator("#text-tokens").get_by_text("circle</w>").wait_for(timeout=TIMEOUT)
    fill(page, "text-swap-old", "red")
    fill(page, "text-swap-new", "blue")
    set_number(page, "text-steps", 20)
    page.locator("#text-run").click()
    plain = fetch_image(page, wait_for_image(page, "text-plain"))
    edited = fetch_image(page, wait_for_image(page, "text-edited"))
    assert plain.tobytes() != edited.tobytes()
    assert judge(edited.resize((64, 64), Image.Resampling.NEAREST)).color == "blue"  # read back


def test_malicious_pickle_embedding_is_refused_unrun(browser: Browser,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))  # harmless, and leaves a trace if it runs

    evil = tmp_path / "learned_embeds.bin"
    evil.write_bytes(pickle.dumps({"<cat-toy>": Payload()}, protocol=2))
    page = browser.page
    open_tab(page, "Text")
    page.locator("#text-embedding input[type=file]").set_input_files(str(evil))
    page.locator("#text-run").click()
    message = error_text(page)
    assert "pickled code" in message and "refusing" in message
    assert not marker.exists()
    close_errors(page)


def test_img2img_from_an_upload(browser: Browser, tmp_path: Path) -> None:
    start = tmp_path / "start.png"
    Image.new("RGB", (64, 64), "white").save(start)
    page = browser.page
    open_tab(page, "img2img")
    page.locator("#i2i-image input[type=file]").set_input_files(str(start))
    set_number(page, "i2i-steps", 10)
    page.locator("#i2i-run").click()
    result = wait_for_image(page, "i2i-result")
    page.get_by_text("done: 6 steps").wait_for(timeout=TIMEOUT)  # strength 0.6 of 10
    assert fetch_image(page, result).size == (64, 64)


def test_vae_and_schedule_views(browser: Browser, web_server: Server, tmp_path: Path) -> None:
    picture = tmp_path / "square.png"
    image = Image.new("RGB", (64, 64), "yellow")
    image.paste((0, 0, 255), (16, 16, 48, 48))
    image.save(picture)
    page = browser.page
    open_tab(page, "VAE")
    page.locator("#vae-image input[type=file]").set_input_files(str(picture))
    page.locator("#vae-run").click()
    wait_for_image(page, "vae-channels")
    page.get_by_text("PSNR").wait_for(timeout=TIMEOUT)
    assert float(page.locator("#vae-facts").inner_text().split("PSNR")[1].split()[0]) > 15
    open_tab(page, "Schedule")
    page.locator("#sched-show").click()
    wait_for_image(page, "sched-plot")
    rows = schedule_rows(web_server.ctx.parts, "lms", 15)  # the library's table
    table = page.locator("#sched-table")
    for i, t, sigma in (rows[0], rows[-1]):
        cells = [table.get_by_test_id(f"cell-{i}-{col}").first for col in (1, 2)]
        shown = [float(cell.inner_text(timeout=TIMEOUT)) for cell in cells]
        assert shown == [round(t, 2), round(sigma, 4)]


def test_guidance_shows_its_loss(browser: Browser) -> None:
    page = browser.page
    open_tab(page, "Guidance")
    set_number(page, "guide-steps", 10)
    set_number(page, "guide-every", 2)
    page.locator("#guide-run").click()
    wait_for_image(page, "guide-result")
    wait_for_image(page, "guide-loss")


def test_a_bad_request_is_one_line_and_the_server_keeps_serving(browser: Browser) -> None:
    page = browser.page
    open_tab(page, "Generate")
    set_number(page, "gen-width", 60)  # not a multiple of the VAE factor
    page.locator("#gen-run").click()
    assert "multiple of the VAE factor" in error_text(page)
    close_errors(page)
    set_number(page, "gen-width", 64)
    set_number(page, "gen-steps", 5)
    old = tuple(shown_images(page, "gen-result"))
    page.locator("#gen-run").click()
    wait_for_image(page, "gen-result", old)


def test_nothing_left_this_machine(browser: Browser) -> None:
    """Runs last: every request of the tests above went through the router, none outside."""
    assert browser.local > 20
    assert browser.outside == []
