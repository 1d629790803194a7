"""Adding a perturbation guider is one file too: a throwaway guider registered here, with an attention perturbation
of its own (chosen self-attention layers skipped: each passes its input on), declares its branch and nothing else;
it appears in the CLI and the PNG text like any guider, the engine installs its processors for the run and takes
them off after, keeps it off the shared model's side-by-side runs, gives it SD3's default layers, and its branch
changes the picture."""

from dataclasses import dataclass, replace

import pytest
import torch

from engine.cli import build_parser
from engine.generate import Engine, _leaves_model_as_is
from engine.guiders import GuidanceSettings, Param, register, unregister
from engine.guiders.branch import AttentionBranch
from engine.guiders.cfg import CFG
from engine.guiders.pag import pag
from engine.guiders.perturb import LAYER_PATTERN, AttentionPerturbation
from engine.guiders.settings import compare_rows
from engine.request import Request, check_request, command_for, evals_per_step, png_parameters
from tests.engine.test_exactness import TOLERANCE, level_diff


@dataclass(frozen=True)
class SkipAttention(AttentionPerturbation):
    """The chosen layers pass their (normed) input on, as if their attention were skipped."""

    def attend(self, attn, hidden_states, temb=None):
        return hidden_states


@pytest.fixture
def skip_guider():
    skip_layers = Param("skip_layers", "mid", 0, 0, "Skip layers", "self-attention layers skipped", kind="text",
                        pattern=LAYER_PATTERN)

    @register
    class SkipGuidance(CFG, name="skip", label="Skip", paper="this test", order=95,
                       params=(Param("skip_scale", 2.0, 0.0, 20.0, "Skip scale", "weight away from the skip"),
                               skip_layers)):
        """CFG (its steps without the branch) plus PAG's push away from the model with some attention layers
        skipped, for this test only."""

        branch = classmethod(lambda cls, values: AttentionBranch(
            cls.label, SkipAttention("skip", values["skip_layers"]), skip_layers))
        perturbs = classmethod(lambda cls, values, scales: values["skip_scale"] != 0)

        def guide_perturbed(self, c, u, p, step):
            return pag(c, u, p, self.scale_like(c), self.values["skip_scale"])

    yield SkipGuidance
    unregister("skip")


def request(folder, guidance, **kw):
    return Request(model=str(folder), prompt="a red circle", negative_prompt="blue square", steps=3, seed=3,
                   guidance=guidance, **kw)


def test_cli_png_text_and_reproduce_command(skip_guider):
    gen = build_parser()._subparsers._group_actions[0].choices["generate"]
    assert "--skip-scale" in gen.format_help() and "--skip-layers" in gen.format_help()
    args = build_parser().parse_args(["generate", "--prompt", "a", "--guidance", "skip", "--skip-layers", "up.0",
                                      "--out", "x.png"])
    assert args.guidance == "skip" and args.skip_layers == "up.0"
    req = Request(model="lab-sd", prompt="a", guidance=GuidanceSettings("skip", 4.0, skip_scale=3.0,
                                                                       skip_layers="down.1"))
    check_request(req)
    assert "Guidance: skip, Skip scale: 3, Skip layers: down.1" in png_parameters(req, "lab-sd", [], 0, (64, 64))
    assert "--guidance skip --scale 4 --skip-scale 3 --skip-layers down.1" in command_for(req)
    assert "Skip" in compare_rows() and skip_guider.perturbation  # listed with the perturbation methods
    assert evals_per_step(req) == 3  # c, u and the skipped branch
    assert GuidanceSettings("skip", 4.0, skip_scale=0.0).branch is None  # scale 0: no branch at all
    assert GuidanceSettings("skip", 4.0).for_family("sd3")["skip_layers"] == "blocks.1"  # SD3 has no `mid`
    assert not _leaves_model_as_is(req)  # its processors wrap the shared model for the run: not side by side


def test_it_runs_through_the_engine_and_changes_the_picture(skip_guider, tiny_folders):
    engine = Engine()
    unet = engine.loaded(engine.resolve(str(tiny_folders["sd"]), "text")).unet
    before = dict(unet.attn_processors)
    seen = []

    def watch(info):
        seen.append({type(p).__name__ for p in unet.attn_processors.values()})

    cfg = engine.generate(request(tiny_folders["sd"], GuidanceSettings("cfg", 5.0))).images[0]
    off = engine.generate(request(tiny_folders["sd"], GuidanceSettings("skip", 5.0, skip_scale=0.0))).images[0]
    assert level_diff(off, cfg) == 0  # no branch: the same batch and arithmetic as CFG
    skipped = request(tiny_folders["sd"], GuidanceSettings("skip", 5.0, skip_scale=4.0, skip_layers="mid,up.0"))
    result = engine.generate(skipped, callback=watch)
    assert level_diff(result.images[0], cfg) > 2 * TOLERANCE  # the skipped branch changed the picture
    assert seen and all(names == {"PerturbableProcessor"} for names in seen)  # installed for the run
    assert dict(unet.attn_processors) == before  # and taken off after it
    assert 'Skip layers: "mid,up.0"' in result.parameters[0]  # the PNG text quotes a value with commas
    other = engine.generate(replace(skipped, guidance=skipped.guidance.replace(skip_layers="down.1"))).images[0]
    assert level_diff(other, result.images[0]) > 0  # the layers it skips matter


def test_the_perturbation_is_what_it_says(skip_guider, tiny_folders):
    """In the chosen layer, the marked rows come out as the layer's input; the other rows are the layer's own."""
    from diffusers import UNet2DConditionModel

    from engine.guiders.perturb import perturbed_attention

    unet = UNet2DConditionModel.from_pretrained(tiny_folders["sd"] / "unet")
    layer = unet.mid_block.attentions[0].transformer_blocks[0].attn1
    x = torch.randn(2, 16, layer.query_dim, generator=torch.Generator().manual_seed(0))
    own = layer(x)
    with perturbed_attention(unet, SkipAttention("skip", "mid")):
        marked = layer(x, perturb=torch.tensor([False, True]))
    torch.testing.assert_close(marked[1], x[1])
    torch.testing.assert_close(marked[0], own[0], rtol=1e-5, atol=1e-5)
