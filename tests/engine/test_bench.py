"""The Compare grid's roofline: UNet FLOPs counted per sample and per evaluation, against a measured peak."""

import re
from pathlib import Path

import torch

from engine.bench import run_grid
from engine.cpu.roofline import (Roofline, counting_samples, stolen_share, unet_flops_per_sample,
                                 winograd_flops_per_sample)
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


def test_the_winograd_share_of_the_work_is_counted_per_convolution():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(__file__).resolve().parents[2] / "assets/models/lab-sd/unet")
    embeds = torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(0))
    counted, performed = winograd_flops_per_sample(unet.eval(), embeds)
    # 24 convolutions: 2 C O 9 H W each; at 16x16 and 8x8 a quarter of that in products, at 4x4 1/2.25
    direct = {16: [(32, 32)] * 2 + [(64, 64)] + [(96, 32), (32, 32), (64, 32), (32, 32)],  # down 0, up 1's upsampler, up 2
              8: [(32, 64), (64, 64)] + [(64, 64)] + [(128, 64), (64, 64), (96, 64), (64, 64)],  # down 1, up 0's, up 1
              4: [(64, 64)] * 6 + [(128, 64), (64, 64)] * 2}  # down 2, the middle, up 0
    flops = {side: [2 * c * o * 9 * side * side for c, o in shapes] for side, shapes in direct.items()}
    assert sum(len(v) for v in flops.values()) == 24
    assert counted == sum(map(sum, flops.values())) == 113_246_208
    assert performed == sum(f // 4 for f in flops[16] + flops[8]) + sum(round(f / 2.25) for f in flops[4])


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
