"""X/Y comparison of guidance methods against scales: batched runs per row, a labelled grid, per-cell measures, and
the methods compared again at the scales where their adherence matches CFG's at one reference scale."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont

from .errors import EngineError
from .generate import Stopped
from .guiders import GUIDERS, GuidanceSettings
from .guiders.settings import compare_rows, parse_method_spec
from .meter import DEFAULT_STEPS, Estimate, total
from .request import MAX_IMAGES, Request, check_request

Measure = Callable[[list[Image.Image]], dict[str, Any]]  # one cell's images (its seeds) -> named measures
Callback = Callable[[int, dict], None]  # (batched run index, the engine's step info)
DEFAULT_ROWS = ("CFG", "Perp-CFG", "APG", "CFG + rescale")
DEFAULT_SCALES = (1.0, 3.0, 7.5, 15.0, 30.0, 50.0)
DEFAULT_SEEDS = 3
REFERENCE = "CFG"  # the row whose adherence the others are matched to
MAX_CELLS = 96  # every Compare row at the default scales; the work budget bounds the rest
CELL_MIN = 128  # cells are enlarged (nearest) to at least this many pixels so labels stay readable


@dataclass
class Comparison:
    grid: Image.Image
    cells: list[list[Image.Image | None]]  # [row][column], the grid seed; None where the row could not run
    measures: list[dict[str, Any]]  # per cell: method, scale and the measures asked for
    parameters: str
    rows: list[tuple[str, GuidanceSettings]] = field(default_factory=list)  # (label, settings) in grid order
    scales: tuple[float, ...] = ()
    seeds: int = 1
    failed: dict[str, str] = field(default_factory=dict)  # label -> the sentence saying why that row did not run
    x_key: str = "scale"  # the measures' column the grid's X axis sweeps: the scale, or a SWEEPS field's values
    x_title: str = "guidance scale"


@dataclass
class Matching:
    """The rows at the scales where their mean adherence reaches CFG's at `at`."""

    at: float
    target: float  # CFG's mean adherence at `at`
    rows: list[dict[str, Any]]  # method, matched scale (None: not reached), the measures there, note


def parse_scales(text: str) -> tuple[float, ...]:
    """'1, 3, 7.5' -> (1.0, 3.0, 7.5), with one-sentence errors."""
    return _parse_list(text, float, "Scales must be numbers", "guidance scale", "1, 3, 7.5")


def _parse_list(text: str, kind, what: str, one: str, example: str) -> tuple:
    """Numbers separated by commas, semicolons or spaces, or one sentence saying what was wrong."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise EngineError(f"{what} separated by commas, like '{example}'.") from None
    if not values:
        raise EngineError(f"Give at least one {one}, like '{example}'.")
    return values


def row_settings(row: str) -> tuple[str, GuidanceSettings]:
    """(label, settings at scale 1) of one row: a Compare row label ('APG') or a method spec
    ('apg:eta=0:momentum=-0.5', labelled as written canonically)."""
    rows = compare_rows()
    if row in rows:
        return row, rows[row]
    name = row.split(":")[0].strip().lower().replace("_", "-")
    if name not in GUIDERS:
        shown = f" '{row[:60]}'" if re.fullmatch(r"[\w +*.:=,-]{1,60}", row) else ""  # never echo a path or markup
        raise EngineError(f"Unknown comparison row{shown}; pick one of {', '.join(rows)} or write a method "
                          f"like 'apg:eta=0:momentum=-0.5'.")
    return parse_method_spec(row)


def resolve_rows(rows: tuple[str, ...]) -> list[tuple[str, GuidanceSettings]]:
    resolved = [row_settings(row) for row in rows]
    labels = [label for label, _ in resolved]
    for label in labels:
        if labels.count(label) > 1:
            raise EngineError(f"The row '{label}' is asked for twice; list each method once.")
    return resolved


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def grid(cells: list[list[Image.Image | None]], row_labels: list[str], col_labels: list[str], *,
         x_title: str = "", y_title: str = "") -> Image.Image:
    """Cells in rows and columns with labels on the left and top, like an X/Y plot; a None cell stays grey."""
    side = max([CELL_MIN, *(c.width for row in cells for c in row if c is not None)])
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
            x, y = left + side * j, top + side * i
            if cell is None:
                draw.rectangle((x, y, x + side - 1, y + side - 1), fill=(225, 225, 225), outline="white")
                draw.text((x + side / 2, y + side / 2), "not run", fill="grey", font=font, anchor="mm")
            else:
                canvas.paste(cell.convert("RGB").resize((side, side), Image.NEAREST), (x, y))
    if y_title:
        label = Image.new("RGB", (int(title_font.getlength(y_title)) + 8, 24), "white")
        ImageDraw.Draw(label).text((4, 2), y_title, fill="black", font=title_font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (2, top + (side * len(row_labels) - label.height) // 2))
    return canvas


def shares_conditional(settings: GuidanceSettings, scale: float) -> bool:
    """Whether this cell is the plain conditional run: at scale 1 most methods return c at every step (not
    CFG-Zero*, whose zero-init steps still act, nor FDG, PAG and SEG, whose own scales still guide), so one
    conditional batch serves all such rows."""
    return scale == 1 and GUIDERS[settings.method].plain_at_one


def _todo(settings: GuidanceSettings, scales: tuple[float, ...], seeds: int) -> list[tuple[int, float]]:
    """The (seed offset, scale) cells a row must run itself; the others are the shared conditional run."""
    return [(k, s) for k in range(seeds) for s in scales if not shares_conditional(settings, s)]


def _requests(base: Request, settings: GuidanceSettings, cells: list[tuple[int, float]]) -> list[Request]:
    """The batched Requests for (seed offset, scale) cells: as few as the engine's batch limit allows."""
    return [replace(base, guidance=settings.replace(scale=tuple(s for _, s in group)), num_images=len(group),
                    image_seeds=tuple(base.seed + k for k, _ in group))
            for group in (cells[i:i + MAX_IMAGES] for i in range(0, len(cells), MAX_IMAGES))]


def _run(engine, base, settings: GuidanceSettings, cells: list[tuple[int, float]], callback, cancel=None):
    """Images for (seed offset, scale) cells, in as few batched Requests as the engine's batch limit allows, and
    their PNG parameters; raises the EngineError that kept them from running."""
    outcome = _run_rows(engine, base, [(settings, cells, callback)], cancel)[0]
    if isinstance(outcome, EngineError):
        raise outcome
    return outcome


def _run_rows(engine, base, rows: list[tuple[GuidanceSettings, list[tuple[int, float]], Any]], cancel=None
              ) -> list[tuple[dict, str] | EngineError]:
    """Each row's images for its (seed offset, scale) cells and its PNG parameters, or the EngineError that kept it
    from running; all rows' Requests go to the engine at once, which runs them side by side where it can."""
    planned = [(r, cells[i:i + MAX_IMAGES], req, callback)
               for r, (settings, cells, callback) in enumerate(rows)
               for req, i in zip(_requests(base, settings, cells), range(0, len(cells), MAX_IMAGES))]
    outcomes = engine.generate_many([req for _, _, req, _ in planned], [cb for *_, cb in planned], cancel=cancel)
    done: list[tuple[dict, str] | EngineError] = [({}, "") for _ in rows]
    for (r, cells, _, _), outcome in zip(planned, outcomes):
        if isinstance(outcome, EngineError) or isinstance(done[r], EngineError):
            done[r] = done[r] if isinstance(done[r], EngineError) else outcome
            continue
        images, parameters = done[r]
        images.update(zip(cells, outcome.images))
        done[r] = images, parameters or outcome.parameters[0]
    return done


def _planned(base, rows, scales, seeds, match_at: float | None) -> list[Request]:
    """Every Request `compare` (and `match`, when `match_at` is given) may run, in the shapes they run in."""
    _check(rows, scales, seeds)
    resolved = resolve_rows(rows)
    planned, sharing = [], None
    for _, settings in resolved:
        todo = _todo(settings, scales, seeds)
        planned += _requests(base, settings, todo)
        if len(todo) < seeds * len(scales):
            sharing = sharing or settings
    if sharing is not None:
        planned += _requests(base, sharing, [(k, 1.0) for k in range(seeds)])
    if match_at is not None:  # at most: CFG at the reference scale, then each other row once at a guided scale
        reference = compare_rows()[REFERENCE]
        planned += _requests(base, reference, [(k, match_at) for k in range(seeds)])
        upper = max(scales)
        planned += [req for label, settings in resolved if label != REFERENCE
                    for req in _requests(base, settings, [(k, upper) for k in range(seeds)])]
    return planned


def estimate_seconds(engine, base, rows: tuple[str, ...], scales: tuple[float, ...], seeds: int,
                     match_at: float | None = None) -> Estimate:
    """Seconds the comparison (and the matched-adherence runs, with `match_at`) should take here, from the same
    batches they run, each with its row's real settings (engine/meter.py prices each); with the default grid's
    seconds on the same model and prompt as its floor (`Estimate.default_s`), which the budget always admits."""
    estimates = [engine.estimate_seconds(req) for req in _planned(base, rows, scales, seeds, match_at)]
    default = None
    if all(getattr(e, "default_s", None) is not None for e in estimates):
        grid = _planned(replace(base, steps=DEFAULT_STEPS), DEFAULT_ROWS, DEFAULT_SCALES, DEFAULT_SEEDS, None)
        default = float(total(engine.estimate_seconds(req) for req in grid))
    return total(estimates, default)


def _check(rows, scales, seeds) -> None:
    if not rows:
        raise EngineError("Pick at least one guidance method to compare.")
    if not 1 <= seeds <= 8:
        raise EngineError(f"The number of seeds per cell must be from 1 to 8, not {seeds}.")
    if len(scales) > MAX_IMAGES:
        raise EngineError(f"Compare at most {MAX_IMAGES} scales at once, not {len(scales)}.")
    if len(rows) * len(scales) > MAX_CELLS:
        raise EngineError(f"The grid would have {len(rows) * len(scales)} cells; the limit is {MAX_CELLS}.")


def compare(engine, base, rows: tuple[str, ...] = DEFAULT_ROWS, scales: tuple[float, ...] = DEFAULT_SCALES, *,
            seeds: int = 3, measure: Measure | None = None, callback: Callback | None = None,
            cancel=None) -> Comparison:
    """Batched Requests per row (every scale times every seed), the grid showing `base.seed` in each cell; the
    scale-1 cells that are plain conditional runs are computed once for all rows. A row that cannot run here (e.g.
    AutoGuidance without a weak model) leaves grey cells and one sentence in `failed`; the others still run."""
    for req in _planned(base, rows, scales, seeds, None):
        check_request(req)  # every input error before any model work
    resolved = resolve_rows(rows)
    cells, measures, parameters, failed = [], [], "", {}
    todos = [_todo(settings, scales, seeds) for _, settings in resolved]
    work = [(settings, todo, (lambda info, r=r: callback(r, info)) if callback else None)
            for r, ((_, settings), todo) in enumerate(zip(resolved, todos))]
    # The scale-1 cells that are plain conditional runs: one run, with the first sharing row's settings, for all.
    sharing = next((r for r, todo in enumerate(todos) if len(todo) < seeds * len(scales)), None)
    if sharing is not None:
        work.append((resolved[sharing][1], [(k, 1.0) for k in range(seeds)], work[sharing][2]))
    outcomes = _run_rows(engine, base, work, cancel)
    shared = outcomes[-1] if sharing is not None else ({}, "")
    for r, (label, _) in enumerate(resolved):
        outcome = outcomes[r]
        if not isinstance(outcome, EngineError) and len(todos[r]) < seeds * len(scales):
            outcome = shared if isinstance(shared, EngineError) else ({**outcome[0], **shared[0]},
                                                                      outcome[1] or shared[1])
        if isinstance(outcome, EngineError):
            failed[label] = str(outcome)
            cells.append([None] * len(scales))
            measures += [{"method": label, "scale": scale, "note": str(outcome)} for scale in scales]
            continue
        images, params = outcome
        cells.append([images[0, s] for s in scales])
        parameters = parameters or params
        for scale in scales:
            values = measure([images[k, scale] for k in range(seeds)]) if measure else {}
            measures.append({"method": label, "scale": scale, **values})
    if len(failed) == len(resolved):
        raise EngineError(next(iter(failed.values())))
    labels = [label for label, _ in resolved]
    picture = grid(cells, labels, [f"{s:g}" for s in scales], x_title="guidance scale", y_title="method")
    values = ", ".join(f"{s:g}" for s in scales)
    parameters += f', X Type: Guidance scale, X Values: "{values}", Y Type: Method, Y Values: "{", ".join(labels)}"'
    return Comparison(picture, cells, measures, parameters, resolved, tuple(scales), seeds, failed)


# SDXL's micro-conditioning fields a grid may sweep as its X axis instead of the scale: field -> (label, unit). A
# value v means (v, v): a square original or target size, or an equal crop offset on both axes.
SWEEPS = {"original_size": ("original size", "size"), "target_size": ("target size", "size"),
          "crop_coords": ("crop offset", "offset")}


def parse_sweep_values(text: str) -> tuple[int, ...]:
    """'256, 512, 1024' -> (256, 512, 1024), with one-sentence errors."""
    return _parse_list(text, int, "Sweep values must be whole numbers", "value to sweep", "256, 512, 1024")


def _sweep_requests(base: Request, rows, field_name: str, values: tuple[int, ...], scale: float,
                    seeds: int) -> list[tuple[int, int, Request]]:
    """(row index, value, Request) of every cell of a metadata sweep: one batched Request per cell (its seeds)."""
    if field_name not in SWEEPS:
        raise EngineError(f"The X axis can sweep {', '.join(SWEEPS)}, not {field_name[:40]!r}.")
    _check(rows, values, seeds)
    return [(r, v, replace(base, guidance=settings.replace(scale=scale), num_images=seeds,
                           image_seeds=tuple(base.seed + k for k in range(seeds)), **{field_name: (v, v)}))
            for r, (_, settings) in enumerate(resolve_rows(rows)) for v in values]


def estimate_sweep_seconds(engine, base, rows, field_name: str, values: tuple[int, ...], scale: float,
                           seeds: int) -> Estimate:
    """Seconds the metadata sweep should take here: one estimate per cell's batched Request."""
    return total(engine.estimate_seconds(req) for *_, req in _sweep_requests(base, rows, field_name, values, scale,
                                                                               seeds))


def sweep(engine, base: Request, rows: tuple[str, ...], field_name: str, values: tuple[int, ...], scale: float, *,
          seeds: int = 3, measure: Measure | None = None, callback: Callback | None = None,
          cancel=None) -> Comparison:
    """Methods (rows) against one SDXL micro-conditioning value (the X axis) at one guidance scale: what the
    "control metadata" does to the same prompt and seeds. One batched Request per cell; a row that cannot run
    leaves grey cells and its sentence in `failed`."""
    planned = _sweep_requests(base, rows, field_name, values, scale, seeds)
    for *_, req in planned:
        check_request(req)
    resolved = resolve_rows(rows)
    label, unit = SWEEPS[field_name]
    cells = [[None] * len(values) for _ in resolved]
    measures, parameters, failed = [], "", {}
    for index, (r, value, req) in enumerate(planned):
        method = resolved[r][0]
        if method in failed:
            measures.append({"method": method, "scale": scale, "x": value, "note": failed[method]})
            continue
        report = (lambda info, i=index: callback(i, info)) if callback else None
        try:
            result = engine.generate(req, callback=report, cancel=cancel)
        except Stopped:
            raise
        except EngineError as exc:
            failed[method] = str(exc)
            measures.append({"method": method, "scale": scale, "x": value, "note": str(exc)})
            continue
        cells[r][values.index(value)] = result.images[0]
        parameters = parameters or result.parameters[0]
        values_measured = measure(result.images) if measure else {}
        measures.append({"method": method, "scale": scale, "x": value, **values_measured})
    if len(failed) == len(resolved):
        raise EngineError(next(iter(failed.values())))
    labels = [name for name, _ in resolved]
    shown = [f"{v}x{v}" if unit == "size" else f"{v},{v}" for v in values]
    title = f"{label} (SDXL), guidance scale {scale:g}"
    picture = grid(cells, labels, shown, x_title=title, y_title="method")
    parameters += (f', X Type: {label.capitalize()}, X Values: "{", ".join(shown)}", Y Type: Method, '
                   f'Y Values: "{", ".join(labels)}"')
    return Comparison(picture, cells, measures, parameters, resolved, (scale,), seeds, failed, x_key="x",
                      x_title=label)


def matched_scale(scales, adherence, target: float) -> float | None:
    """The scale where a method's adherence curve over a scale sweep first reaches `target`: linear between the
    two neighbouring scales of the first rising step that crosses it (the lowest scale when that already reaches
    it); None when the curve never does. Scales without an adherence value are left out; the scales may come in
    any order. The one matcher of the Compare tab and the study.

    It assumes adherence rises with the scale up to where guidance breaks down (and may fall after), so the first
    rising crossing is the match and a later one, on the breakdown side, is not; and that the curve is close to
    linear between neighbouring scales, so the answer is as fine as the sweep: measure there to see how close
    it came (the study adds that point to the curve and interpolates again)."""
    points = sorted((s, a) for s, a in zip(scales, adherence) if a is not None)
    if not points:
        return None
    if points[0][1] >= target:
        return points[0][0]
    for (s0, a0), (s1, a1) in zip(points, points[1:]):
        if a0 < target <= a1:
            return s0 + (target - a0) / (a1 - a0) * (s1 - s0)
    return None


def _cell(comparison: Comparison, label: str, scale: float) -> dict[str, Any] | None:
    return next((m for m in comparison.measures if m["method"] == label and m["scale"] == scale
                 and "note" not in m), None)


def _measured(engine, base, settings, scale, seeds, measure, callback, cancel) -> dict[str, Any]:
    images, _ = _run(engine, base, settings, [(k, scale) for k in range(seeds)], callback, cancel)
    return measure([images[k, scale] for k in range(seeds)])


def match(engine, base, comparison: Comparison, at: float, *, measure: Measure, callback: Callback | None = None,
          cancel=None) -> Matching:
    """CFG's mean adherence at scale `at` (from the grid when it has that cell, else one batched run), then for
    each other row the scale where its adherence reaches it (`matched_scale` on the grid's columns) and the
    measures there (one batched run on the grid's seeds, or the grid's cell when the scale is a column)."""
    seeds, index = comparison.seeds, len(comparison.rows)
    report = lambda i: (lambda info: callback(i, info)) if callback else None  # noqa: E731
    reference = _cell(comparison, REFERENCE, at)
    if reference is None:
        reference = _measured(engine, base, compare_rows()[REFERENCE], at, seeds, measure, report(index), cancel)
        index += 1
    if reference.get("adherence") is None:
        raise EngineError("Matching adherence needs an adherence measure, and these images have none: the world's "
                          "evaluator judges only the project's own models.")
    target = reference["adherence"]
    rows = [{"method": REFERENCE, "matched scale": at, **_plain(reference), "note": "reference"}]
    for label, settings in comparison.rows:
        if label == REFERENCE:
            continue
        if label in comparison.failed:
            rows.append({"method": label, "matched scale": None, "note": comparison.failed[label]})
            continue
        curve = [(_cell(comparison, label, s) or {}).get("adherence") for s in comparison.scales]
        scale = matched_scale(comparison.scales, curve, target)
        if scale is None:
            rows.append({"method": label, "matched scale": None, "note": "not reached"})
            continue
        values = _cell(comparison, label, scale)
        if values is None:
            try:
                values = _measured(engine, base, settings, scale, seeds, measure, report(index), cancel)
            except Stopped:
                raise
            except EngineError as exc:
                rows.append({"method": label, "matched scale": scale, "note": str(exc)})
                continue
            finally:
                index += 1
        rows.append({"method": label, "matched scale": scale, **_plain(values), "note": ""})
    return Matching(at, target, rows)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """A cell's measures without the per-seed lists."""
    return {k: v for k, v in values.items() if k != "per_seed"}
