"""GPU serving decisions that hold without a GPU: dtype per family, offload, VAE tiling, SDPA and ControlNet swaps."""

import torch

from engine.models import loading
from engine.models.loading import ModelStore, attention_processors, pick_dtype, tile_vae_above, wants_offload
from engine.models.registry import REGISTRY
from tests.tiny_models import tiny_sd


def test_dtype_per_family_and_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert pick_dtype(cuda, "sd3") == torch.bfloat16
    assert pick_dtype(cuda, "sdxl") == pick_dtype(cuda, "sd") == pick_dtype(cuda) == torch.float16
    assert pick_dtype(cpu, "sd3") == torch.float32
    store = ModelStore(torch.device("cpu"))
    assert store.dtype_for(REGISTRY["sd35-medium"]) == torch.float32 and not store.offload


def test_offload_when_asked_or_under_16_gb(monkeypatch):
    cuda = torch.device("cuda")
    assert wants_offload(cuda, True) and not wants_offload(cuda, False)
    assert not wants_offload(torch.device("cpu"), True)  # offload is a GPU matter
    monkeypatch.setattr(loading, "cuda_memory_bytes", lambda: 12 * 2**30)
    assert wants_offload(cuda)
    monkeypatch.setattr(loading, "cuda_memory_bytes", lambda: 80 * 2**30)
    assert not wants_offload(cuda)
    monkeypatch.setattr(loading, "cuda_memory_bytes", lambda: None)  # ZeroGPU's start-up: no device to read
    assert not wants_offload(cuda)


def test_vae_tiles_only_above_1024_px():
    vae = tiny_sd().vae.eval()
    tile_vae_above(vae)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    assert vae.use_tiling and vae.tile_sample_min_size == 1024 and vae.tile_latent_min_size == 1024 // factor
    latents = torch.randn(1, vae.config.latent_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiled = vae.decode(latents).sample
        vae.disable_tiling()
        whole = vae.decode(latents).sample
    assert torch.equal(tiled, whole)  # small images decode exactly as before


def test_unet_keeps_diffusers_sdpa_attention_off_the_cpu():
    unet = tiny_sd().unet
    assert attention_processors(unet) == {"AttnProcessor2_0"}


class _FakeNet:
    """Stands in for a ControlNet: records where it was moved."""

    def __init__(self):
        self.device = torch.device("cuda")
        self.moves = []

    def to(self, device):
        self.device = torch.device(device)
        self.moves.append(str(device))
        return self


def test_controlnets_beyond_the_resident_count_move_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    store = ModelStore(torch.device("cpu"), resident_controlnets=1)
    store.device = torch.device("cuda")  # the residency rule runs on CUDA; the nets here only record moves
    nets = {name: _FakeNet() for name in "abc"}
    for name, net in nets.items():
        store._cache[(name,)] = loading.Loaded(None, net)
    store._make_resident(("a",), nets["a"])
    store._make_resident(("b",), nets["b"])
    assert store.resident() == ["b"] and nets["a"].device.type == "cpu"
    store._make_resident(("a",), nets["a"])  # asked again: back on the GPU, b leaves
    assert store.resident() == ["a"] and nets["a"].device.type == "cuda" and nets["b"].device.type == "cpu"
    store.resident_controlnets = 2
    store._make_resident(("c",), nets["c"])
    assert store.resident() == ["a", "c"]
