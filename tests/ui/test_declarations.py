"""Each tab names its inputs once: a generation event's components are its handler's parameters, in the handler's
order, and the page starts where the API does."""

import inspect
import math

import pytest

from ui.endpoint import endpoint_inputs, parameter_names

GENERATION = ("text2img", "text2img_submit", "class_cond", "controlnet", "compare")
SERVER_CHOSEN = {"steps", "classifier"}  # the page starts on the server's choice (LAB_STEPS, a classifier it has)


def _events(demo) -> dict:
    return {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in GENERATION}


def _same(value, default) -> bool:
    if isinstance(default, float) and isinstance(value, (int, float)):
        return math.isclose(value, default)
    return value == default


def test_every_generation_event_takes_its_handlers_parameters_in_order(lab_app):
    events = _events(lab_app[2])
    assert set(events) == set(GENERATION)
    for api_name, event in events.items():
        names = parameter_names(event.fn)
        assert len(names) == len(event.inputs), api_name
        parameters = inspect.signature(event.fn).parameters
        for name, component in zip(names, event.inputs):
            default = parameters[name].default
            if default is inspect.Parameter.empty or default is None or name in SERVER_CHOSEN:
                continue  # a required input, or one the server picks (the model, a stacked control's map)
            value = int(component.value) if name == "seed" else component.value  # the seed box holds digits
            assert _same(value, default), (api_name, name, value, default)


def test_the_api_publishes_the_handlers_parameter_names(client, lab_app):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for api_name, event in _events(lab_app[2]).items():
        if f"/{api_name}" in api:
            published = [p["parameter_name"] for p in api[f"/{api_name}"]["parameters"]]
            assert published == parameter_names(event.fn), api_name


def test_inputs_named_wrong_are_refused_when_the_page_is_built():
    def handler(prompt, seed=0, progress=None, request=None):
        return prompt, seed

    prompt, seed = object(), object()
    assert endpoint_inputs(handler, seed=seed, prompt=prompt) == [prompt, seed]
    with pytest.raises(ValueError, match=r"no component for \['seed'\]"):
        endpoint_inputs(handler, prompt=prompt)
    with pytest.raises(ValueError, match=r"no parameter for \['sead'\]"):
        endpoint_inputs(handler, prompt=prompt, seed=seed, sead=seed)


@pytest.fixture
def perturbing():
    """A throwaway guided method with a perturbed branch, registered for one test."""
    from engine.guiders import Guider, register, unregister

    @register
    class Nudge(Guider):
        name, label, perturbation = "nudge", "Nudge", True

        def guide(self, c, u, step):
            return c

    yield Nudge
    unregister("nudge")


def test_the_header_names_every_registered_method_and_modifier(lab_app, perturbing):
    import app
    from engine.guiders import GUIDERS, method_names, modifiers

    line = app.intro()
    assert all(GUIDERS[name].label in line for name in method_names()) and "Nudge" in line
    assert all(cls.label in line for cls in modifiers())
    page = [c["props"].get("value") or "" for c in lab_app[2].config["components"] if c["type"] == "markdown"]
    assert any(app.TITLE in text and "Methods: " in text for text in page)


def test_compare_presets_and_documentation_come_from_the_registry(perturbing):
    from engine.guiders import GUIDERS, method_names
    from engine.guiders.settings import compare_rows, parse_method_spec
    from ui.compare import ALL, FAMILIES, MORE_ROWS_EXAMPLE, make_handler, presets

    assert all(name in GUIDERS for _, names in FAMILIES for name in names or ())  # a renamed guider is caught
    found, rows = presets(), compare_rows()
    assert found[ALL] == list(rows) and all(set(labels) <= set(rows) for labels in found.values())
    perturbation = next(labels for title, labels in found.items() if title.startswith("Perturbation: "))
    assert perturbation == [GUIDERS[n].label for n in method_names() if GUIDERS[n].perturbation]
    assert "Nudge" in perturbation and "Perturbation: PAG / SEG / AutoGuidance / Nudge" in found
    doc = make_handler(None, None).__doc__
    assert all(label in doc for label in rows) and "{" not in doc
    for spec in MORE_ROWS_EXAMPLE.split(";"):
        parse_method_spec(spec)  # the example the page and the API give is one the app takes
