"""`python -m engine generate | bench | threads`: the engine from the command line, with one-sentence errors."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .errors import EngineError, one_sentence
from .guiders import GuidanceSettings, Param, all_params, method_names
from .request import MAX_CONTROLS, MICRO_CONDITIONING, output_paths
from .models.schedulers import ALL_SCHEDULERS


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one sentence, no usage dump."""

    def error(self, message: str):
        raise EngineError(message[0].upper() + message[1:].rstrip(".") + ".")


def _number(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the {name} must be a number, not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"the {name} must be finite, not {text}")
        return value
    return parse


def _whole(name: str):
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the {name} must be a whole number, not {text!r}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Guidance Lab engine.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate images")
    gen.add_argument("--model", help="registry name, local diffusers folder or hub id")
    gen.add_argument("--prompt", default="")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--class", dest="class_label", help="class name or id (class-conditional models)")
    # Each --control* flag repeats, once per stacked control (at most MAX_CONTROLS), matched by position.
    gen.add_argument("--control", action="append", help="control image (or pose keypoint JSON file); repeat it, "
                     f"with the other --control flags, to stack up to {MAX_CONTROLS} controls")
    gen.add_argument("--control-type", action="append", choices=["canny", "scribble", "pose"])
    gen.add_argument("--controlnet", action="append", help="ControlNet name, folder or hub id ('auto': the type's "
                     "default)")
    gen.add_argument("--control-scale", action="append", type=_number("control scale"), help="default 1")
    gen.add_argument("--control-start", action="append", type=_number("control start"), help="default 0")
    gen.add_argument("--control-end", action="append", type=_number("control end"), help="default 1")
    gen.add_argument("--guess-mode", action="store_true")
    gen.add_argument("--canny-low", type=_whole("Canny low threshold"), default=100)
    gen.add_argument("--canny-high", type=_whole("Canny high threshold"), default=200)
    gen.add_argument("--guidance", choices=method_names(), default="cfg")
    gen.add_argument("--scale", type=_number("guidance scale"), help="guidance scale (default: the model's)")
    for param in all_params():
        _add_guidance_flag(gen, param)
    gen.add_argument("--classifier", help="noise-aware classifier name or folder")
    gen.add_argument("--classifier-scale", type=_number("classifier scale"), default=0.0)
    gen.add_argument("--steps", type=_whole("number of steps"), default=25)
    gen.add_argument("--scheduler", choices=list(ALL_SCHEDULERS),
                     help="default: the model's recommended one, else ddim (flow-euler for a flow-matching model, "
                     "such as SD3)")
    gen.add_argument("--seed", type=_whole("seed"), default=0)
    gen.add_argument("--height", type=_whole("height"))
    gen.add_argument("--width", type=_whole("width"))
    for name, flag, label, unit in MICRO_CONDITIONING:  # SDXL's size and crop conditioning
        meta = ("W", "H") if unit == "size" else ("X", "Y")
        gen.add_argument(flag, dest=name, nargs=2, type=_whole(label.lower()), metavar=meta,
                         help=f"SDXL: {label.lower()} conditioning (default: " +
                         ("the image size)" if unit == "size" else "0 0)"))
    gen.add_argument("--t5", action=argparse.BooleanOptionalAction, default=None,
                     help="SD3: --no-t5 drops the T5 text encoder (CLIP only); --t5 needs the model to have one")
    gen.add_argument("--num-images", type=_whole("number of images"), default=1,
                     help="images of seeds SEED, SEED+1, ...; each equals its single run within one level out of 255 "
                          "(the CPU's kernels sum a batch in a batch-dependent order)")
    gen.add_argument("--out", required=True, help="output PNG path")
    gen.add_argument("--offload", action="store_true", help="keep each pipeline's idle parts on the CPU (diffusers' "
                     "model CPU offload); automatic on GPUs under 16 GB")

    bench = sub.add_parser("bench", help="seconds per image, engine against the diffusers pipeline; --grid: the "
                           "default Compare grid against the machine's matmul peak")
    bench.add_argument("--grid", action="store_true", help="time the default Compare grid, with its UNet FLOPs, "
                       "GFLOP/s and roofline fraction")
    bench.add_argument("--guidance", action="append", metavar="METHOD", help="time this guidance method (repeat the "
                       "flag for several) against CFG, and its cost against what its branches explain")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="cuda: the published SD1.5, SDXL and SD3.5 Medium "
                       "architectures at their native sizes, random weights, engine against diffusers, peak memory")
    threads = sub.add_parser("threads", help="seconds per image on the engine's model thread, with a batch split "
                             "across cores and whole, then on the main thread and a worker thread")
    for parser_ in (bench, threads):
        parser_.add_argument("--model", help="text-to-image model (default: the project's own)")
        parser_.add_argument("--steps", type=_whole("number of steps"), default=25)
        parser_.add_argument("--runs", type=_whole("number of runs"), default=5)
        parser_.add_argument("--scale", type=_number("guidance scale"), default=5.0)
    return parser


def _add_guidance_flag(parser: argparse.ArgumentParser, param: Param) -> None:
    """A guider's declared parameter as a flag; None when not given, so a flag the method ignores is refused."""
    if param.kind == "text":
        parser.add_argument(param.flag, dest=param.name, help=f"{param.help} (default {param.default})")
        return
    parse = _whole(param.noun) if param.kind == "int" else _number(param.noun)
    default = param.text(param.default) if param.kind != "range" else f"{param.default[0]:g} {param.default[1]:g}"
    help_text = f"{param.help} (default {default}; {param.low:g} to {param.high:g})"
    if param.kind == "range":
        parser.add_argument(param.flag, dest=param.name, nargs=2, type=parse, metavar=("START", "END"), help=help_text)
    else:
        parser.add_argument(param.flag, dest=param.name, type=parse, help=help_text)


def guidance_from_args(args, scale: float) -> GuidanceSettings:
    """The guidance settings of the parsed flags; a flag the picked method does not take is refused."""
    values = {p.name: getattr(args, p.name) for p in all_params()}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return GuidanceSettings.from_values(args.guidance, scale, values, classifier_scale=args.classifier_scale,
                                        strict=True)


# The optional per-control flags: (dest, flag, default), each given once per --control or not at all.
CONTROL_KNOBS = (("controlnet", "--controlnet", None), ("control_scale", "--control-scale", 1.0),
                 ("control_start", "--control-start", 0.0), ("control_end", "--control-end", 1.0))


def controls_from_args(args, engine) -> "tuple[ControlSpec, ...]":
    """The ControlSpecs of the repeated --control flags, the i-th of each flag belonging to the i-th control."""
    from .control.prepare import prepare_control, read_image
    from .request import ControlSpec

    paths, types = args.control or [], args.control_type or []
    if len(paths) != len(types):
        raise EngineError(f"--control and --control-type go together, one --control-type per --control; got "
                          f"{len(paths)} --control and {len(types)} --control-type.")
    if len(paths) > MAX_CONTROLS:
        raise EngineError(f"At most {MAX_CONTROLS} controls can be stacked; the command gives {len(paths)}.")
    knobs = []
    for dest, flag, default in CONTROL_KNOBS:
        given = getattr(args, dest) or []
        if given and len(given) != len(paths):
            raise EngineError(f"Give {flag} once per --control or not at all; got {len(given)} for "
                              f"{len(paths)} --control.")
        knobs.append(given or [default] * len(paths))
    sources = []  # every file read before any model is loaded for its size
    for path, control_type in zip(map(Path, paths), types):
        if not path.is_file():
            raise EngineError(f"The control image '{path}' does not exist.")
        pose_json = control_type == "pose" and path.suffix.lower() == ".json"
        sources.append(path.read_text() if pose_json else read_image(path))
    size = (args.width, args.height)
    if paths and None in size:
        native = engine.native_size(args.model)
        size = (args.width or native[0], args.height or native[1])
    return tuple(ControlSpec(prepare_control(source, control_type, size=size, low=args.canny_low,
                                             high=args.canny_high),
                             control_type, None if net == "auto" else net, scale, start, end)
                 for source, control_type, net, scale, start, end in zip(sources, types, *knobs))


def request_from_args(args, engine) -> "Request":
    from dataclasses import replace

    from .request import Request

    out = Path(args.out)
    if not out.parent.is_dir():
        raise EngineError(f"The output folder '{out.parent}' does not exist.")
    if out.suffix.lower() != ".png":
        raise EngineError(f"The output must be a .png file, not '{out.name}'.")
    controls = controls_from_args(args, engine)
    guidance = guidance_from_args(args, 1.0)
    req = Request(model=args.model, prompt=args.prompt, negative_prompt=args.negative_prompt,
                  class_label=args.class_label, controls=controls, guess_mode=args.guess_mode, guidance=guidance,
                  classifier=args.classifier, steps=args.steps, scheduler=args.scheduler or "ddim", seed=args.seed,
                  height=args.height, width=args.width, num_images=args.num_images, t5=args.t5,
                  **{name: tuple(getattr(args, name)) for name, *_ in MICRO_CONDITIONING
                     if getattr(args, name) is not None})
    scale = args.scale if args.scale is not None else engine.model_spec(req).default_scale
    scheduler = args.scheduler or engine.default_scheduler(req)
    return replace(req, guidance=guidance_from_args(args, scale), scheduler=scheduler)


def run_generate(args) -> int:
    from .generate import Engine
    from .pnginfo import save_png

    from .models.loading import ModelStore

    engine = Engine(ModelStore(offload=args.offload or None))
    if os.environ.get("LAB_MODEL_DIR"):  # as the app does: the folders under it by their names there
        engine.model_root = Path(os.environ["LAB_MODEL_DIR"])
    req = request_from_args(args, engine)
    result = engine.generate(req)
    for image, params, path in zip(result.images, result.parameters, output_paths(Path(args.out), result.seeds)):
        save_png(image, path, params)
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return one_sentence(lambda: _run(build_parser().parse_args(sys.argv[1:] if argv is None else argv)))


def _run(args) -> int:
    if args.command == "bench" and args.guidance:
        from .bench import run_guidance
        return run_guidance(model=args.model, steps=args.steps, runs=args.runs, scale=args.scale,
                            methods=args.guidance)
    if args.command == "bench" and args.device == "cuda":
        from .bench import run_architectures
        run_architectures(device="cuda", steps=args.steps, runs=args.runs)
        return 0
    if args.command == "bench" and args.grid:
        from .bench import run_grid
        run_grid(model=args.model, steps=args.steps, runs=args.runs)
        return 0
    if args.command in ("bench", "threads"):
        from .bench import run_bench, run_threads
        run = run_bench if args.command == "bench" else run_threads
        return run(model=args.model, steps=args.steps, runs=args.runs, scale=args.scale)
    return run_generate(args)
