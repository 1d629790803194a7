"""The Compare grid in a real browser, at the page's default size: shown whole, its top labels not cut or covered."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.browser.test_browser import _generate, _shot, page  # noqa: F401  (page is the fixture)

DARK = 110  # a grey level below this is label ink


def _header_height(grid: np.ndarray) -> int:
    """Rows above the first cell: the top band of the grid is white down to where the last column's cell starts."""
    column = grid[:, -2]
    return int(np.argmax(column.min(axis=1) < 250))


def _dark(band: np.ndarray) -> np.ndarray:
    return band.min(axis=2) < DARK


@pytest.mark.browser
def test_the_grid_shows_whole_with_its_top_labels(page):
    page.get_by_text("Guidance Lab").first.wait_for()
    page.get_by_role("tab", name="Compare").click()
    _generate(page, "#compare-run", "#compare-grid")
    image = page.locator("#compare-grid img").first
    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=image.element_handle())
    image.scroll_into_view_if_needed()
    _shot(page, "compare-grid")
    response = page.request.get(image.get_attribute("src"))
    assert response.ok
    original = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
    height, width = original.shape[:2]

    # Where the picture is drawn inside the <img> (object-fit: contain), in viewport pixels.
    box = image.bounding_box()
    fit = min(box["width"] / width, box["height"] / height)
    shown_w, shown_h = width * fit, height * fit
    x0, y0 = box["x"] + (box["width"] - shown_w) / 2, box["y"] + (box["height"] - shown_h) / 2
    viewport = page.viewport_size
    assert x0 >= -0.5 and y0 >= -0.5 and x0 + shown_w <= viewport["width"] + 0.5, "the grid runs off the page"
    assert y0 + shown_h <= viewport["height"] + 0.5, "the grid does not fit the window"
    # Nothing of the page (a block label, a button) lies over the label band, and no ancestor clips it.
    top = _header_height(original)
    assert top > 0
    band_y = y0 + top * fit / 2
    for j in np.linspace(0.1, 0.9, 9):
        hit = page.evaluate("([x, y]) => { const e = document.elementFromPoint(x, y); return e && e.tagName; }",
                            [x0 + shown_w * j, band_y])
        assert hit == "IMG", f"something covers the grid's top labels at {j:.0%} of its width: {hit}"

    # The screenshot's label band, brought back to the grid's own size, carries the same ink as the grid.
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    scale = shot.width / viewport["width"]
    band = shot.crop((round(x0 * scale), round(y0 * scale), round((x0 + shown_w) * scale),
                      round((y0 + top * fit) * scale))).resize((width, top), Image.BILINEAR)
    seen, expected = _dark(np.asarray(band)), _dark(original[:top])
    assert expected.sum() > 20, "the grid has no top labels to look for"
    overlap = (seen & expected).sum() / expected.sum()
    assert overlap > 0.5, f"only {overlap:.0%} of the top labels' ink is on the page"
    assert seen.sum() < 3 * expected.sum(), "the label band shows ink that is not the grid's"
