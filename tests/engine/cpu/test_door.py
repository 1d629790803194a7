"""The one door to the CPU speed work: what a store's CpuPath installs on a loaded model, and the switches that
leave pieces out (LAB_CPU_LOOPS, LAB_CPU_OFF)."""

import torch

from engine.cpu import CpuPath, loops_wanted, pieces_off
from engine.cpu.attention import SmallHeadAttnProcessor
from engine.cpu.graph import GraphForward
from engine.cpu.parallel import SplitForward
from tests.tiny_models import tiny_sd


def test_the_switches_read_the_environment(monkeypatch):
    monkeypatch.setenv("LAB_CPU_LOOPS", "off")
    assert not loops_wanted() and CpuPath().kernels is None
    monkeypatch.setenv("LAB_CPU_LOOPS", "1")
    assert loops_wanted()
    monkeypatch.setenv("LAB_CPU_OFF", "graphs, winograd,no-such-piece")
    assert pieces_off() == {"graphs", "winograd"}


def test_install_wraps_the_denoiser_and_leaves_the_rest(monkeypatch):
    monkeypatch.delenv("LAB_CPU_OFF", raising=False)
    pipe = tiny_sd()
    CpuPath(loops=True).install(pipe)
    assert isinstance(pipe.unet.forward, SplitForward) and isinstance(pipe.unet.forward.inner, GraphForward)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {SmallHeadAttnProcessor}
    assert "forward" not in vars(pipe.vae) and "forward" not in vars(pipe.text_encoder)
    x = torch.randn(2, 4, 16, 16)
    embeds = torch.randn(2, 8, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        out = pipe.unet(x, torch.tensor(500), encoder_hidden_states=embeds).sample
        plain = type(pipe.unet).forward(pipe.unet, x, torch.tensor(500), embeds, return_dict=False)[0]
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


def test_pieces_named_off_are_not_installed(monkeypatch):
    monkeypatch.setenv("LAB_CPU_OFF", "graphs,attention")
    pipe = tiny_sd()
    CpuPath(loops=False).install(pipe)
    assert isinstance(pipe.unet.forward, SplitForward) and not isinstance(pipe.unet.forward.inner, GraphForward)
    assert SmallHeadAttnProcessor not in {type(p) for p in pipe.unet.attn_processors.values()}
