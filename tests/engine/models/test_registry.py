"""Hub entries with their recommended settings, and the family read from a folder's model_index.json."""

import json

import pytest

from engine.errors import EngineError
from engine.models.registry import (ASSETS, GPU_CONTROL_DEFAULTS, GPU_DEFAULTS, REGISTRY, ModelSpec, default_model,
                                    detect_family, folder_name, folder_under, resolve)
from engine.models.schedulers import ALL_SCHEDULERS


def _folder(tmp_path, name: str, filename: str, config: dict):
    folder = tmp_path / name
    folder.mkdir()
    (folder / filename).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("class_name, family", [
    ("StableDiffusionPipeline", "sd"), ("StableDiffusionControlNetPipeline", "sd"),
    ("StableDiffusionXLPipeline", "sdxl"), ("StableDiffusionXLControlNetPipeline", "sdxl"),
    ("StableDiffusion3Pipeline", "sd3"), ("DiTPipeline", "dit")])
def test_family_comes_from_model_index(tmp_path, class_name, family):
    folder = _folder(tmp_path, "model", "model_index.json", {"_class_name": class_name, "_diffusers_version": "0.42.1"})
    assert detect_family(folder) == family
    spec = resolve(str(folder))
    assert spec.family == family and spec.kind == ("class" if family == "dit" else "text")


def test_controlnet_family_comes_from_its_config(tmp_path):
    sd = _folder(tmp_path, "sd", "config.json", {"_class_name": "ControlNetModel", "cross_attention_dim": 768})
    xl = _folder(tmp_path, "xl", "config.json", {"_class_name": "ControlNetModel", "addition_embed_type": "text_time",
                                                  "cross_attention_dim": 2048})
    assert detect_family(sd) == "sd" and detect_family(xl) == "sdxl"
    assert resolve(str(xl), "controlnet").family == "sdxl"


def test_unknown_or_broken_folders_have_no_family(tmp_path):
    assert detect_family(_folder(tmp_path, "odd", "model_index.json", {"_class_name": "FluxPipeline"})) is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    assert detect_family(broken) is None
    assert detect_family(tmp_path / "absent") is None


def test_folders_under_a_root_keep_their_names_and_never_leave_it(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    _folder(root, "mine", "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    _folder(root, "odd", "model_index.json", {"_class_name": "FluxPipeline"})
    _folder(tmp_path, "outside", "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    spec = resolve("mine", "text", root)
    assert spec.name == "mine" and spec.source == str((root / "mine").resolve()) and spec.family == "sd"
    assert resolve(str(root / "mine"), "text").name == str(root / "mine")  # without the root: the path as given
    with pytest.raises(EngineError) as odd:
        resolve("odd", "text", root)
    assert "'odd'" in str(odd.value) and str(root) not in str(odd.value)
    for escape in ("../outside", str(tmp_path / "outside"), "", ".", "mine/../../outside", "a\x00b", "x" * 5000):
        assert folder_under(root, escape) is None, escape
    assert folder_under(None, "mine") is None


def test_tiny_folders_in_the_hub_layout(tiny_folders):
    assert detect_family(tiny_folders["sd"]) == "sd"
    assert detect_family(tiny_folders["dit"]) == "dit"
    assert detect_family(tiny_folders["controlnet"]) == "sd"


@pytest.mark.parametrize("name, source, kind, family, scheduler, scale, size", [
    ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "text", "sd", "dpm++2m", 7.5, 512),
    ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "text", "sdxl", "euler", 5.0, 1024),
    ("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", "text", "sd3", "flow-euler", 4.5, 1024),
    ("dit-xl-2-256", "facebook/DiT-XL-2-256", "class", "dit", "dpm++2m", 4.0, 256),
    ("controlnet-canny", "lllyasviel/control_v11p_sd15_canny", "controlnet", "sd", "unipc", 7.5, 512),
    ("controlnet-scribble", "lllyasviel/control_v11p_sd15_scribble", "controlnet", "sd", "unipc", 7.5, 512),
    ("controlnet-pose", "lllyasviel/control_v11p_sd15_openpose", "controlnet", "sd", "unipc", 7.5, 512),
    ("controlnet-sdxl-canny", "diffusers/controlnet-canny-sdxl-1.0", "controlnet", "sdxl", "euler", 5.0, 1024),
])
def test_hub_entries(name, source, kind, family, scheduler, scale, size):
    spec = REGISTRY[name]
    assert (spec.source, spec.kind, spec.family, spec.scheduler, spec.default_scale, spec.size) == (
        source, kind, family, scheduler, scale, size)
    assert not spec.offline and resolve(name, kind) is spec


def test_recommended_schedulers_are_offered():
    for spec in REGISTRY.values():
        assert spec.scheduler in ALL_SCHEDULERS, spec.name


def test_controlnets_name_their_type_and_gpu_defaults_share_one_family():
    assert REGISTRY["controlnet-sdxl-canny"].control_type == "canny"
    base = REGISTRY[GPU_DEFAULTS["text"]].family
    assert {REGISTRY[n].family for n in GPU_CONTROL_DEFAULTS.values()} == {base}
    assert default_model("text", on_gpu=True) == "sd15" and default_model("text") == "lab-sd"
    assert default_model("controlnet", "canny", on_gpu=True) == "controlnet-canny"


def test_lab_models_name_their_family():
    assert REGISTRY["lab-sd"].family == "sd" and REGISTRY["lab-dit"].family == "dit"
    assert ModelSpec("x", "y", "text").family is None


def test_every_spelling_of_a_folder_is_one_name(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    _folder(root, "mine", "model_index.json", {"_class_name": "StableDiffusionPipeline"})
    (root / "alias").symlink_to(root / "mine")
    for spelling in ("mine", "./mine", "././mine", "mine/", "mine/../mine", "alias"):
        assert folder_name(root, spelling) == "mine", spelling
        assert resolve(spelling, "text", root).name == "mine", spelling
    assert folder_name(root, str(root / "mine")) is None  # a server path names nothing: only names relative to root
    assert folder_name(root, "nope") is None and folder_name(None, "mine") is None


def test_the_project_folder_as_a_model_folder_keeps_its_registry_entries():
    spec = resolve("./lab-sd/", "text", ASSETS)
    assert spec == REGISTRY["lab-sd"] and spec.weak == "lab-sd-weak"
    weak = resolve("lab-sd-weak", "unet", ASSETS)
    assert weak.kind == "unet" and weak.family == "sd"  # a bare UNet, recognised as what it is
    assert detect_family(ASSETS / "lab-sd-weak") == "sd"
