"""SD3's joint-attention view: per prompt token, the weight the image (latent patch) tokens put on that text token,
on the latent patch grid, recorded beside JointAttnProcessor2_0 so the image is the plain run's; and the PAG/SEG
layers an SD3 run takes when the request leaves them at their default."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.attention import generate_with_attention
from engine.errors import EngineError
from engine.generate import Engine
from engine.guiders import GuidanceSettings
from engine.pnginfo import parse_parameters
from engine.request import Request, command_for
from tests.tiny_models import save_sd3


@pytest.fixture(scope="module")
def sd3_folders(tmp_path_factory):
    return save_sd3(tmp_path_factory.mktemp("sd3-attention"))


@pytest.fixture(scope="module")
def engine():
    return Engine()


def request(folders, folder="sd3", **kw):
    args = dict(model=str(folders[folder]), prompt="a red circle left", negative_prompt="blue square", steps=3,
                seed=3, scheduler="flow-euler", guidance=GuidanceSettings("cfg", 6.0))
    return Request(**{**args, **kw})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


@pytest.mark.parametrize("folder, kw", [
    ("sd3", {}),  # CLIP and T5 tokens in the joint sequence
    ("sd3-no-t5", {}),  # CLIP tokens and T5's zeros
    ("sd3", dict(num_images=2, width=64, height=32)),  # a batch and a non-square patch grid
    ("sd3", dict(guidance=GuidanceSettings("pag", 4.0, pag_scale=2.0, pag_layers="blocks.0"))),  # [u, c, p] rows
])
def test_the_view_leaves_the_image_unchanged(engine, sd3_folders, folder, kw):
    req = request(sd3_folders, folder, **kw)
    result, maps = generate_with_attention(engine, req)
    plain = engine.generate(req)
    assert maps
    for with_view, without in zip(result.images, plain.images):  # the recorders' path: within one level
        assert np.abs(pixels(with_view).astype(int) - pixels(without).astype(int)).max() <= 1
    assert result.parameters == plain.parameters


@pytest.mark.parametrize("folder", ["sd3", "sd3-no-t5"])
def test_maps_are_one_per_prompt_token_on_the_patch_grid(engine, sd3_folders, folder):
    result, maps = generate_with_attention(engine, request(sd3_folders, folder, width=64, height=32))
    assert [token for token, _ in maps] == ["a", "red", "circle", "left"]  # the CLIP-L tokens, no start or end
    for _, weights in maps:
        assert weights.shape == (32 // 2 // 2, 64 // 2 // 2)  # the tiny VAE's factor 2, patches of 2: (h, w)
        assert np.isfinite(weights).all() and (weights >= 0).all()
        assert np.isclose(weights.max(), 1.0)


def test_maps_respond_to_the_prompt(engine, sd3_folders):
    _, maps = generate_with_attention(engine, request(sd3_folders))
    by_token = dict(maps)
    assert not np.allclose(by_token["red"], by_token["circle"])
    _, other = generate_with_attention(engine, request(sd3_folders, prompt="a blue square left"))
    assert not np.allclose(dict(other)["square"], by_token["circle"])


def test_the_view_reads_the_conditional_image_of_a_pag_run(engine, sd3_folders):
    """Rows marked for PAG's perturbed branch are skipped, whichever layers it perturbs: with no unconditional
    branch (scale 1) the maps are those of the conditional rows, as in a plain run at scale 1 with the same x_t at
    the first recorded step (one step, recorded)."""
    plain = request(sd3_folders, steps=1, guidance=GuidanceSettings("cfg", 1.0))
    _, want = generate_with_attention(engine, plain, last_steps=1)
    for layers in ("blocks.0", "blocks.1"):
        pag = replace(plain, guidance=GuidanceSettings("pag", 1.0, pag_scale=3.0, pag_layers=layers))
        _, got = generate_with_attention(engine, pag, last_steps=1)
        for (token, a), (_, b) in zip(want, got):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=token)


def test_a_class_model_has_no_prompt_tokens(engine, tiny_folders):
    req = Request(model=str(tiny_folders["dit"]), class_label="square", steps=2)
    with pytest.raises(EngineError, match=r"^Attention maps per prompt token need a text-to-image model"):
        generate_with_attention(engine, req)


@pytest.mark.parametrize("method, name", [("pag", "pag_layers"), ("seg", "seg_layers")])
def test_default_layers_on_sd3_are_blocks_1_and_written_down(engine, sd3_folders, method, name):
    req = request(sd3_folders, steps=2, guidance=GuidanceSettings(method, 4.0))
    assert req.guidance[name] == "mid"  # the guider's default, a UNet's middle block
    result = engine.generate(req)
    label = {"pag": "PAG layers", "seg": "SEG layers"}[method]
    assert parse_parameters(result.parameters[0])[label] == "blocks.1"
    assert result.request.guidance[name] == "blocks.1"
    assert f"--{name.replace('_', '-')} blocks.1" in command_for(result.request)
    explicit = engine.generate(replace(req, guidance=GuidanceSettings(method, 4.0, **{name: "blocks.1"})))
    assert np.array_equal(pixels(explicit.images[0]), pixels(result.images[0]))


def test_other_sd3_layers_and_unet_defaults_are_kept(engine, sd3_folders, tiny_folders):
    result = engine.generate(request(sd3_folders, steps=2, guidance=GuidanceSettings("pag", 4.0,
                                                                                    pag_layers="blocks.0")))
    assert parse_parameters(result.parameters[0])["PAG layers"] == "blocks.0"
    with pytest.raises(EngineError, match=r"^This model has no self-attention layer 'down_blocks.1'; it has: "
                                          r"transformer_blocks.0, transformer_blocks.1\.$"):
        engine.generate(request(sd3_folders, steps=2, guidance=GuidanceSettings("pag", 4.0, pag_layers="down.1")))
    sd = engine.generate(Request(model=str(tiny_folders["sd"]), prompt="a red circle", steps=2,
                                 guidance=GuidanceSettings("pag", 4.0)))
    assert parse_parameters(sd.parameters[0])["PAG layers"] == "mid"


@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
def test_recorded_weights_are_the_layers_own(qk_norm):
    """The weights the recorder reads, applied to the layer's values, give the image output JointAttnProcessor2_0
    computes: they are the layer's attention (SD3.5's query-key norms included)."""
    import torch
    from diffusers.models.attention import JointTransformerBlock

    from engine.attention import joint_weights

    torch.manual_seed(0)
    attn = JointTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8, context_pre_only=False,
                                 qk_norm=qk_norm).attn
    image, text = torch.randn(2, 12, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        want, _ = attn(hidden_states=image, encoder_hidden_states=text)
        probs = joint_weights(attn, image[1], text[1])  # (heads, N, N + M)
        values = torch.cat([attn.to_v(image[1]), attn.add_v_proj(text[1])]).view(-1, 2, 8).transpose(0, 1)
        got = attn.to_out[0]((probs @ values).transpose(0, 1).reshape(12, 16))
    torch.testing.assert_close(got, want[1], rtol=1e-4, atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 12))
