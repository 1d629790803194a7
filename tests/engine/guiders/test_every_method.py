"""Every registered method, with a non-default value for each of its parameters, survives the round trip the lab
promises: reproduce command -> CLI flags -> the same settings, and its PNG text names each value."""

import shlex

import pytest

from engine.cli import build_parser, guidance_from_args
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
