"""X/Y comparison of guidance methods against scales: batched runs per row, a labelled grid, per-cell measures."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from .errors import EngineError
from .guiders import GUIDERS, GuidanceSettings
from .guiders.settings import compare_rows
from .request import MAX_IMAGES

Measure = Callable[[list[Image.Image]], dict[str, Any]]  # one cell's images (its seeds) -> named measures
DEFAULT_ROWS = ("CFG", "Perp-CFG", "APG", "CFG + rescale")
DEFAULT_SCALES = (1.0, 3.0, 5.0, 7.5, 10.0, 15.0)
MAX_CELLS = 64
CELL_MIN = 128  # cells are enlarged (nearest) to at least this many pixels so labels stay readable


@dataclass
class Comparison:
    grid: Image.Image
    cells: list[list[Image.Image]]  # [row][column], the grid seed
    measures: list[dict[str, Any]]  # per cell: method, scale and the measures asked for
    parameters: str


def parse_scales(text: str) -> tuple[float, ...]:
    """'1, 3, 7.5' -> (1.0, 3.0, 7.5), with one-sentence errors."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        scales = tuple(float(p) for p in parts)
    except ValueError:
        raise EngineError(f"Scales must be numbers separated by commas, like '1, 3, 7.5'; got '{text}'.") from None
    if not scales:
        raise EngineError("Give at least one guidance scale, like '1, 3, 7.5'.")
    return scales


def row_settings(label: str, scales: tuple[float, ...]) -> GuidanceSettings:
    rows = compare_rows()
    if label not in rows:
        raise EngineError(f"Unknown comparison row '{label}'; choose from {', '.join(rows)}.")
    return rows[label].replace(scale=scales)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def grid(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], *,
         x_title: str = "", y_title: str = "") -> Image.Image:
    """Cells in rows and columns with labels on the left and top, like an X/Y plot."""
    side = max(CELL_MIN, max(c.width for row in cells for c in row))
    font, title_font = _font(max(12, side // 9)), _font(max(13, side // 8))
    left = max(24 + int(font.getlength(label)) for label in row_labels) + (30 if y_title else 0)
    top = side // 4 + (side // 5 if x_title else 0)
    canvas = Image.new("RGB", (left + side * len(col_labels), top + side * len(row_labels)), "white")
    draw = ImageDraw.Draw(canvas)
    if x_title:
        draw.text((left + side * len(col_labels) / 2, 4), x_title, fill="black", font=title_font, anchor="ma")
    for j, label in enumerate(col_labels):
        draw.text((left + side * j + side / 2, top - 6), label, fill="black", font=font, anchor="md")
    for i, (label, row) in enumerate(zip(row_labels, cells)):
        draw.text((left - 8, top + side * i + side / 2), label, fill="black", font=font, anchor="rm")
        for j, cell in enumerate(row):
            canvas.paste(cell.convert("RGB").resize((side, side), Image.NEAREST), (left + side * j, top + side * i))
    if y_title:
        label = Image.new("RGB", (int(title_font.getlength(y_title)) + 8, 24), "white")
        ImageDraw.Draw(label).text((4, 2), y_title, fill="black", font=title_font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (2, top + (side * len(row_labels) - label.height) // 2))
    return canvas


def shares_conditional(settings: GuidanceSettings, scale: float) -> bool:
    """Whether this cell is the plain conditional run: at scale 1 most methods return c at every step (not
    CFG-Zero*, whose zero-init steps still act), so one conditional batch serves all such rows."""
    return scale == 1 and GUIDERS[settings.method].plain_at_one


def _todo(settings: GuidanceSettings, scales: tuple[float, ...], seeds: int) -> list[tuple[int, float]]:
    """The (seed offset, scale) cells a row must run itself; the others are the shared conditional run."""
    return [(k, s) for k in range(seeds) for s in scales if not shares_conditional(settings, s)]


def estimate_seconds(engine, base, rows: tuple[str, ...], scales: tuple[float, ...], seeds: int) -> float:
    """Seconds the comparison should take here, from the same batches `compare` runs."""
    cells = [len(_todo(row_settings(label, scales), scales, seeds)) for label in rows]
    shared = seeds if any(n < seeds * len(scales) for n in cells) else 0
    batches = [(n, 2) for n in cells if n] + ([(shared, 1)] if shared else [])  # own cells: c and u; shared: c
    total = 0.0
    for images, branches in batches:
        for first in range(0, images, MAX_IMAGES):
            group = min(MAX_IMAGES, images - first)
            settings = GuidanceSettings("cfg", 7.5 if branches == 2 else 1.0)
            total += engine.estimate_seconds(replace(base, guidance=settings, num_images=group))
    return total


def _run(engine, base, settings: GuidanceSettings, cells: list[tuple[int, float]], callback, cancel=None):
    """Images for (seed offset, scale) cells, in as few batched Requests as the engine's batch limit allows."""
    images = {}
    parameters = ""
    for first in range(0, len(cells), MAX_IMAGES):
        group = cells[first:first + MAX_IMAGES]
        req = replace(base, guidance=settings.replace(scale=tuple(s for _, s in group)), num_images=len(group),
                      image_seeds=tuple(base.seed + k for k, _ in group))
        result = engine.generate(req, callback=callback, cancel=cancel)
        images.update(zip(group, result.images))
        parameters = parameters or result.parameters[0]
    return images, parameters


def compare(engine, base, rows: tuple[str, ...] = DEFAULT_ROWS, scales: tuple[float, ...] = DEFAULT_SCALES, *,
            seeds: int = 3, measure: Measure | None = None,
            callback: Callable[[int, dict], None] | None = None, cancel=None) -> Comparison:
    """Batched Requests per row (every scale times every seed), the grid showing `base.seed` in each cell; the
    scale-1 cells that are plain conditional runs are computed once for all rows."""
    if not rows:
        raise EngineError("Pick at least one guidance method to compare.")
    if not 1 <= seeds <= 8:
        raise EngineError(f"The number of seeds per cell must be from 1 to 8, not {seeds}.")
    if len(scales) > MAX_IMAGES:
        raise EngineError(f"Compare at most {MAX_IMAGES} scales at once, not {len(scales)}.")
    if len(rows) * len(scales) > MAX_CELLS:
        raise EngineError(f"The grid would have {len(rows) * len(scales)} cells; the limit is {MAX_CELLS}.")
    cells, measures, parameters = [], [], ""
    shared, shared_params = {}, ""  # the scale-1 conditional images, computed once for every row sharing them
    for r, label in enumerate(rows):
        settings = row_settings(label, scales)
        report = (lambda info, r=r: callback(r, info)) if callback else None
        todo = _todo(settings, scales, seeds)
        images, params = _run(engine, base, settings, todo, report, cancel)
        if len(todo) < seeds * len(scales):
            if not shared:
                shared, shared_params = _run(engine, base, settings, [(k, 1.0) for k in range(seeds)], report,
                                             cancel)
            images.update(shared)
            params = params or shared_params
        cells.append([images[0, s] for s in scales])
        parameters = parameters or params
        for scale in scales:
            values = measure([images[k, scale] for k in range(seeds)]) if measure else {}
            measures.append({"method": label, "scale": scale, **values})
    picture = grid(cells, list(rows), [f"{s:g}" for s in scales], x_title="guidance scale", y_title="method")
    values = ", ".join(f"{s:g}" for s in scales)
    parameters += f', X Type: Guidance scale, X Values: "{values}", Y Type: Method, Y Values: "{", ".join(rows)}"'
    return Comparison(picture, cells, measures, parameters)
