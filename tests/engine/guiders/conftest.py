import pytest
import torch


@pytest.fixture
def preds():
    """(c, u): conditional and unconditional predictions of 3 samples, u partly aligned with c."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 4, 8, 8, generator=g)
    u = torch.randn(3, 4, 8, 8, generator=g) * 0.7 + 0.5 * c
    return c, u


def per_sample_dot(a, b):
    return (a.double() * b.double()).flatten(1).sum(1)
