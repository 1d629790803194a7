"""The Space: README's front matter, the generation handlers under a stub `spaces.GPU` with a duration that grows
with the request, and nothing changed where `spaces` is absent."""

import functools
import inspect
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from engine.generate import Engine
from engine.models.registry import GPU_CONTROL_DEFAULTS, GPU_DEFAULTS, REGISTRY
from ui import zerogpu
from ui.models import ModelChoices, folder_choices

ROOT = Path(__file__).resolve().parents[2]
GPU_HANDLERS = ("text2img", "text2img_submit", "class_cond", "controlnet", "compare")


def front_matter() -> tuple[dict, list[str]]:
    """The README's YAML front matter and the lines of its visible body."""
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "the front matter must open the README"
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body.splitlines()


def pinned(name: str, path: Path) -> str:
    for line in path.read_text().splitlines():
        match = re.match(rf"{name}(\[[^\]]*\])?==([^\s#]+)", line.strip())
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned in {path.name}")


def test_front_matter_configures_the_space():
    meta, _ = front_matter()
    for key in ("title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "python_version",
                "suggested_hardware", "short_description", "models", "preload_from_hub"):
        assert key in meta, key
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    assert meta["sdk_version"] == pinned("gradio", ROOT / "requirements.txt") == pinned("gradio", ROOT / "constraints.txt")
    assert len(meta["short_description"]) <= 60
    colours = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
    assert meta["colorFrom"] in colours and meta["colorTo"] in colours
    assert re.fullmatch(r"3\.\d+(\.\d+)?", str(meta["python_version"]))


def test_front_matter_names_every_hub_model_and_preloads_the_gpu_defaults():
    meta, _ = front_matter()
    hub = {s.source for s in REGISTRY.values() if not s.offline}
    assert set(meta["models"]) == hub
    preloaded = {entry.split()[0] for entry in meta["preload_from_hub"]}
    defaults = {REGISTRY[n].source for n in [*GPU_DEFAULTS.values(), *GPU_CONTROL_DEFAULTS.values()]
                if not REGISTRY[n].offline}
    assert preloaded == defaults
    for entry in meta["preload_from_hub"]:  # "repo file,file,...": only what the engine loads, never whole repos
        parts = entry.split()
        assert len(parts) <= 2 and (len(parts) == 1 or all(f and " " not in f for f in parts[1].split(",")))


def test_readme_body_opens_with_the_two_fresh_machine_commands():
    _, body = front_matter()
    commands = [line.strip() for line in body[:12] if line.startswith("    python3 -m venv")]
    assert len(commands) == 2
    install = "pip install -r requirements.txt -c constraints.txt"
    assert commands[0].endswith(f"{install} && python app.py")
    assert commands[1].endswith(f"{install} && python -m pytest -q")
    assert f"{install} && python -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_readme_says_how_to_deploy_to_a_space():
    text = (ROOT / "docs" / "deploy.md").read_text()  # README links there
    section = text.split("## Deploying to a Hugging Face Space", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^\d\. ", section, flags=re.M)) == 3
    for model in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "facebook/DiT-XL-2-256"):
        assert model in section


class StubSpaces(types.ModuleType):
    """`spaces` as ZeroGPU has it: GPU(duration=...) wraps a function (a generator stays one) and records the
    duration it was given."""

    def __init__(self):
        super().__init__("spaces")
        self.wrapped = []

    def GPU(self, task=None, *, duration=None, size=None):
        def decorate(fn):
            if inspect.isgeneratorfunction(fn):
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    yield from fn(*args, **kwargs)
            else:
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    return fn(*args, **kwargs)
            wrapper.gpu_duration = duration
            self.wrapped.append(wrapper)
            return wrapper

        return decorate(task) if callable(task) else decorate


def _handlers(demo) -> dict:
    return {f.api_name: f.fn for f in demo.fns.values() if f.api_name in GPU_HANDLERS}


@pytest.fixture
def stub_spaces(monkeypatch):
    stub = StubSpaces()
    monkeypatch.setitem(sys.modules, "spaces", stub)
    return stub


def _app(tiny_root):
    import app

    return app.create_app(Engine(), folder_choices(tiny_root, steps=2))


def test_with_spaces_the_generation_handlers_run_under_gpu(stub_spaces, tiny_root):
    handlers = _handlers(_app(tiny_root))
    assert set(handlers) == set(GPU_HANDLERS)
    for name, fn in handlers.items():
        assert fn in stub_spaces.wrapped and callable(fn.gpu_duration), name
        assert inspect.isgeneratorfunction(fn), name  # Gradio still streams its previews
    assert handlers["text2img"] is handlers["text2img_submit"]


def test_duration_grows_with_steps_and_images(stub_spaces, tiny_root):
    handlers = _handlers(_app(tiny_root))
    text = handlers["text2img"].gpu_duration
    assert text("a red circle", steps=100) < text("a red circle", steps=200) < text("a red circle", steps=200,
                                                                                      num_images=4)
    assert zerogpu.MIN_S <= text("a red circle", steps=1) and text("x", steps=500, num_images=16) == zerogpu.MAX_S
    cls = handlers["class_cond"].gpu_duration
    assert cls("circle", steps=200) < cls("circle", steps=400) < cls("circle", steps=400, num_images=3)
    grid = handlers["compare"].gpu_duration
    assert grid("a circle", scales="1, 3", seeds=1, steps=50) < grid("a circle", scales="1, 3, 7.5, 15", seeds=3,
                                                                        steps=50)
    net = handlers["controlnet"].gpu_duration
    edges = {"path": "edges.png"}  # any control map: the duration counts it, the handler reads it
    assert net(edges, "a figure", steps=100) < net(edges, "a figure", steps=100, num_images=3)
    assert net(edges, "a figure", steps=100) > net(None, "a figure", steps=100)
    # Whatever a call holds, the duration is a number: the handler itself answers bad input with one sentence.
    assert text("x", steps="many") == zerogpu.MIN_S and text() == zerogpu.MIN_S


def test_duration_prices_bigger_models_higher():
    models = ModelChoices(["sd15", "sdxl", "sd35-medium"], ["dit-xl-2-256"], [])
    price = [zerogpu.estimate_seconds({"model": name, "steps": 100}, models) for name in models.text]
    assert price[0] < price[1] < price[2]


def test_without_spaces_the_handlers_are_the_plain_ones(monkeypatch, tiny_root):
    monkeypatch.setitem(sys.modules, "spaces", None)  # importing it fails, as where it is not installed
    handlers = _handlers(_app(tiny_root))
    assert set(handlers) == set(GPU_HANDLERS)
    assert not any(hasattr(fn, "gpu_duration") for fn in handlers.values())
    assert not zerogpu.on_zerogpu() and zerogpu.load_defaults(Engine(), folder_choices(tiny_root)) == []


def test_on_zerogpu_the_default_models_load_at_start_up(stub_spaces, monkeypatch, tiny_root):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zerogpu.on_zerogpu()
    engine = Engine(model_thread=False)
    models = folder_choices(tiny_root)
    loaded = zerogpu.load_defaults(engine, models)
    assert models.default("text") in loaded and models.default("class") in loaded and engine.store.loads >= 2
    assert engine.runner.thread is None  # inline: ZeroGPU's forked worker has no engine thread to wait for


def test_a_wrapped_endpoint_still_serves_the_api(stub_spaces, tiny_root):
    import app
    from gradio_client import Client

    demo = _app(tiny_root)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
    try:
        images, command, *_ = Client(url, verbose=False).predict("a red circle", steps=2, api_name="/text2img")
        assert len(images) == 1 and "--steps 2" in command
    finally:
        demo.close()
