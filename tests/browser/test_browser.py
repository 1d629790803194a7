"""The page in a real browser (Debian's chromium): every tab, a stroke on the sketch canvas, an image per tab."""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
TIMEOUT_MS = 60_000


def _require_browser():
    """Skip where no browser is installed, except under CI, where a missing browser is a failure."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not shutil.which(CHROMIUM):
        message = f"playwright or {CHROMIUM} is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@contextmanager
def open_page(url: str, profile: Path):
    """A page of `url` in Debian's chromium with a fresh user data dir at `profile`."""
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS,
                                                       viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        yield page
        context.close()


@pytest.fixture
def page(lab_app, tmp_path):
    with open_page(lab_app[0], tmp_path / "profile") as page:
        yield page


def _shot(page, name):
    folder = os.environ.get("LAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _generate(page, button: str, result_selector: str):
    page.locator(button).click()
    page.locator(f"{result_selector} img").first.wait_for(state="visible")


def _draw_stroke(page):
    page.locator("#sketchpad button[aria-label='Brush']").click()
    canvas = page.locator("#sketchpad canvas").first
    canvas.wait_for(state="visible")
    box = canvas.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.2 + 0.06 * k), y + 3 * k, steps=2)
    page.mouse.up()


@pytest.mark.browser
def test_every_tab_generates_in_the_browser(page):
    page.get_by_text("Guidance Lab").first.wait_for()
    _generate(page, "#text2img-run", "#text2img-images")
    _shot(page, "1-text2img")

    page.get_by_role("tab", name="Class-conditional").click()
    _generate(page, "#class-run", "#class-images")
    _shot(page, "2-class")

    page.get_by_role("tab", name="ControlNet").click()
    _draw_stroke(page)
    page.locator("#control-map img").first.wait_for(state="visible")  # the live scribble preview
    _generate(page, "#controlnet-run", "#controlnet-images")
    _shot(page, "3-controlnet")

    page.get_by_role("tab", name="Compare").click()
    _generate(page, "#compare-run", "#compare-grid")
    _shot(page, "4-compare")
