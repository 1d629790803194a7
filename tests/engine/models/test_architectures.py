"""The published architectures the GPU bench times: their configs give the published parameter counts, and without
a GPU the bench says so in one sentence."""

import pytest

from engine.models.architectures import ARCHITECTURES, parameter_counts, t5_tokenizer
from engine.bench import run_architectures
from engine.models.registry import REGISTRY

# Parameters of the hub folders' modules (the SD3.5 transformer without its 384 x 384 position table, a buffer).
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
    "sd35-medium": {"transformer": 2_243_171_520, "text_encoder": 123_650_304, "text_encoder_2": 694_659_840,
                    "text_encoder_3": 4_762_310_656},
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_configs_give_the_published_parameter_counts(name):
    counts = parameter_counts(name)
    assert {k: counts[k] for k in PUBLISHED[name]} == PUBLISHED[name]


def test_architectures_match_the_registry_entries():
    for name, arch in ARCHITECTURES.items():
        spec = REGISTRY[name]
        assert (arch.family, arch.size, arch.scale) == (spec.family, spec.size, spec.default_scale)


def test_t5_tokenizer_pads_and_ends_like_t5():
    ids = t5_tokenizer()("a red circle zebra", padding="max_length", max_length=8).input_ids
    assert ids[-4:] == [1, 0, 0, 0] and 2 in ids  # </s>, padding, and an unknown word


def test_gpu_bench_without_a_gpu_is_one_sentence(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert run_architectures(device="cuda") == []
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and out.startswith("No CUDA device here") and out.endswith(".")


def test_cli_bench_takes_the_device():
    from engine.cli import build_parser, main

    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    if not any("--device" in a.option_strings for a in bench._actions):
        pytest.skip("engine/cli.py does not take bench --device yet.")
    assert main(["bench", "--device", "cuda"]) == 0
