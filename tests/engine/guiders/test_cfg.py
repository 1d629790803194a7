"""CFG and the projected methods keep the input dtype; CFG's endpoints."""

import pytest
import torch

from engine.guiders.apg import apg
from engine.guiders.cfg import cfg
from engine.guiders.cfg_zero_star import cfg_zero_star
from engine.guiders.perp_cfg import perp_cfg
from engine.guiders.rescale import rescale


def test_cfg_endpoints(preds):
    c, u = preds
    torch.testing.assert_close(cfg(c, u, 1.0), c)
    torch.testing.assert_close(cfg(c, u, 0.0), u)
    torch.testing.assert_close(cfg(c, u, 3.0), u + 3 * (c - u))


@pytest.mark.parametrize("fn", [
    lambda c, u: cfg(c, u, 5.0), lambda c, u: perp_cfg(c, u, 5.0), lambda c, u: apg(c, u, 5.0, norm_threshold=2.0),
    lambda c, u: cfg_zero_star(c, u, 5.0), lambda c, u: rescale(cfg(c, u, 5.0), c, 0.7)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes_kept(preds, fn, dtype):
    c, u = preds
    assert fn(c.to(dtype), u.to(dtype)).dtype == dtype
