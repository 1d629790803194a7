"""SDXL and SD3 through the app's API: the text tab's control metadata and T5 switch reach the PNG info and the
reproduce command, each model picks its recommended scheduler, SD3 shows joint-attention maps and runs PAG at its own
default layer, and the Compare grid sweeps an SDXL original size. Which models a host offers: those it can run, each
folder by one name, every other name refused with one sentence."""

import shlex

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from engine.cli import build_parser
from engine.errors import EngineError
from engine.pnginfo import parse_parameters
from tests.tiny_models import save_sd3, save_sdxl


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """The app over a folder holding a tiny SD, SDXL and SD3 (with and without T5)."""
    import app
    from engine.generate import Engine
    from tests.tiny_models import tiny_sd
    from ui.models import folder_choices

    root = tmp_path_factory.mktemp("families")
    tiny_sd().save_pretrained(root / "tiny-sd")
    save_sdxl(root)
    save_sd3(root)
    demo = app.create_app(Engine(), folder_choices(root, steps=2))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
    yield Client(url, verbose=False)
    demo.close()


def _info(gallery) -> dict:
    with Image.open(gallery[0]["image"]) as image:
        return parse_parameters(image.info["parameters"])


def _command(text: str):
    return build_parser().parse_args(shlex.split(text)[3:])  # after "python -m engine"


def test_sdxl_metadata_reaches_the_png_info_and_the_command(families):
    images, command, *_ = families.predict("a red circle", model="tiny-sdxl", steps=2, original_size="64 48",
                                           crop_coords="8x4", negative_target_size="32, 32", api_name="/text2img")
    info = _info(images)
    assert info["Original size"] == "64x48" and info["Crop coords"] == "8 4"
    assert info["Negative target size"] == "32x32" and "Target size" not in info
    assert info["Sampler"] == "DDIM"  # auto: a folder has no registry recommendation, so the family default
    args = _command(command)
    assert "--original-size 64 48" in command and "--crop-coords 8 4" in command
    assert args.negative_target_size == [32, 32]


def test_sd3_runs_with_flow_matching_by_default_and_drops_t5_on_request(families):
    images, command, *_ = families.predict("a red circle", model="tiny-sd3", steps=2, api_name="/text2img")
    assert "flow" in _info(images)["Sampler"].lower() and "--scheduler flow-euler" in command
    images, command, *_ = families.predict("a red circle", model="tiny-sd3", steps=2, drop_t5=True,
                                           api_name="/text2img")
    assert _info(images)["T5"] == "False" and "--no-t5" in command


def test_sd3_shows_joint_attention_maps_and_pag_at_its_own_default_layer(families):
    images, command, _, attention = families.predict("a red circle", model="tiny-sd3", steps=2, attention=True,
                                                     guidance="pag", api_name="/text2img")
    assert [item["caption"] for item in attention] == ["a", "red", "circle"]
    assert _info(images)["PAG layers"] == "blocks.1" and "--pag-layers blocks.1" in command


@pytest.mark.parametrize("kwargs, sentence", [
    (dict(model="tiny-sd", original_size="64 64"), "SDXL"),
    (dict(model="tiny-sd", drop_t5=True), "SD3"),
    (dict(model="tiny-sdxl", original_size="64"), "two whole numbers"),
    (dict(model="tiny-sdxl", crop_coords="-1 5"), "two whole numbers"),
    (dict(model="tiny-sd3", scheduler="ddim"), "flow-matching"),
])
def test_a_field_the_model_cannot_take_is_one_sentence(families, kwargs, sentence):
    with pytest.raises(AppError, match=sentence):
        families.predict("a red circle", steps=2, api_name="/text2img", **kwargs)


def test_compare_sweeps_the_sdxl_original_size(families):
    grid, _, table, _, notes = families.predict("a red circle", model="tiny-sdxl", methods=["CFG"], seeds=1,
                                                steps=2, x_axis="original size", sweep_values="32, 128",
                                                sweep_scale=4.0, api_name="/compare")
    with Image.open(grid) as picture:
        assert 'X Type: Original size, X Values: "32x32, 128x128"' in picture.info["parameters"]
    assert [row[table["headers"].index("x")] for row in table["data"]] == [32, 128]
    with pytest.raises(AppError, match="SDXL"):
        families.predict("a red circle", model="tiny-sd", methods=["CFG"], seeds=1, steps=2,
                         x_axis="original size", sweep_values="32, 128", api_name="/compare")


def test_a_cpu_offers_the_project_models_only_and_a_gpu_the_hub_ones_first():
    from engine.models.registry import REGISTRY
    from ui.models import registry_choices

    cpu, gpu = registry_choices(on_gpu=False), registry_choices(on_gpu=True)
    for kind in ("text", "class", "classifier", "controlnet"):
        assert cpu.offered(kind) and all(REGISTRY[name].offline for name in cpu.offered(kind)), kind
    assert gpu.default("text") == "sd15" and "sdxl" in gpu.text and "lab-sd" in gpu.text
    with pytest.raises(EngineError, match="^'sdxl' is not a model this server offers; pick one of: lab-sd.$"):
        cpu.pick("sdxl", "text")
    with pytest.raises(EngineError, match="'controlnet-canny' is not a model this server offers"):
        cpu.pick("controlnet-canny", "controlnet")


def test_the_project_folder_serves_as_a_model_folder(monkeypatch):
    """LAB_MODEL_DIR=assets/models: each kind offered by its folders' names; the weak UNet is no pipeline and is not
    offered; each ControlNet serves its own control type."""
    import app
    from engine.generate import Engine
    from engine.models.registry import ASSETS
    from ui.models import choices_from_env

    monkeypatch.setenv("LAB_MODEL_DIR", str(ASSETS))
    models = choices_from_env(on_gpu=False)
    assert (models.text, models.classes, models.classifier) == (["lab-sd"], ["lab-dit"], ["lab-classifier"])
    assert models.controlnet == {t: [f"lab-controlnet-{t}"] for t in ("canny", "scribble", "pose")}
    assert "lab-sd-weak" not in str(models) and models.missing() == []
    engine = Engine()
    app.create_app(engine, models)  # builds, as `python app.py` does at start-up
    assert engine.store.loads == 0  # the class names came from lab-dit's model_index.json


def test_one_message_for_every_name_that_is_no_model_and_one_name_per_folder():
    from engine.models.registry import ASSETS
    from ui.models import folder_choices

    models = folder_choices(ASSETS)
    answers = set()
    for name in ("lab-sd/unet", "lab-sd/text_encoder", "lab-sd/nope", "lab-sd-weak", "../lab-sd", "/etc",
                 str(ASSETS / "lab-sd"), "sd15", 7):
        with pytest.raises(EngineError) as info:
            models.pick(name, "text")
        answers.add(str(info.value).replace(repr(name) if isinstance(name, str) else "(int)", "NAME"))
    assert answers == {"NAME is not a model this server offers; pick one of: lab-sd."}
    assert {models.pick(name, "text") for name in ("lab-sd", "././lab-sd", "lab-sd/", "../models/lab-sd")} == {"lab-sd"}
    with pytest.raises(EngineError, match="^'lab-dit' is a class-conditional model, not a text-to-image model; pick"):
        models.pick("lab-dit", "text")
