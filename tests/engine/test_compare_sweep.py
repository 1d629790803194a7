"""The Compare grid with an SDXL metadata value as its X axis: one column per value at one guidance scale, each cell
the engine's own run with that micro-conditioning; a model without it says so in one sentence."""

import numpy as np
import pytest

from engine.compare import parse_sweep_values, sweep
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.request import Request
from tests.tiny_models import save_sdxl


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return str(save_sdxl(tmp_path_factory.mktemp("sweep"))["sdxl"])


def test_each_column_is_the_run_with_that_original_size(sdxl_folder):
    engine = Engine()
    base = Request(model=sdxl_folder, prompt="a red circle", steps=3, seed=2)
    values = (16, 64, 256)
    result = sweep(engine, base, ("CFG", "Perp-CFG"), "original_size", values, 5.0, seeds=2,
                   measure=lambda images: {"count": len(images)})
    assert [m["x"] for m in result.measures] == [16, 64, 256] * 2
    assert all(m["count"] == 2 and m["scale"] == 5.0 for m in result.measures)
    for r, method in enumerate(("cfg", "perp-cfg")):
        for c, v in enumerate(values):
            alone = engine.generate(Request(model=sdxl_folder, prompt="a red circle", steps=3, seed=2,
                                            guidance=GuidanceSettings(method, 5.0), original_size=(v, v))).images[0]
            diff = np.abs(np.asarray(result.cells[r][c], dtype=int) - np.asarray(alone, dtype=int)).max()
            assert diff <= 1  # a cell's batch of seeds against the first seed alone: equal within a level
    first, last = (np.asarray(result.cells[0][c], dtype=int) for c in (0, 2))
    assert np.abs(first - last).max() > 1  # the original size changes the picture
    assert 'X Type: Original size, X Values: "16x16, 64x64, 256x256"' in result.parameters
    assert result.grid.width > result.grid.height


def test_a_model_without_micro_conditioning_is_told_so(tiny_folders):
    base = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2)
    with pytest.raises(EngineError, match="SDXL"):
        sweep(Engine(), base, ("CFG",), "target_size", (32, 64), 5.0, seeds=1)


@pytest.mark.parametrize("bad", ["", "a, b", "1.5"])
def test_sweep_values_are_whole_numbers(bad):
    with pytest.raises(EngineError, match="whole numbers|at least one"):
        parse_sweep_values(bad)


def test_only_the_micro_conditioning_fields_can_be_swept(tiny_folders):
    base = Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2)
    with pytest.raises(EngineError, match="can sweep"):
        sweep(Engine(), base, ("CFG",), "steps", (2, 3), 5.0)
