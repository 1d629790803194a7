"""Guidance Lab: `python app.py` serves the app (host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).

The engine is built once and shared by every tab; it runs all model work on a thread of its own, so the app
launches the ordinary Gradio way. On a ZeroGPU Space the generation handlers run under `spaces.GPU` and the engine
inline in them (ui/zerogpu.py); `--offload` keeps idle model parts on the CPU (automatic under 16 GB of GPU memory).
`--mcp` (or GRADIO_MCP_SERVER=True) also serves the generation endpoints to agents as MCP tools, each described by
its docstring. LAB_MODEL_DIR=<folder> points every tab at the model folders under it (the
tests' tiny models, or freshly trained ones) instead of the registry's names.
"""

from __future__ import annotations

import argparse

import gradio as gr

from engine.generate import Engine
from engine.guiders import GUIDERS, method_names, modifiers
from engine.models.loading import ModelStore
from ui import class_cond, compare, controlnet, fairness, text2img, zerogpu
from ui.inputs import LabBlocks
from ui.models import ModelChoices, choices_from_env
from ui.storage import process_storage

QUEUE_SIZE = 16  # waiting events beyond this are refused with "queue is full"
SESSIONS = 200  # client sessions whose state is kept; older ones are dropped (Gradio's default is 10,000)
MAX_FILE_SIZE = "10mb"  # an upload over this is refused in one sentence (HTTP 413) before it is written
SWEEP_S = 600  # Gradio's own sweep of its cache: every 10 minutes, files older than the storage's maximum age
TITLE = "Guidance Lab"
# Small model outputs (32-64 px) are enlarged without blurring, so pixels read as pixels.
CSS = """
#control-map img, #control-used img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#compare-grid img, #text2img-trajectory img, .gallery-item img, .thumbnail-item img { image-rendering: pixelated; }
"""
TABS = (("Text-to-image", text2img), ("Class-conditional", class_cond), ("ControlNet", controlnet),
        ("Compare", compare))


def intro() -> str:
    """The line under the title: what the lab shows, naming every registered guidance method and modifier
    (engine/guiders/), in menu order."""
    methods = [GUIDERS[name] for name in method_names()]
    named = ", ".join(cls.label if cls.guided else cls.menu_label() for cls in methods)
    wrapping = ", ".join(cls.label for cls in modifiers())
    return (f"How diffusion models are conditioned (text, class, spatial control) and guided, in pictures and "
            f"numbers. Methods: {named}; modifiers on any of them: {wrapping}; and classifier guidance.")


def create_app(engine: Engine | None = None, models: ModelChoices | None = None, *,
               allow_any_model: bool = False) -> gr.Blocks:
    """The Blocks app: one tab per module in ui/, all sharing one engine and one model-bound worker, its files in
    one folder of its own."""
    engine = engine or Engine(model_thread=not zerogpu.on_zerogpu())  # ZeroGPU forks its calls: no thread survives
    models = models or choices_from_env(engine.device.type == "cuda", allow_any_model)
    engine.model_root = models.root  # requests name the folders under LAB_MODEL_DIR as the dropdowns do
    engine.store.keep(models.default_specs())  # the tabs' defaults stay loaded whatever the memory budget
    zerogpu.load_defaults(engine, models)  # on ZeroGPU: the default models on CUDA at start-up
    storage = process_storage()  # uploads and outputs of the Blocks below go there
    with LabBlocks(title=TITLE, delete_cache=(SWEEP_S, int(storage.max_age_s))) as demo:
        gr.Markdown(f"# {TITLE}\n{intro()}")
        missing = models.missing()
        if missing:
            gr.Markdown("**Some default models are not available yet:** " + " ".join(missing), elem_id="missing")
        with gr.Tabs():
            for label, module in TABS:
                with gr.Tab(label, id=module.__name__.split(".")[-1]):
                    module.build(engine, models)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    fairness.install(demo)  # a run belongs to a client reading its stream; a job per session, a few per address
    demo.storage = storage
    return demo


def launch_options() -> dict:
    """launch() settings shared by `python app.py`, the tests and the benchmark."""
    return dict(theme=gr.themes.Soft(), css=CSS, show_error=True, state_session_capacity=SESSIONS,
                max_file_size=MAX_FILE_SIZE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve Guidance Lab.")
    parser.add_argument("--allow-any-model", action="store_true",
                        help="let requests name any local model folder or hub id, not only the offered models "
                             "(never on a public host)")
    parser.add_argument("--mcp", action="store_true",
                        help="also serve the generation endpoints as MCP tools at /gradio_api/mcp (the same as "
                             "GRADIO_MCP_SERVER=True)")
    parser.add_argument("--offload", action="store_true",
                        help="keep each pipeline's idle parts on the CPU (diffusers' model CPU offload); automatic on "
                             "GPUs under 16 GB")
    args = parser.parse_args(argv)
    mcp = {"mcp_server": True} if args.mcp else {}  # without the flag, Gradio reads GRADIO_MCP_SERVER itself
    engine = Engine(ModelStore(offload=args.offload or None), model_thread=not zerogpu.on_zerogpu())
    create_app(engine, allow_any_model=args.allow_any_model).launch(**launch_options(), **mcp)  # GRADIO_SERVER_*


if __name__ == "__main__":
    main()
