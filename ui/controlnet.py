"""ControlNet tab: a control map from a sketch, a picture's Canny edges or a pose, previewed live, then generation."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from engine.control.prepare import CONTROL_TYPES, prepare_control, to_rgb_array
from engine.errors import EngineError
from engine.generate import Engine
from engine.request import MAX_CONTROLS, ControlSpec, Request
from world.figure import POSES, preset_json

from .controls import run_buttons, sampling_controls, seed_row
from .endpoint import api_function, endpoint_inputs
from .errors import guarded
from .guidance import guidance_api, guidance_controls, guidance_settings
from .inputs import ImageInput, SketchInput, shown
from .models import ModelChoices
from .pose_editor import editor_value, keypoints_from_editor, pose_editor
from .results import gallery, gallery_items, live_gallery, reproduce, reproduce_box
from .streaming import LIVE_EVERY_S, MODEL_EVENT, both, check_budget, in_background, progress_adapter, stoppable
from .values import SEED_MAX, number, scheduler_choice, text, whole
from .zerogpu import on_gpu

AUTO = "auto"
MAX_POSE_JSON = 100_000  # characters: ten people with every joint take under 3,000
DEFAULT_SCALE = 5.0
FALLBACK_SIZE = (64, 64)  # the project's models' size, used for previews where the model's size is not known
STACKED = range(2, MAX_CONTROLS + 1)  # the numbers of the controls stacked on the first one
# Each stacked control's API parameters, with their defaults; named `<name>_<number>`, after every other parameter.
STACKED_PARAMS = (("control_image", None), ("control_type", "scribble"), ("controlnet", AUTO), ("control_scale", 1.0),
                  ("control_start", 0.0), ("control_end", 1.0))


def native_size(engine: Engine, model: str | None, default: str | None) -> tuple[int, int]:
    """(width, height) the text model generates at; control maps are prepared at that size. Read from the model
    if it is loaded, else from its configuration: a preview never loads a model (FALLBACK_SIZE where nothing
    says)."""
    try:
        return engine.store.native_size(engine.resolve(model or default, "text")) or FALLBACK_SIZE
    except (EngineError, TypeError):
        return FALLBACK_SIZE


def control_map(engine: Engine, models: ModelChoices, source, control_type: str, preprocess: bool, low, high,
                model: str | None) -> Image.Image:
    """The map the ControlNet reads: the image as given, or the condition's preprocessing applied to it."""
    if control_type not in CONTROL_TYPES:
        raise EngineError(f"Unknown control type {shown(control_type)}; choose one of {', '.join(CONTROL_TYPES)}.")
    if source is None:
        raise EngineError("Give a control image: draw a sketch, upload a picture or pick a pose first.")
    if isinstance(source, str):  # text is only ever keypoint JSON: no string from the network names a file
        if control_type != "pose":
            raise EngineError(f"A {control_type} control needs an uploaded image, not text.")
        if len(source) > MAX_POSE_JSON:
            raise EngineError(f"The keypoint JSON is {len(source)} characters long; the limit is {MAX_POSE_JSON}.")
        if not preprocess:
            raise EngineError("Keypoint JSON is drawn as a skeleton only with preprocess on.")
    elif not isinstance(source, Image.Image):
        raise EngineError("The control image must be an uploaded image (or, for a pose, keypoint JSON).")
    image = source
    if not preprocess:
        return Image.fromarray(to_rgb_array(image))
    size = native_size(engine, model, models.pick(None, "text"))
    return prepare_control(image, control_type, size=size, low=whole("Canny low threshold", low, 0, 1000),
                           high=whole("Canny high threshold", high, 0, 1000))


def control_spec(models: ModelChoices, v: dict, image: Image.Image, k: int | None = None) -> ControlSpec:
    """The ControlSpec of the first control (k None) or of stacked control k, from the endpoint's values."""
    key = "{}" if k is None else "{}_%d" % k
    which = "control" if k is None else f"control {k}"
    control_type = v[key.format("control_type")]
    chosen = v[key.format("controlnet")]
    name = models.pick(None if chosen == AUTO else chosen, "controlnet", models.default_controlnet(control_type))
    return ControlSpec(image, control_type, name, number(f"{which} scale", v[key.format("control_scale")]),
                       number(f"{which} start", v[key.format("control_start")]),
                       number(f"{which} end", v[key.format("control_end")]))


def stacked_controls(engine: Engine, models: ModelChoices, v: dict, model: str | None) -> list[ControlSpec]:
    """The stacked controls that have a map, in their order; their maps are used as is."""
    specs = []
    for k in STACKED:
        source = v[f"control_image_{k}"]
        if source is None:
            continue
        if not isinstance(source, Image.Image):
            raise EngineError(f"Control {k}'s map must be an uploaded image.")
        image = control_map(engine, models, source, v[f"control_type_{k}"], False, 100, 200, model)
        specs.append(control_spec(models, v, image, k))
    return specs


def make_handler(engine: Engine, models: ModelChoices):
    """/controlnet: the fixed parameters below plus every guider's declared parameters, then the stacked controls'
    parameters."""
    leading, trailing = guidance_api(DEFAULT_SCALE)
    params = [("control_image", inspect.Parameter.empty), ("prompt", inspect.Parameter.empty),
              ("negative_prompt", ""), ("control_type", "scribble"), ("controlnet", AUTO), ("preprocess", False),
              ("canny_low", 100), ("canny_high", 200), ("control_scale", 1.0), ("control_start", 0.0),
              ("control_end", 1.0), ("guess_mode", False), ("model", None), *leading, ("steps", 25),
              ("scheduler", "auto"), ("seed", 0), ("num_images", 1), *trailing,
              *((f"{name}_{k}", default) for k in STACKED for name, default in STACKED_PARAMS)]

    def controlnet(v: dict):
        control_type, model = v["control_type"], models.pick(v["model"], "text")
        image = control_map(engine, models, v["control_image"], control_type, v["preprocess"], v["canny_low"],
                            v["canny_high"], model)
        controls = (control_spec(models, v, image), *stacked_controls(engine, models, v, model))
        req = Request(model=model, prompt=text("prompt", v["prompt"]),
                      negative_prompt=text("negative prompt", v["negative_prompt"]), controls=controls,
                      guess_mode=bool(v["guess_mode"]), guidance=guidance_settings(v),
                      steps=whole("number of steps", v["steps"], 1, 1000),
                      scheduler=scheduler_choice(models, v["model"], v["scheduler"]),
                      seed=whole("seed", v["seed"], 0, SEED_MAX),
                      num_images=whole("number of images", v["num_images"], 1, 16))
        check_budget(engine.estimate_seconds(req))

        def work(report, cancel):
            return engine.generate(req, callback=both(progress_adapter(v["progress"]), report),
                                   live_every_s=LIVE_EVERY_S, cancel=cancel)

        for kind, value in in_background(work, v["request"]):
            if kind == "done":
                yield gallery_items(value), image, reproduce(value)
            else:
                yield live_gallery(value), image, gr.skip()

    return api_function("controlnet", "Generate images that follow a control map (sketch, edges or pose) and a "
                        "prompt.", params, controlnet)


def _drawn(source):
    """The image a source holds: the sketchpad's composite for its layers, anything else as given."""
    if isinstance(source, dict):  # the sketchpad's layers; its composite is what was drawn
        source = source.get("composite")
        if source is not None and not isinstance(source, Image.Image):
            raise EngineError("The sketch must come from the sketchpad, as a drawing.")
    return source


def _preview(engine: Engine, models: ModelChoices, control_type: str):
    """A live preview: the source through this condition's preprocessing, and the control type it sets."""

    @guarded
    def preview(source, model, low=100, high=200):
        source = _drawn(source)
        if source is None:
            return gr.skip(), gr.skip()
        model = models.pick(model, "text")
        return control_map(engine, models, source, control_type, True, low, high, model), control_type

    return preview


def _switch(engine: Engine, models: ModelChoices, control_type: str):
    """On selecting a sub-tab: its control type, that type's default ControlNet, and the map redrawn from this
    tab's source (cleared where it has none or the source cannot be drawn, with the reason as a warning), so no map
    of another tab is ever sent with this type."""

    @guarded
    def switch(source, model, low=100, high=200):
        net = models.default_controlnet(control_type) or AUTO
        source = _drawn(source)
        if source is None:
            return None, control_type, net
        try:
            image = control_map(engine, models, source, control_type, True, low, high, models.pick(model, "text"))
        except EngineError as exc:
            gr.Warning(str(exc))
            image = None
        return image, control_type, net

    return switch


def _pose_switch(engine: Engine, models: ModelChoices):
    """The Pose tab's switch, which also fits the editor's canvas to the model."""
    switch = _switch(engine, models, "pose")
    resize = editor_handlers(engine, models)[2]

    @guarded
    def switch_pose(keypoints, editor, model):
        image, control_type, net = switch(keypoints, model)
        return image, control_type, net, resize(editor, model)

    return switch_pose


def _model_size(engine: Engine, models: ModelChoices, model: str | None) -> tuple[int, int]:
    """(width, height) of an offered text model (the default where none is named)."""
    return native_size(engine, models.pick(model, "text"), models.pick(None, "text"))


def editor_handlers(engine: Engine, models: ModelChoices):
    """(to_editor, from_editor, resize): keypoint JSON drawn in the pose editor on the model's canvas, the editor's
    pose written into the keypoint JSON, and the editor's own pose on a new model's canvas. Nothing the editor wrote
    is sent back to it, so a reply that arrives after a newer edit cannot undo that edit."""

    @guarded
    def to_editor(keypoints, model):
        return editor_value(keypoints, _model_size(engine, models, model))

    @guarded
    def from_editor(value, keypoints, model):
        text = keypoints_from_editor(value, keypoints, _model_size(engine, models, model))
        return gr.skip() if text is None else text

    @guarded
    def resize(value, model):
        text = editor_value(value, _model_size(engine, models, model))
        return gr.skip() if text == value else text

    return to_editor, from_editor, resize


def preset_handler(engine: Engine, models: ModelChoices):
    @guarded
    def pose_preset(name: str | None, model=None):
        """The keypoint JSON (OpenPose, on the model's canvas) of a named preset figure, for the box and the
        editor."""
        if not name:
            return gr.skip(), gr.skip()
        if name not in POSES:
            raise EngineError(f"Unknown pose preset {shown(name)}; choose one of {', '.join(POSES)}.")
        text = editor_value(preset_json(name), _model_size(engine, models, model))
        return text, text

    return pose_preset


def pose_handler(engine: Engine):
    @guarded
    def pose_from_photo(photo):
        if photo is None:
            return gr.skip()
        return engine.detect_pose(photo)

    return pose_from_photo


@dataclass
class StackedUnit:
    """Stacked control k: its inputs and its copy button."""

    k: int
    image: ImageInput
    control_type: gr.Radio
    controlnet: gr.Dropdown
    weight: gr.Slider
    start: gr.Slider
    end: gr.Slider
    copy: gr.Button

    def by_name(self) -> dict[str, gr.components.Component]:
        """Its inputs by their API names, `<name>_<k>` (see STACKED_PARAMS)."""
        inputs = {"control_image": self.image, "control_type": self.control_type, "controlnet": self.controlnet,
                  "control_scale": self.weight, "control_start": self.start, "control_end": self.end}
        return {f"{name}_{self.k}": component for name, component in inputs.items()}


@guarded
def _copy_map(image, control_type, controlnet):
    """The first control's map, type and ControlNet, copied into a stacked unit (nothing while there is no map)."""
    if image is None:
        return gr.skip(), gr.skip(), gr.skip()
    return image, control_type, controlnet


def stacked_unit(k: int, nets: list[str]) -> StackedUnit:
    """Stacked control k: its map (used as is, or copied from the first control's by `copy`), type, ControlNet and
    knobs."""
    with gr.Group():
        with gr.Row():
            image = ImageInput(type="filepath", image_mode=None, label=f"Control map {k} (used as is)", format="png",
                               height=200, elem_id=f"control-map-{k}")
            with gr.Column():
                control_type = gr.Radio(list(CONTROL_TYPES), value="scribble", label=f"Control type {k}")
                controlnet = gr.Dropdown(nets, value=AUTO, label=f"ControlNet {k}", allow_custom_value=True)
                copy = gr.Button("Use the current control map", size="sm")
        with gr.Row():
            weight = gr.Slider(0, 2, value=1.0, step=0.05, label=f"Control weight {k}")
            start = gr.Slider(0, 1, value=0, step=0.05, label=f"Control start {k}")
            end = gr.Slider(0, 1, value=1, step=0.05, label=f"Control end {k}")
    return StackedUnit(k, image, control_type, controlnet, weight, start, end, copy)


def build(engine: Engine, models: ModelChoices) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Tabs():
                with gr.Tab("Sketch", id="sketch") as sketch_tab:
                    sketch = SketchInput(type="pil", label="Draw dark strokes", canvas_size=(512, 512),
                                          brush=gr.Brush(default_size=8, colors=["#000000"], color_mode="fixed"),
                                          layers=False, height=420, elem_id="sketchpad")
                    brush = gr.Slider(1, 40, value=8, step=1, label="Brush size")
                with gr.Tab("Edges (Canny)", id="canny") as canny_tab:
                    picture = ImageInput(type="filepath", image_mode=None, label="Picture", format="png",
                                         elem_id="canny-picture")
                    with gr.Row():
                        low = gr.Slider(0, 1000, value=100, step=1, label="Canny low threshold")
                        high = gr.Slider(0, 1000, value=200, step=1, label="Canny high threshold")
                with gr.Tab("Pose", id="pose") as pose_tab:
                    start_pose = editor_value(preset_json("standing"), FALLBACK_SIZE)
                    preset = gr.Dropdown(list(POSES), value=None, label="Pose preset", elem_id="pose-preset")
                    editor = pose_editor(start_pose)
                    keypoints = gr.Code(start_pose, language="json", lines=4, elem_id="pose-keypoints",
                                        label="Keypoints: OpenPose JSON (the editor writes it), or 18 [x, y] in "
                                              "0..1 in OpenPose order")
                    photo = ImageInput(type="filepath", image_mode=None, label="Or a photo (OpenPose detector)")
            prompt = gr.Textbox("a small figure in the center on a white background", label="Prompt", lines=2,
                                max_length=1000)
            negative = gr.Textbox("", label="Negative prompt")
            with gr.Row():
                control_type = gr.Radio(list(CONTROL_TYPES), value="scribble", label="Control type",
                                        info="set by the tab: Sketch, Edges or Pose", interactive=False)
                nets = [AUTO, *sorted({n for v in models.controlnet.values() for n in v})]
                controlnet = gr.Dropdown(nets, value=AUTO, label="ControlNet", info="auto = the default for the type",
                                         allow_custom_value=True)
            with gr.Row():
                weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control weight")
                start = gr.Slider(0, 1, value=0, step=0.05, label="Control start")
                end = gr.Slider(0, 1, value=1, step=0.05, label="Control end")
            with gr.Accordion("More controls (stacked)", open=False):
                gr.Markdown("Each control with a map adds its ControlNet's residuals to the first one's. Make a map "
                            "in the tabs above, then copy it into a unit.")
                units = [stacked_unit(k, nets) for k in STACKED]
            guess = gr.Checkbox(False, label="Guess mode (control on the conditional branch only)")
            model = gr.Dropdown(models.text, value=models.default("text"), label="Model", allow_custom_value=True)
            g = guidance_controls("controlnet", DEFAULT_SCALE)
            steps, scheduler = sampling_controls("controlnet", models.steps)
            seed, count = seed_row("controlnet")
            preprocess = gr.Checkbox(False, visible=False)  # the map below is already preprocessed
            button, stop = run_buttons("controlnet")
        with gr.Column(scale=3, elem_id="controlnet-output"):
            with gr.Row():
                control_image = ImageInput(type="filepath", image_mode=None, label="Control map (used as is)",
                                           format="png", height=300, elem_id="control-map")
                used = gr.Image(label="Control image used", type="pil", format="png", interactive=False, height=300,
                                elem_id="control-used")
            images = gallery(elem_id="controlnet-images")
            command = reproduce_box("controlnet")
    brush.change(lambda s: gr.update(brush=gr.Brush(default_size=int(s), colors=["#000000"], color_mode="fixed")),
                 brush, sketch, api_name="sketch_brush", api_visibility="undocumented", queue=False)
    targets = [control_image, control_type]
    sketch.change(_preview(engine, models, "scribble"), [sketch, model], targets, api_name="preview_scribble")
    canny = _preview(engine, models, "canny")
    for trigger, name in ((picture.change, "preview_canny"), (low.release, "preview_canny_low"),
                          (high.release, "preview_canny_high")):
        trigger(canny, [picture, model, low, high], targets, api_name=name,
                api_visibility="public" if name == "preview_canny" else "undocumented")
    to_editor, from_editor, resize = editor_handlers(engine, models)
    preset.change(preset_handler(engine, models), [preset, model], [keypoints, editor], api_name="pose_preset")
    keypoints.change(_preview(engine, models, "pose"), [keypoints, model], targets, api_name="preview_pose")
    keypoints.blur(to_editor, [keypoints, model], editor, api_name="pose_to_editor", api_visibility="undocumented")  # typed JSON, once done
    editor.change(from_editor, [editor, keypoints, model], keypoints, api_name="pose_from_editor", api_visibility="undocumented")
    model.change(resize, [editor, model], editor, api_name="pose_editor_canvas", api_visibility="undocumented")
    photo.change(pose_handler(engine), photo, control_image, api_name="pose_from_photo").then(
        lambda: "pose", None, control_type, api_name="pose_from_photo_type", api_visibility="undocumented")
    switched = [control_image, control_type, controlnet]
    sketch_tab.select(_switch(engine, models, "scribble"), [sketch, model], switched, api_name="tab_scribble", api_visibility="undocumented")
    canny_tab.select(_switch(engine, models, "canny"), [picture, model, low, high], switched, api_name="tab_canny", api_visibility="undocumented")
    pose_tab.select(_pose_switch(engine, models), [keypoints, editor, model], [*switched, editor],
                    api_name="tab_pose", api_visibility="undocumented")
    for k, unit in zip(STACKED, units):
        unit.copy.click(_copy_map, [control_image, control_type, controlnet],
                        [unit.image, unit.control_type, unit.controlnet], api_name=f"copy_control_{k}",
                        api_visibility="undocumented", queue=False)
    stacked = {name: component for unit in units for name, component in unit.by_name().items()}
    handler = make_handler(engine, models)
    inputs = endpoint_inputs(handler, control_image=control_image, prompt=prompt, negative_prompt=negative,
                             control_type=control_type, controlnet=controlnet, preprocess=preprocess, canny_low=low,
                             canny_high=high, control_scale=weight, control_start=start, control_end=end,
                             guess_mode=guess, model=model, **g.by_name(), steps=steps, scheduler=scheduler,
                             seed=seed, num_images=count, **stacked)
    handler = on_gpu(handler, models)  # spaces.GPU on ZeroGPU, else itself
    stoppable(stop, button.click(handler, inputs, [images, used, command], api_name="controlnet", **MODEL_EVENT))
