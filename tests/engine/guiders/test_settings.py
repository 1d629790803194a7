"""GuidanceSettings: declared parameters with defaults, one-sentence checks, the record and the Compare rows."""

import math

import pytest

from engine.errors import EngineError
from engine.guiders import GuidanceSettings, all_params, method_names
from engine.guiders.settings import compare_rows, parse_method_spec, split_method_specs


def test_methods_and_parameters_keep_their_published_names():
    published = ["none", "cfg", "perp-cfg", "apg", "cfg-zero-star"]
    assert [n for n in method_names() if n in published] == published  # in menu order, among the newer ones
    names = [n for p in all_params() for n in p.api_names]
    for name in ("eta", "momentum", "norm_threshold", "rescale", "interval_start", "interval_end"):
        assert name in names


def test_defaults_filled_and_unknown_parameters_refused():
    s = GuidanceSettings("apg", 5.0, momentum=-0.5)
    assert s["eta"] == 0.0 and s["momentum"] == -0.5 and s["norm_threshold"] == 0.0 and s["interval"] == (0.0, 1.0)
    with pytest.raises(EngineError, match="takes no parameter 'momentum'"):
        GuidanceSettings("cfg", 5.0, momentum=-0.5)
    assert "rescale" not in GuidanceSettings("none", 5.0).values  # modifiers only wrap guided methods


@pytest.mark.parametrize("settings, match", [
    (GuidanceSettings("magic", 3.0), "Unknown guidance 'magic'"),
    (GuidanceSettings("perp-cfg", 3.0, eta=2.0), "guidance eta must lie between 0 and 1"),
    (GuidanceSettings("apg", 3.0, momentum=math.nan), "APG momentum must be a finite number"),
    (GuidanceSettings("cfg", 3.0, interval=(0.8, 0.2)), "start before it ends"),
    (GuidanceSettings("cfg-zero-star", 3.0, zero_init_steps=1.5), "whole number"),
])
def test_checks_are_one_sentence(settings, match):
    with pytest.raises(EngineError, match=match):
        settings.check()


def test_strict_values_refuse_a_parameter_the_method_ignores():
    with pytest.raises(EngineError, match="--momentum belongs to apg"):
        GuidanceSettings.from_values("cfg", 5.0, {"momentum": -0.5}, strict=True)
    s = GuidanceSettings.from_values("cfg", 5.0, {"momentum": -0.5, "rescale": 0.7})  # the UI's hidden controls
    assert s == GuidanceSettings("cfg", 5.0, rescale=0.7)


def test_fields_show_method_parameters_always_and_modifiers_when_they_act():
    labels = lambda s: [p.label for p, _ in s.fields()]  # noqa: E731
    assert labels(GuidanceSettings("apg", 5.0)) == ["Guidance eta", "APG momentum", "APG norm threshold",
                                                    "APG norm threshold (per SDXL-size latent)"]
    assert labels(GuidanceSettings("cfg", 5.0)) == []
    assert labels(GuidanceSettings("cfg", 5.0, rescale=0.7, interval=(0.2, 1.0))) == ["Guidance rescale",
                                                                                     "Guidance interval"]
    assert [p.name for p, _ in GuidanceSettings("apg", 5.0, momentum=-0.5).cli_fields()] == ["momentum"]


def test_replace_and_equality():
    s = GuidanceSettings("apg", 5.0, momentum=-0.5)
    assert s.replace(scale=(1.0, 3.0)).scales == (1.0, 3.0) and s.replace(scale=(1.0, 3.0))["momentum"] == -0.5
    assert s.replace(method="cfg") == GuidanceSettings("cfg", 5.0)
    assert hash(s) == hash(GuidanceSettings("apg", 5.0, momentum=-0.5))


def test_compare_rows_keep_their_labels():
    rows = compare_rows()
    assert {"CFG", "Perp-CFG", "APG", "CFG + rescale", "CFG-Zero*"} <= set(rows)
    assert rows["APG"]["momentum"] == -0.5 and rows["CFG + rescale"] == GuidanceSettings("cfg", 1.0, rescale=0.7)


def test_method_specs_parse_through_the_declared_checks():
    assert parse_method_spec("apg:eta=0:momentum=-0.5") == ("apg:eta=0:momentum=-0.5",
                                                            GuidanceSettings("apg", 1.0, eta=0.0, momentum=-0.5))
    label, pag = parse_method_spec(" PAG:pag-layers=mid,up.0:pag_scale=3 ")
    assert label == "pag:pag_scale=3:pag_layers=mid,up.0" and pag == GuidanceSettings("pag", 1.0,
                                                                                        pag_layers="mid,up.0")
    assert parse_method_spec("perp_cfg")[1] == GuidanceSettings("perp-cfg", 1.0)  # '-' and '_' alike
    assert parse_method_spec("cfg:interval=0.2-0.8:rescale=0.7")[1]["interval"] == (0.2, 0.8)
    assert parse_method_spec("cfg-zero-star:zero_init_steps=2")[1]["zero_init_steps"] == 2
    assert parse_method_spec("apg")[1]["momentum"] == 0.0  # the declared (CLI) default, not the UI's start


@pytest.mark.parametrize("spec, match", [
    ("magic:eta=0", "Unknown guidance 'magic'; choose one of none, cfg"),
    ("apg:gamma=1", "'apg' takes no parameter 'gamma'; it takes: eta, momentum"),
    ("cfg:eta=0", "'cfg' takes no parameter 'eta'"),
    ("apg:eta", "as name=value"),
    ("apg:eta=lots", "guidance eta in 'apg:eta=lots' must be a number"),
    ("apg:eta=2", "guidance eta must lie between 0 and 1"),
    ("apg:eta=nan", "finite number"),
    ("apg:eta=0:eta=1", "given twice"),
    ("cfg:interval=0.8-0.2", "start before it ends"),
    ("cfg-zero-star:zero_init_steps=1.5", "whole number"),
    ("pag:pag_layers=../etc", "PAG layers is written like 'mid'"),
    ("", "spec is empty"),
    ("apg:" + "eta=0:" * 100, "at most 300 characters"),
])
def test_method_spec_errors_are_one_sentence(spec, match):
    with pytest.raises(EngineError, match=match):
        parse_method_spec(spec)


def test_a_comma_list_of_specs_keeps_a_comma_inside_a_text_value():
    assert split_method_specs("cfg, apg:eta=0,perp_cfg") == ["cfg", "apg:eta=0", "perp_cfg"]
    assert split_method_specs("cfg,pag:pag_layers=mid,up.0,perp-cfg") == ["cfg", "pag:pag_layers=mid,up.0",
                                                                          "perp-cfg"]
    assert split_method_specs("cfg,perp-cgf,") == ["cfg", "perp-cgf"]  # an unknown name stays a spec of its own
    assert split_method_specs(" , ") == []
