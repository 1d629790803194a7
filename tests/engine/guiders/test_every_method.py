"""Every registered method, with a non-default value for each of its parameters, survives the round trip the lab
promises: reproduce command -> CLI flags -> the same settings, and its PNG text names each value."""

import shlex

import numpy as np
import pytest

from engine.cli import build_parser, guidance_from_args
from engine.generate import Engine
from engine.guiders import GUIDERS, GuidanceSettings, method_names
from engine.request import Request, command_for, png_parameters


def changed(param):
    """A legal value other than the default, in the parameter's kind."""
    if param.kind == "text":
        return "mid,up.0" if param.default == "mid" else param.default
    if param.kind == "range":
        return (0.25, 0.75)
    low, high = param.low, min(param.high, param.low + 10)
    value = low + (high - low) * 0.3
    value = round(value) if param.kind == "int" else round(value, 2)
    return value if value != param.default else high


@pytest.mark.parametrize("method", method_names())
def test_reproduce_command_parses_back_to_the_same_settings(method):
    own = {p.name: changed(p) for p in GUIDERS[method].params}
    settings = GuidanceSettings(method, 4.0, **own)
    settings.check()
    req = Request(model="lab-sd", prompt="a red circle", guidance=settings)
    command = shlex.split(command_for(req))
    args = build_parser().parse_args(command[3:] + ["--out", "x.png"])
    assert guidance_from_args(args, args.scale) == settings
    text = png_parameters(req, "lab-sd", [], 0, (64, 64))
    assert f"Guidance: {method}" in text
    for param in GUIDERS[method].params:
        value = param.text(own[param.name])
        shown = f'"{value}"' if "," in value else value  # A1111's PNG text quotes a value holding a comma
        assert f"{param.label}: {shown}" in text


@pytest.mark.parametrize("method", ["tcfg", "mambo", "pag"])
def test_per_image_scales_in_one_run_equal_separate_runs(tiny_folders, method):
    """As a Compare row runs: one batch, one seed, a scale per image."""
    engine = Engine()
    base = dict(model=str(tiny_folders["sd"]), prompt="a red circle", steps=3)
    scales = (1.0, 3.0, 7.5)
    row = engine.generate(Request(**base, num_images=3, image_seeds=(4, 4, 4),
                                  guidance=GuidanceSettings(method, scales))).images
    for scale, image in zip(scales, row):
        single = engine.generate(Request(**base, seed=4, guidance=GuidanceSettings(method, scale))).images[0]
        assert np.abs(np.asarray(image).astype(int) - np.asarray(single).astype(int)).max() <= 1
