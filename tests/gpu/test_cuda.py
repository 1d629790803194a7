"""On a CUDA GPU: the serving choices (half precision, bfloat16 for SD3, SDPA attention, VAE tiles, offload,
ControlNet swaps) and the published SD1.5, SDXL and SD3.5 Medium architectures timed through the engine and diffusers
(random weights, no downloads). Run with `python -m pytest -m gpu tests/gpu`."""

import json

import pytest
import torch

from engine.models.architectures import save
from engine.bench import run_architectures
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.models.loading import ModelStore, attention_processors
from engine.models.registry import resolve
from engine.request import Request

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="No CUDA device here: these tests need one.")]
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    return save("sd15", tmp_path_factory.mktemp("sd15"), torch.float16, "cuda")


def test_sd_loads_in_half_precision_with_sdpa_and_vae_tiles(sd15_folder):
    pipe = ModelStore(CUDA, offload=False).get(resolve(str(sd15_folder), "text")).obj
    assert pipe.unet.dtype == torch.float16 and pipe.unet.device.type == "cuda"
    assert attention_processors(pipe.unet) == {"AttnProcessor2_0"}
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == 1024


def test_sd3_folders_load_in_bfloat16(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert ModelStore(CUDA).dtype_for(resolve(str(tmp_path), "text")) == torch.bfloat16


def test_offload_generates_with_the_parts_moving_in_turn(sd15_folder):
    engine = Engine(ModelStore(CUDA, offload=True))
    req = Request(model=str(sd15_folder), prompt="a red circle", steps=2, guidance=GuidanceSettings("cfg", 7.5))
    before = torch.cuda.memory_allocated()
    result = engine.generate(req)
    assert len(result.images) == 1 and result.images[0].size == (512, 512)
    assert engine.store.get(resolve(str(sd15_folder), "text")).obj.unet.device.type == "cpu"  # offloaded again
    assert torch.cuda.memory_allocated() - before < 2 * 2**30


def test_controlnets_swap_on_the_gpu(tiny_folders, tmp_path):
    from diffusers import ControlNetModel

    second = tmp_path / "second"
    ControlNetModel.from_pretrained(tiny_folders["controlnet"]).save_pretrained(second)
    store = ModelStore(CUDA, resident_controlnets=1)
    first = store.get(resolve(str(tiny_folders["controlnet"]), "controlnet")).obj
    other = store.get(resolve(str(second), "controlnet")).obj
    assert first.device.type == "cpu" and other.device.type == "cuda" and len(store.resident()) == 1
    again = store.get(resolve(str(tiny_folders["controlnet"]), "controlnet")).obj
    assert again is first and first.device.type == "cuda" and other.device.type == "cpu" and store.loads == 2


def test_published_architectures_time_against_diffusers(capsys):
    rows = run_architectures(device="cuda", steps=25, runs=2)
    print(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["sd15", "sdxl", "sd35-medium"]
    for row in rows:
        assert row["diffusers_s"] > 0 and row["diffusers_peak"] > 0
        if "ratio" in row:  # the families the engine serves: no slower than diffusers beyond noise
            assert row["ratio"] < 1.15, row
    assert "ratio" in rows[0]  # SD1.5 is served today
