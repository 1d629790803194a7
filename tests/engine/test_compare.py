"""engine/compare.py and engine/attention.py on the tiny models, with the world's measures the Compare tab passes in."""

from types import SimpleNamespace

import numpy as np
import pytest

from engine.attention import generate_with_attention
from engine.compare import (DEFAULT_SCALES, compare, estimate_seconds, grid, match, matched_scale, parse_scales,
                            resolve_rows)
from engine.guiders.settings import compare_rows
from engine.errors import EngineError
from engine.request import Request, evals_per_step
from engine.guiders import GuidanceSettings
from world import canonical_caption, render_seed
from world.measures import bootstrap, cell_measures


def test_parse_scales():
    assert parse_scales("1, 3 7.5") == (1.0, 3.0, 7.5)
    with pytest.raises(EngineError):
        parse_scales("1, x")


def test_grid_cells_equal_single_runs_and_measures_cover_every_cell(lab_app, tiny_folders):
    engine = lab_app[1]
    base = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2, seed=5)
    result = compare(engine, base, ("CFG", "APG"), (1.0, 9.0), seeds=2, measure=cell_measures)
    assert [(m["method"], m["scale"]) for m in result.measures] == [("CFG", 1), ("CFG", 9), ("APG", 1), ("APG", 9)]
    single = engine.generate(Request(model=base.model, prompt=base.prompt, steps=2, seed=5,
                                     guidance=GuidanceSettings("cfg", 9.0))).images[0]
    assert np.abs(np.asarray(single, np.int16) - np.asarray(result.cells[0][1], np.int16)).max() <= 1
    assert all(m["adherence"] is None and m["diversity"] > 0 for m in result.measures)


def test_grid_is_labelled_and_adherence_scores_a_rendered_scene():
    from PIL import Image

    cell = Image.new("RGB", (32, 32), "red")
    picture = grid([[cell, cell]], ["CFG"], ["1", "3"], x_title="guidance scale", y_title="method")
    assert picture.width > 2 * 128 and picture.height > 128  # cells enlarged, room for labels
    rendered = render_seed(3)
    prompt = canonical_caption(rendered.scene)
    assert cell_measures([Image.fromarray(rendered.image)], prompt)["adherence"] == 1.0


def test_cross_attention_maps_leave_the_image_unchanged(lab_app, tiny_folders):
    engine = lab_app[1]
    req = Request(model=str(tiny_folders["sd"]), prompt="a blue square", steps=3)
    result, maps = generate_with_attention(engine, req)
    assert [token for token, _ in maps] == ["a", "blue", "square"]
    assert all(m.shape == (16, 16) for _, m in maps)  # the tiny UNet's latent size
    assert all(np.isclose(m.max(), 1.0) for _, m in maps)
    plain = np.asarray(engine.generate(req).images[0], np.int16)
    assert np.abs(plain - np.asarray(result.images[0], np.int16)).max() <= 1  # two paths: within one level of 255


def test_scale_one_cells_are_shared_except_for_cfg_zero_star(lab_app, tiny_folders):
    engine = lab_app[1]
    base = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2, seed=5)
    result = compare(engine, base, ("CFG", "APG", "CFG-Zero*"), (1.0, 4.0), seeds=2)
    for label, cell in zip(("APG", "CFG-Zero*"), (result.cells[1][0], result.cells[2][0])):
        single = engine.generate(Request(model=base.model, prompt=base.prompt, steps=2, seed=5,
                                         guidance=compare_rows()[label].replace(scale=1.0))).images[0]
        assert np.abs(np.asarray(single, np.int16) - np.asarray(cell, np.int16)).max() <= 1, label
    assert not np.array_equal(np.asarray(result.cells[0][0]), np.asarray(result.cells[2][0]))


class FakeEngine:
    """Images that encode their scale (red = 4 x scale) and method (green = its index), no model: enough to test
    the batching, the estimate and the matching."""

    METHODS = ["cfg", "perp-cfg", "apg", "tcfg", "pag", "autoguidance"]

    def __init__(self):
        self.requests = []

    def estimate_seconds(self, req):
        return float(evals_per_step(req) * req.steps)

    def generate(self, req, callback=None, cancel=None):
        from PIL import Image

        if req.guidance.method == "autoguidance":
            raise EngineError("AutoGuidance needs a weak version of 'fake', and there is none.")
        self.requests.append(req)
        green = self.METHODS.index(req.guidance.method)
        images = [Image.new("RGB", (8, 8), (round(4 * s), green, 0)) for s in req.guidance.scales]
        return SimpleNamespace(images=images, parameters=["Steps: 2"] * len(images))

    def generate_many(self, reqs, callbacks=None, cancel=None):
        outcomes = []
        for req in reqs:
            try:
                outcomes.append(self.generate(req, cancel=cancel))
            except EngineError as exc:
                outcomes.append(exc)
        return outcomes


CURVES = {"cfg": lambda s: s / 20, "perp-cfg": lambda s: min(0.3, s / 20), "apg": lambda s: s / 40,
          "tcfg": lambda s: s / 30}


def synthetic_measure(images):
    """Adherence from each method's known curve at the image's scale."""
    red, green, _ = images[0].getpixel((0, 0))
    return {"adherence": CURVES[FakeEngine.METHODS[green]](red / 4), "saturation": red / 255}


BASE = Request(model="fake", prompt="a red circle", steps=2, seed=5)


def test_defaults_reach_the_breakdown():
    assert DEFAULT_SCALES == (1, 3, 7.5, 15, 30, 50)


def test_rows_are_labels_or_method_specs():
    (label, apg), (spec, custom) = resolve_rows(("APG", "apg:eta=1:momentum=-0.75"))
    assert label == "APG" and apg == compare_rows()["APG"]
    assert spec == "apg:eta=1:momentum=-0.75" and custom["eta"] == 1 and custom["momentum"] == -0.75
    assert resolve_rows(("pag:pag-scale=5:pag_layers=mid",))[0][0] == "pag:pag_scale=5:pag_layers=mid"
    with pytest.raises(EngineError, match="Unknown comparison row 'Magic'; pick one of CFG"):
        resolve_rows(("Magic",))
    with pytest.raises(EngineError, match="APG momentum must lie between -1 and 0"):
        resolve_rows(("apg:momentum=2",))
    with pytest.raises(EngineError, match="asked for twice"):
        resolve_rows(("CFG", "CFG"))


def test_spec_rows_run_with_their_values_and_pag_never_shares_scale_one():
    engine = FakeEngine()
    result = compare(engine, BASE, ("CFG", "apg:momentum=-0.75", "pag:pag_scale=5"), (1.0, 4.0), seeds=2)
    runs = [(r.guidance.method, r.guidance.scales) for r in engine.requests]
    # Each row's own cells, then the one shared scale-1 conditional run (CFG's and APG's; never PAG's).
    assert runs == [("cfg", (4.0, 4.0)), ("apg", (4.0, 4.0)), ("pag", (1.0, 4.0, 1.0, 4.0)), ("cfg", (1.0, 1.0))]
    assert engine.requests[1].guidance["momentum"] == -0.75 and engine.requests[2].guidance["pag_scale"] == 5
    assert engine.requests[2].image_seeds == (5, 5, 6, 6)
    assert [m["method"] for m in result.measures[::2]] == ["CFG", "apg:momentum=-0.75", "pag:pag_scale=5"]


def test_estimate_counts_the_perturbed_branch():
    engine = FakeEngine()
    cfg = estimate_seconds(engine, BASE, ("CFG",), (1.0, 3.0), 1)
    pag = estimate_seconds(engine, BASE, ("PAG",), (1.0, 3.0), 1)
    assert cfg == 2 * (2 + 1)  # steps x (one guided image: c and u, then the shared scale-1 image: c)
    assert pag == 2 * 2 * 3  # steps x two images x (c, u and the perturbed branch): PAG acts at scale 1 too
    matched = estimate_seconds(engine, BASE, ("CFG", "PAG"), (1.0, 3.0), 1, match_at=7.5)
    assert matched == cfg + pag + 2 * 2 + 2 * 3  # + CFG at R, + one PAG image at a guided scale


def test_a_row_that_cannot_run_leaves_one_sentence_and_the_grid():
    result = compare(FakeEngine(), BASE, ("CFG", "AutoGuidance"), (1.0, 4.0), seeds=1)
    assert result.cells[1] == [None, None] and result.cells[0][1] is not None
    assert result.failed == {"AutoGuidance": "AutoGuidance needs a weak version of 'fake', and there is none."}
    assert result.grid.height > 2 * 128
    with pytest.raises(EngineError, match="weak version"):
        compare(FakeEngine(), BASE, ("AutoGuidance",), (1.0, 4.0), seeds=1)


def test_matched_scale_interpolates_on_the_rising_part():
    scales = (1, 3, 7.5, 15)
    assert matched_scale(scales, [0.1, 0.2, 0.4, 0.8], 0.6) == pytest.approx(11.25)
    assert matched_scale(scales, [0.1, 0.2, 0.4, 0.8], 0.4) == 7.5
    assert matched_scale(scales, [0.1, 0.5, 0.3, 0.9], 0.4) == pytest.approx(1 + 2 * 0.75)  # the first crossing
    assert matched_scale(scales, [0.5, 0.6, 0.7, 0.8], 0.4) == 1  # already there at the lowest column
    assert matched_scale(scales, [0.1, 0.3, 0.2, 0.3], 0.4) is None  # never reached
    assert matched_scale((15, 1, 7.5), [0.8, 0.1, 0.4], 0.6) == pytest.approx(11.25)  # columns in any order
    assert matched_scale(scales, [None] * 4, 0.4) is None


def test_matching_runs_each_row_once_at_its_matched_scale():
    engine = FakeEngine()
    scales = (1.0, 3.0, 7.5, 15.0, 30.0)
    rows = ("Perp-CFG", "APG", "TCFG")
    result = compare(engine, BASE, rows, scales, seeds=2, measure=synthetic_measure)
    before = len(engine.requests)
    matched = match(engine, BASE, result, 7.5, measure=synthetic_measure)
    assert matched.target == pytest.approx(0.375)  # CFG at 7.5, run because CFG is not a row
    by_method = {row["method"]: row for row in matched.rows}
    assert by_method["CFG"]["matched scale"] == 7.5 and by_method["CFG"]["note"] == "reference"
    assert by_method["Perp-CFG"]["matched scale"] is None and by_method["Perp-CFG"]["note"] == "not reached"
    assert by_method["APG"]["matched scale"] == 15.0  # a column: the grid's cell, no extra run
    assert by_method["TCFG"]["matched scale"] == pytest.approx(11.25)
    assert by_method["TCFG"]["adherence"] == pytest.approx(0.375)
    extra = [(r.guidance.method, r.guidance.scales, r.image_seeds) for r in engine.requests[before:]]
    assert extra == [("cfg", (7.5, 7.5), (5, 6)), ("tcfg", (11.25, 11.25), (5, 6))]


def test_matching_needs_adherence():
    engine = FakeEngine()
    result = compare(engine, BASE, ("CFG", "APG"), (1.0, 7.5), seeds=1, measure=lambda images: {"adherence": None})
    with pytest.raises(EngineError, match="needs an adherence measure"):
        match(engine, BASE, result, 7.5, measure=lambda images: {"adherence": None})


def test_cell_measures_give_intervals_from_the_per_seed_values():
    from PIL import Image

    images = [Image.new("RGB", (8, 8), colour) for colour in ("red", "white", (128, 128, 128))]
    values = cell_measures(images)
    assert values["per_seed"]["saturation"] == [1.0, 0.0, 0.0] and values["per_seed"]["adherence"] is None
    assert values["saturation"] == pytest.approx(1 / 3)
    assert values["saturation_low"] == 0.0 and values["saturation_high"] == 1.0
    assert values["adherence"] is None and values["adherence_low"] is None
    assert bootstrap([0, 1] * 32) == bootstrap([0, 1] * 32)  # a fixed seed
    _, low, high = bootstrap([0, 1] * 32)
    assert 0.35 < low < 0.4 and 0.6 < high < 0.65  # about +-0.12 around 0.5 with 64 images


def test_generate_many_runs_rows_side_by_side_with_single_run_numbers(tiny_folders, monkeypatch):
    import threading

    import torch

    from engine.generate import Engine, Stopped

    engine = Engine()
    model = str(tiny_folders["sd"])
    reqs = [Request(model=model, prompt="a red circle", steps=3, seed=5, num_images=2,
                    guidance=GuidanceSettings(method, 6.0)) for method in ("cfg", "apg")]
    reqs.append(Request(model=model, prompt="a red circle", steps=3, seed=5,
                        guidance=compare_rows()["PAG"].replace(scale=3.0)))
    reqs.append(Request(model="no-such-model", prompt="a red circle", steps=3))
    seen = []
    original = engine._generate

    def spy(req, watch, share=1.0):
        seen.append((req.guidance.method, threading.current_thread().name, torch.get_num_threads(), share))
        return original(req, watch, share)

    monkeypatch.setattr(engine, "_generate", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outcomes = engine.generate_many(reqs)
        with pytest.raises(Stopped):
            cancel = threading.Event()
            cancel.set()
            engine.generate_many(reqs[:2], cancel=cancel)
    finally:
        torch.set_num_threads(before)
    monkeypatch.undo()
    assert isinstance(outcomes[3], EngineError) and "no-such-model" in str(outcomes[3])
    for req, outcome in zip(reqs[:3], outcomes):
        alone = engine.generate(req).images
        for a, b in zip(alone, outcome.images):
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
    side = {m: (name, threads, share) for m, name, threads, share in seen[:4]}
    assert side["cfg"][0].startswith("batch-split") and side["cfg"][1:] == (1, 0.5)
    assert side["apg"][0].startswith("batch-split")
    assert not side["pag"][0].startswith("batch-split") and side["pag"][1:] == (2, 1.0)  # PAG alone: it swaps


def test_side_by_side_requests_never_tokenize_at_once(tiny_folders, monkeypatch):
    """A fast tokenizer keeps its truncation settings between calls (diffusers' encode_prompt calls it with and
    without truncation), so two requests tokenizing at once could each run with the other's settings and overrun
    the text encoder's positions: requests side by side encode their prompts one at a time."""
    import threading
    import time

    import torch

    from engine.generate import Engine
    from engine.models.registry import resolve

    engine = Engine()
    tokenizer_type = type(engine.loaded(resolve(str(tiny_folders["sd"]), "text")).tokenizer)
    original, active, overlaps = tokenizer_type.__call__, [], []
    guard = threading.Lock()

    def watched(self, *args, **kwargs):
        with guard:
            active.append(1)
            overlaps.append(len(active) > 1)
        time.sleep(0.01)  # widen the window two unguarded calls would share
        try:
            return original(self, *args, **kwargs)
        finally:
            with guard:
                active.pop()

    monkeypatch.setattr(tokenizer_type, "__call__", watched)
    prompt = "a large red circle on the left of a small blue square on a white background " * 3
    reqs = [Request(model=str(tiny_folders["sd"]), prompt=prompt, steps=1, seed=k) for k in range(6)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outcomes = engine.generate_many(reqs)
    finally:
        torch.set_num_threads(before)
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert overlaps and not any(overlaps)
