"""The Compare grid's roofline: UNet FLOPs counted per sample and per evaluation, against a measured peak."""

import re
from pathlib import Path

import torch

from engine.bench import run_grid
from engine.roofline import Roofline, counting_samples, stolen_share, unet_flops_per_sample
from tests.tiny_models import tiny_sd


def test_flops_per_sample_scale_with_the_batch():
    unet = tiny_sd().unet.eval()
    embeds = torch.randn(2, 8, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(0))
    one = unet_flops_per_sample(unet, embeds)
    x = torch.zeros(2, 4, 16, 16)
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor(500), encoder_hidden_states=embeds, return_dict=False)
    assert one > 0 and counter.get_total_flops() == 2 * one


def test_samples_are_counted_per_call_and_batch():
    layer = torch.nn.Linear(2, 2)
    with counting_samples(layer) as sizes:
        layer(torch.ones(3, 2))
        layer(torch.ones(5, 2))
    layer(torch.ones(7, 2))  # outside the block: not counted
    assert sizes == [3, 5]


def test_roofline_arithmetic():
    result = Roofline(seconds=2.0, flops=100e9, peak_flops_per_s=100e9)
    assert result.flops_per_s == 50e9 and result.fraction == 0.5 and result.floor_s == 1.0


def test_grid_bench_counts_every_unet_sample_and_ends_with_the_roofline_line(tiny_folders, capsys):
    steps = 2
    result = run_grid(model=str(tiny_folders["sd"]), steps=steps, runs=1)
    lines = capsys.readouterr().out.strip().splitlines()
    # Four rows of five guided scales times three seeds, each image with its unconditional twin, plus the three
    # scale-1 conditional images the rows share.
    samples = steps * (4 * 5 * 3 * 2 + 3)
    assert re.search(rf"UNet work: {samples} sample evaluations", "\n".join(lines))
    assert re.search(r"fp32 matmul peak [\d.]+ GFLOP/s \(\d+ threads, the best of 2 measurements", "\n".join(lines))
    assert re.fullmatch(r"grid roofline fraction: \d+\.\d{3}", lines[-1])
    assert float(lines[-1].split()[-1]) == round(result.fraction, 3) and 0 < result.fraction < 1


def test_stolen_share_reads_proc_stat_or_says_nothing():
    with stolen_share() as share:
        sum(range(10000))
    if Path("/proc/stat").exists():
        assert len(share) == 1 and 0.0 <= share[0] <= 1.0
    else:
        assert share == []
