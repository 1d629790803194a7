"""ControlNet tab: a control map from a sketch, a picture's Canny edges or a pose, previewed live, then generation."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from engine.control.prepare import CONTROL_TYPES, load_image, prepare_control, to_rgb_array
from engine.errors import EngineError
from engine.generate import ControlSpec, Engine, Request
from engine.control.pose import detect_pose
from engine.registry import resolve
from world.figure import POSES, preset_json

from .models import ModelChoices
from .shared import (MODEL_EVENT, ImageInput, gallery, gallery_items, guarded, guidance_controls,
                     guidance_settings, progress_adapter, reproduce, reproduce_box, sampling_controls, seed_row,
                     text, whole)

AUTO = "auto"
FALLBACK_SIZE = (64, 64)  # the project's models' size, used for previews while no model can be loaded


def native_size(engine: Engine, model: str | None, default: str | None) -> tuple[int, int]:
    """(width, height) the text model generates at; control maps are prepared at that size."""
    try:
        pipe = engine.loaded(resolve(model or default, "text"))
    except (EngineError, TypeError):
        return FALLBACK_SIZE
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return side, side


def control_map(engine: Engine, models: ModelChoices, source, control_type: str, preprocess: bool, low, high,
                model: str | None) -> Image.Image:
    """The map the ControlNet reads: the image as given, or the condition's preprocessing applied to it."""
    if control_type not in CONTROL_TYPES:
        raise EngineError(f"Unknown control type '{control_type}'; choose one of {', '.join(CONTROL_TYPES)}.")
    if source is None:
        raise EngineError("Give a control image: draw a sketch, upload a picture or pick a pose first.")
    is_json = control_type == "pose" and isinstance(source, str) and source.lstrip()[:1] in ("[", "{")
    image = load_image(source) if isinstance(source, str) and not is_json else source
    if not preprocess:
        return Image.fromarray(to_rgb_array(image))
    size = native_size(engine, model, models.default("text"))
    return prepare_control(image, control_type, size=size, low=whole("Canny low threshold", low, 0, 1000),
                           high=whole("Canny high threshold", high, 0, 1000))


def make_handler(engine: Engine, models: ModelChoices):
    @guarded
    def controlnet(control_image, prompt: str, negative_prompt: str = "", control_type: str = "scribble",
                   controlnet: str = AUTO, preprocess: bool = False, canny_low: int = 100, canny_high: int = 200,
                   control_scale: float = 1.0, control_start: float = 0.0, control_end: float = 1.0,
                   guess_mode: bool = False, model: str | None = None, guidance: str = "cfg", scale: float = 5.0,
                   eta: float = 0.0, momentum: float = -0.5, norm_threshold: float = 0.0, rescale: float = 0.0,
                   interval_start: float = 0.0, interval_end: float = 1.0, steps: int = 25, scheduler: str = "ddim",
                   seed: int = 0, num_images: int = 1, progress=gr.Progress()):
        image = control_map(engine, models, control_image, control_type, preprocess, canny_low, canny_high, model)
        name = models.default_controlnet(control_type) if controlnet in (None, "", AUTO) else controlnet
        spec = ControlSpec(image, control_type, name, float(control_scale), float(control_start), float(control_end))
        req = Request(model=model or None, prompt=text("prompt", prompt),
                      negative_prompt=text("negative prompt", negative_prompt), controls=(spec,),
                      guess_mode=bool(guess_mode),
                      guidance=guidance_settings(guidance, scale, eta, momentum, norm_threshold, rescale,
                                                 interval_start, interval_end),
                      steps=whole("number of steps", steps, 1, 1000), scheduler=scheduler,
                      seed=whole("seed", seed, 0, 2**63 - 17), num_images=whole("number of images", num_images, 1, 16))
        result = engine.generate(req, callback=progress_adapter(progress))
        return gallery_items(result), image, reproduce(result)

    return controlnet


def _preview(engine: Engine, models: ModelChoices, control_type: str):
    """A live preview: the source through this condition's preprocessing, and the control type it sets."""

    @guarded
    def preview(source, model, low=100, high=200):
        if isinstance(source, dict):  # the sketchpad's layers; its composite is what was drawn
            source = source.get("composite")
        if source is None:
            return gr.skip(), gr.skip()
        return control_map(engine, models, source, control_type, True, low, high, model), control_type

    return preview


def pose_handler(engine: Engine):
    @guarded
    def pose_from_photo(photo):
        if photo is None:
            return gr.skip()
        return engine.runner.call(detect_pose, load_image(photo))  # the detector is a torch model too

    return pose_from_photo


def build(engine: Engine, models: ModelChoices) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Tabs():
                with gr.Tab("Sketch", id="sketch"):
                    sketch = gr.Sketchpad(type="pil", label="Draw dark strokes", canvas_size=(512, 512),
                                          brush=gr.Brush(default_size=8, colors=["#000000"], color_mode="fixed"),
                                          layers=False, height=420, elem_id="sketchpad")
                    brush = gr.Slider(1, 40, value=8, step=1, label="Brush size")
                with gr.Tab("Edges (Canny)", id="canny"):
                    picture = ImageInput(type="filepath", image_mode=None, label="Picture", format="png")
                    with gr.Row():
                        low = gr.Slider(0, 1000, value=100, step=1, label="Canny low threshold")
                        high = gr.Slider(0, 1000, value=200, step=1, label="Canny high threshold")
                with gr.Tab("Pose", id="pose"):
                    preset = gr.Dropdown(list(POSES), value=None, label="Pose preset")
                    keypoints = gr.Code(preset_json("standing"), language="json", lines=6,
                                        label="18 keypoints [x, y] in 0..1 (OpenPose order), or OpenPose JSON")
                    photo = ImageInput(type="filepath", image_mode=None, label="Or a photo (OpenPose detector)")
            prompt = gr.Textbox("a small figure in the center on a white background", label="Prompt", lines=2,
                                max_length=1000)
            negative = gr.Textbox("", label="Negative prompt")
            with gr.Row():
                control_type = gr.Radio(list(CONTROL_TYPES), value="scribble", label="Control type")
                controlnet = gr.Dropdown([AUTO, *sorted({n for v in models.controlnet.values() for n in v})],
                                         value=AUTO, label="ControlNet", info="auto = the default for the type",
                                         allow_custom_value=True)
            with gr.Row():
                weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control weight")
                start = gr.Slider(0, 1, value=0, step=0.05, label="Control start")
                end = gr.Slider(0, 1, value=1, step=0.05, label="Control end")
            guess = gr.Checkbox(False, label="Guess mode (control on the conditional branch only)")
            model = gr.Dropdown(models.text, value=models.default("text"), label="Model", allow_custom_value=True)
            g = guidance_controls("controlnet", 5.0)
            steps, scheduler = sampling_controls(models.steps)
            seed, count = seed_row("controlnet")
            preprocess = gr.Checkbox(False, visible=False)  # the map below is already preprocessed
            button = gr.Button("Generate", variant="primary", elem_id="controlnet-run")
        with gr.Column(scale=3):
            with gr.Row():
                control_image = ImageInput(type="filepath", image_mode=None, label="Control map (used as is)",
                                           format="png", height=300, elem_id="control-map")
                used = gr.Image(label="Control image used", type="pil", format="png", interactive=False, height=300,
                                elem_id="control-used")
            images = gallery(elem_id="controlnet-images")
            command = reproduce_box()
    brush.change(lambda s: gr.update(brush=gr.Brush(default_size=int(s), colors=["#000000"], color_mode="fixed")),
                 brush, sketch, api_name="sketch_brush", queue=False)
    targets = [control_image, control_type]
    sketch.change(_preview(engine, models, "scribble"), [sketch, model], targets, api_name="preview_scribble")
    canny = _preview(engine, models, "canny")
    for trigger, name in ((picture.change, "preview_canny"), (low.release, "preview_canny_low"),
                          (high.release, "preview_canny_high")):
        trigger(canny, [picture, model, low, high], targets, api_name=name)
    preset.change(guarded(lambda name: preset_json(name) if name else gr.skip()), preset, keypoints,
                  api_name="pose_preset")
    keypoints.change(_preview(engine, models, "pose"), [keypoints, model], targets, api_name="preview_pose")
    photo.change(pose_handler(engine), photo, control_image, api_name="pose_from_photo").then(
        lambda: "pose", None, control_type, api_name="pose_from_photo_type")
    inputs = [control_image, prompt, negative, control_type, controlnet, preprocess, low, high, weight, start, end,
              guess, model, *g.inputs, steps, scheduler, seed, count]
    button.click(make_handler(engine, models), inputs, [images, used, command], api_name="controlnet", **MODEL_EVENT)
