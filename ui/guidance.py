"""Guidance as the endpoints take it and the page shows it, generated from the guider registry (engine/guiders/): the
method menu, the scale, one control per declared parameter, the API's parameter names and defaults, and the
GuidanceSettings read from an endpoint's values. A new guider appears here with no edit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine.guiders import GUIDERS, GuidanceSettings, Param, all_params, method_names
from engine.guiders.registry import owners

from .values import number, text

DEFAULT_METHOD = GuidanceSettings().method  # the engine's default method, which every menu starts on
# The guidance parameters the API published before they were generated from the guiders, in their positional
# order; parameters of later guiders follow each endpoint's other parameters, so positional calls keep working.
POSITIONAL_GUIDANCE = ("eta", "momentum", "norm_threshold", "rescale", "interval_start", "interval_end")


def guidance_settings(values: dict[str, Any], classifier_scale: float = 0.0) -> GuidanceSettings:
    """GuidanceSettings from an endpoint's values: the picked method's own parameters and the modifiers' are
    taken (each checked against its declared range), the other methods' controls ignored."""
    method = text("guidance method", values.get("guidance", DEFAULT_METHOD))
    params = {}
    for param in all_params():
        names = param.api_names
        if all(n in values for n in names):
            raw = tuple(values[n] for n in names) if param.kind == "range" else values[names[0]]
            params[param.name] = raw
    wanted = {p.name: p for p in GuidanceSettings.declared_for(method)}
    checked = {name: wanted[name].check(value) for name, value in params.items() if name in wanted}
    return GuidanceSettings.from_values(method, number("guidance scale", values.get("scale")), checked,
                                        classifier_scale=classifier_scale)


def guidance_api(default_scale: float) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """(name, default) of the guidance parameters an endpoint takes: those in the published positional order,
    and those of later guiders, which go after the endpoint's other parameters."""
    defaults = {"guidance": DEFAULT_METHOD, "scale": default_scale}
    for param in all_params():
        start = param.start_value
        defaults.update(zip(param.api_names, start) if param.kind == "range" else [(param.name, start)])
    leading = ["guidance", "scale", *(n for n in POSITIONAL_GUIDANCE if n in defaults)]
    return ([(n, defaults[n]) for n in leading],
            [(n, v) for n, v in defaults.items() if n not in leading])


@dataclass
class GuidanceControls:
    """The guidance method picker, its scale, and one control per declared guider parameter (by API name); only
    the picked method's own parameters and, for guided methods, the modifiers' are visible."""

    method: gr.Dropdown
    scale: gr.Slider
    params: dict[str, gr.components.Component]

    def by_name(self) -> dict[str, gr.components.Component]:
        """Every guidance component by its API name (see guidance_api)."""
        return {"guidance": self.method, "scale": self.scale, **self.params}


def method_choices() -> list[tuple[str, str]]:
    """(menu label, name) of every registered guidance method, in menu order."""
    return [(GUIDERS[name].menu_label(), name) for name in method_names()]


def _visible_for(names: list[str]):
    def visible(method: str):
        shown = {n for p in GuidanceSettings.declared_for(method) for n in p.api_names}
        return tuple(gr.update(visible=n in shown) for n in names)

    return visible


def _param_controls(param: Param, visible: bool) -> dict[str, gr.components.Component]:
    low, high = param.ui_range or (param.low, param.high)
    step = 1 if param.kind == "int" else param.step
    if param.kind == "text":
        return {param.name: gr.Textbox(param.start_value, label=param.label, info=param.help or None, max_lines=1,
                                       max_length=200, visible=visible)}
    if param.kind != "range":
        return {param.name: gr.Slider(low, high, value=param.start_value, step=step, label=param.label,
                                      info=param.help or None, visible=visible)}
    with gr.Row():
        return {name: gr.Slider(low, high, value=value, step=step, label=f"{param.label}: {part}",
                                info=param.help if part == "start" else None, visible=visible)
                for name, value, part in zip(param.api_names, param.start_value, ("start", "end"))}


def guidance_controls(prefix: str, default_scale: float) -> GuidanceControls:
    """Method, scale, and an accordion with every guider's declared parameters."""
    method = gr.Dropdown(method_choices(), value=DEFAULT_METHOD, label="Guidance method")
    scale = gr.Slider(0, 50, value=default_scale, step=0.5, label="Guidance scale",
                      info="1 = conditional only; larger follows the prompt harder")
    shown = {p.name for p in GuidanceSettings.declared_for(DEFAULT_METHOD)}
    params: dict[str, gr.components.Component] = {}
    with gr.Accordion("Guidance settings", open=False):
        for param in all_params():
            params.update(_param_controls(param, param.name in shown))
    names = list(params)
    method.change(_visible_for(names), method, [params[n] for n in names], api_name=f"{prefix}_guidance_fields",
                  queue=False, api_visibility="undocumented")
    return GuidanceControls(method, scale, params)


def describe(name: str) -> str | None:
    """What the guidance API parameter `name` means, from its guider's declaration (None for any other name): the
    line an endpoint's docstring gives it."""
    if name == "guidance":
        return "Guidance method: " + ", ".join(method_names()) + "."
    for param in all_params():
        if name in param.api_names:
            mine = [GUIDERS[m].label for m in owners(param.name) if m in GUIDERS]
            owners_ = ", ".join(mine) or "every guided method"
            span = "" if param.kind == "text" else f" ({param.low:g} to {param.high:g})"
            return f"{param.label}{span}, for {owners_}: {param.help}."
    return None
