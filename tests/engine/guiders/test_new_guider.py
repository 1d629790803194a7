"""Adding a guidance method is one file: a throwaway guider registered here, with no other edit, appears in the
CLI's help and flags, the checks, the PNG text, the reproduce command, the UI's method list, the endpoints'
parameters and the Compare rows, and it runs through the engine."""

import numpy as np
import pytest

from engine.cli import build_parser
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import Guider, GuidanceSettings, Param, register, unregister
from engine.guiders.settings import compare_rows
from engine.request import Request, check_request, command_for, png_parameters


@pytest.fixture
def throwaway():
    @register
    class Halfway(Guider):
        """Halfway between CFG and the conditional prediction, for this test only."""

        name = "halfway"
        label = "Halfway"
        paper = "this test"
        params = (Param("halfway_mix", 0.5, 0.0, 1.0, "Halfway mix", "how far toward CFG"),)

        def guide(self, c, u, step):  # CFG at a scale moved toward 1: at mix 1 CFG's own arithmetic
            return u + (1 + self.values["halfway_mix"] * (self.scale_like(c) - 1)) * (c - u)

    yield Halfway
    unregister("halfway")


def test_cli_help_and_flags(throwaway):
    parser = build_parser()
    gen = parser._subparsers._group_actions[0].choices["generate"]
    help_text = gen.format_help()
    assert "halfway" in help_text and "--halfway-mix" in help_text
    args = parser.parse_args(["generate", "--prompt", "a", "--guidance", "halfway", "--halfway-mix", "0.25",
                              "--out", "x.png"])
    assert args.guidance == "halfway" and args.halfway_mix == 0.25


def test_checks_png_text_and_reproduce_command(throwaway):
    req = Request(model="lab-sd", prompt="a red circle", guidance=GuidanceSettings("halfway", 4.0, halfway_mix=0.25))
    check_request(req)
    with pytest.raises(EngineError, match="halfway mix must lie between 0 and 1"):
        check_request(Request(prompt="a", guidance=GuidanceSettings("halfway", 4.0, halfway_mix=3.0)))
    assert "Guidance: halfway, Halfway mix: 0.25" in png_parameters(req, "lab-sd", [], 0, (64, 64))
    assert "--guidance halfway --scale 4 --halfway-mix 0.25" in command_for(req)
    assert "Halfway" in compare_rows()


def test_ui_method_list_and_endpoint_parameters(throwaway, tiny_root):
    import app
    from ui.models import folder_choices

    demo = app.create_app(Engine(), folder_choices(tiny_root, steps=2))
    menus = [c["props"] for c in demo.config["components"] if c["props"].get("label") == "Guidance method"]
    assert menus and all(["Halfway", "halfway"] in [list(x) for x in m["choices"]] for m in menus)
    sliders = [c["props"] for c in demo.config["components"] if c["props"].get("label") == "Halfway mix"]
    assert len(sliders) == 2  # text-to-image and ControlNet
    info = demo.get_api_info()["named_endpoints"]
    for endpoint in ("/text2img", "/controlnet"):
        assert "halfway_mix" in [p["parameter_name"] for p in info[endpoint]["parameters"]]
    rows = [c["props"] for c in demo.config["components"] if c["props"].get("label") == "Rows: guidance methods"]
    assert ["Halfway", "Halfway"] in [list(x) for x in rows[0]["choices"]]


def test_it_runs_through_the_engine(throwaway, tiny_folders):
    engine = Engine()
    base = dict(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2, seed=3)
    halfway = lambda mix: GuidanceSettings("halfway", 6.0, halfway_mix=mix)  # noqa: E731
    images = {mix: engine.generate(Request(**base, guidance=halfway(mix))).images[0] for mix in (0.0, 1.0)}
    cfg = engine.generate(Request(**base, guidance=GuidanceSettings("cfg", 6.0))).images[0]
    cond = engine.generate(Request(**base, guidance=GuidanceSettings("cfg", 1.0))).images[0]
    assert images[1.0].tobytes() == cfg.tobytes()  # the same batch of two, the same arithmetic
    # Mix 0 is the conditional prediction, but scale 1 runs that branch alone, a batch of one: a batch's images equal
    # their single runs within one level (docs/reliability.md), as the CPU's kernels sum a batch in its own order.
    gap = np.abs(np.asarray(images[0.0], dtype=int) - np.asarray(cond, dtype=int))
    assert gap.max() <= 1 and (gap > 0).mean() < 0.01
    assert np.abs(np.asarray(cfg, dtype=int) - np.asarray(cond, dtype=int)).max() > 3  # the mix matters (about 10)
