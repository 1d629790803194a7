"""Guidance Lab: `python app.py` serves the app (host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).

The engine is built once and shared by every tab. LAB_MODEL_DIR=<folder> points every tab at the model folders
under it (the tests' tiny models, or freshly trained ones) instead of the registry's names.
"""

from __future__ import annotations

import os
import threading

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


def serve(engine: Engine, demo: gr.Blocks, stop: threading.Event | None = None, on_ready=None, **launch) -> None:
    """Start the server, then run every generation on this (the main) thread until `stop` or an interrupt: model
    work from the server's worker threads is several times slower on a CPU (engine/runner.py, `python -m engine
    threads`). `on_ready(url)` runs on a thread of its own once the runner serves (the benchmark's client)."""
    _, url, _ = demo.launch(prevent_thread_lock=True, **launch, **launch_options())
    if on_ready is not None:
        threading.Thread(target=lambda: engine.runner.wait_serving() and on_ready(url), daemon=True).start()
    try:
        engine.runner.serve(stop)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()


def main() -> None:
    engine = Engine()
    serve(engine, create_app(engine), server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
          server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


if __name__ == "__main__":
    main()
