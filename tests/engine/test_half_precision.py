"""The half-precision paths a GPU serves (float16; bfloat16 for SD3) run every guider to a real picture: here on
the CPU with tiny SDXL and SD3 folders, since no GPU is needed to catch a dtype mismatch or a division by a
bfloat16 zero."""

import numpy as np
import pytest
import torch

from engine.generate import Engine
from engine.guiders import GuidanceSettings, method_names
from engine.models.loading import ModelStore
from engine.request import Request
from engine.spaces import denoised, eps_from_x0
from tests.tiny_models import save_sd3, save_sdxl


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("half")
    return {**save_sdxl(root), **save_sd3(root)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_x0_conversions_hold_at_a_late_step_in_half_precision(dtype):
    a = torch.tensor(0.9991)  # DDIM's last steps: 1 - a rounds to 0 in bfloat16
    x, eps = torch.randn(1, 4, 8, 8).to(dtype), torch.randn(1, 4, 8, 8).to(dtype)
    back = eps_from_x0(denoised(eps, x, a), x, a)
    assert torch.isfinite(back).all()
    assert (back.float() - eps.float()).abs().max() < 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_every_guider_draws_a_picture_in_half_precision(folders, family, dtype):
    engine = Engine(ModelStore(dtype=dtype))
    scheduler = "flow-euler" if family == "sd3" else "ddim"
    for method in method_names():
        if method == "autoguidance":
            continue  # needs a registered weak model (tests/engine/test_sdxl.py runs it with one)
        image = engine.generate(Request(model=str(folders[family]), prompt="a red circle", steps=3,
                                        scheduler=scheduler, guidance=GuidanceSettings(method, 5.0))).images[0]
        assert np.asarray(image).std() > 1, f"{method} on {family} in {dtype} gave a blank image"
