"""A ControlNet made for another base family is refused in one sentence, before any denoising."""

import pytest
from PIL import Image

from engine.errors import EngineError
from engine.generate import Engine
from engine.request import ControlSpec, Request
from tests.tiny_models import save_sdxl


@pytest.fixture(scope="module")
def sdxl_folders(tmp_path_factory):
    return save_sdxl(tmp_path_factory.mktemp("fit"))


def _request(model, controlnet):
    control = ControlSpec(image=Image.new("RGB", (32, 32)), control_type="canny", controlnet=str(controlnet))
    return Request(model=str(model), prompt="a red circle", steps=2, controls=(control,))


def test_an_sd_controlnet_on_sdxl_and_the_reverse_are_one_sentence(tiny_folders, sdxl_folders):
    engine = Engine()
    with pytest.raises(EngineError, match="another base model than this SDXL one"):
        engine.generate(_request(sdxl_folders["sdxl"], tiny_folders["controlnet"]))
    with pytest.raises(EngineError, match="another base model than this Stable Diffusion"):
        engine.generate(_request(tiny_folders["sd"], sdxl_folders["sdxl-controlnet"]))


def test_a_controlnet_of_the_same_family_runs(tiny_folders, sdxl_folders):
    engine = Engine()
    assert engine.generate(_request(sdxl_folders["sdxl"], sdxl_folders["sdxl-controlnet"])).images
    assert engine.generate(_request(tiny_folders["sd"], tiny_folders["controlnet"])).images
