"""Guidance Lab: `python app.py` serves the app (host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).

The engine is built once and shared by every tab; it runs all model work on a thread of its own, so the app
launches the ordinary Gradio way. LAB_MODEL_DIR=<folder> points every tab at the model folders under it (the
tests' tiny models, or freshly trained ones) instead of the registry's names.
"""

from __future__ import annotations

import gradio as gr

from engine.generate import Engine
from ui import class_cond, compare, controlnet, text2img
from ui.models import ModelChoices, choices_from_env
from ui.shared import OUTPUT_DIR

QUEUE_SIZE = 16  # waiting events beyond this are refused with "queue is full"
TITLE = "Guidance Lab"
INTRO = ("How diffusion models are conditioned (text, class, spatial control) and guided (CFG, Perp-CFG, APG, "
         "CFG-Zero*, rescale, intervals, classifier guidance), in pictures and numbers.")
# Small model outputs (32-64 px) are enlarged without blurring, so pixels read as pixels.
CSS = """
#control-map img, #control-used img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#compare-grid img, #text2img-trajectory img, .gallery-item img, .thumbnail-item img { image-rendering: pixelated; }
"""
TABS = (("Text-to-image", text2img), ("Class-conditional", class_cond), ("ControlNet", controlnet),
        ("Compare", compare))


def create_app(engine: Engine | None = None, models: ModelChoices | None = None) -> gr.Blocks:
    """The Blocks app: one tab per module in ui/, all sharing one engine and one model-bound worker."""
    engine = engine or Engine()
    models = models or choices_from_env(engine.device.type == "cuda")
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        missing = models.missing()
        if missing:
            gr.Markdown("**Some default models are not available yet:** " + " ".join(missing), elem_id="missing")
        with gr.Tabs():
            for label, module in TABS:
                with gr.Tab(label, id=module.__name__.split(".")[-1]):
                    module.build(engine, models)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return demo


def launch_options() -> dict:
    """launch() settings shared by `python app.py`, the tests and the benchmark."""
    return dict(theme=gr.themes.Soft(), css=CSS, show_error=True, allowed_paths=[str(OUTPUT_DIR)])


def main() -> None:
    create_app().launch(**launch_options())  # Gradio reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT itself


if __name__ == "__main__":
    main()
