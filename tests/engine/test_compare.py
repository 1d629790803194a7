"""engine/compare.py and engine/attention.py on the tiny models, with the world's measures the Compare tab passes in."""

import numpy as np
import pytest

from engine.attention import generate_with_attention
from engine.compare import compare, grid, parse_scales
from engine.guiders.settings import compare_rows
from engine.errors import EngineError
from engine.request import Request
from engine.guiders import GuidanceSettings
from world import canonical_caption, render_seed
from world.measures import cell_measures


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
    plain = engine.generate(req).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(result.images[0]))


def test_scale_one_cells_are_shared_except_for_cfg_zero_star(lab_app, tiny_folders):
    engine = lab_app[1]
    base = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2, seed=5)
    result = compare(engine, base, ("CFG", "APG", "CFG-Zero*"), (1.0, 4.0), seeds=2)
    for label, cell in zip(("APG", "CFG-Zero*"), (result.cells[1][0], result.cells[2][0])):
        single = engine.generate(Request(model=base.model, prompt=base.prompt, steps=2, seed=5,
                                         guidance=compare_rows()[label].replace(scale=1.0))).images[0]
        assert np.abs(np.asarray(single, np.int16) - np.asarray(cell, np.int16)).max() <= 1, label
    assert not np.array_equal(np.asarray(result.cells[0][0]), np.asarray(result.cells[2][0]))
