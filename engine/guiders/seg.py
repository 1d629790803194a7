"""Smoothed Energy Guidance, Hong (2024, arXiv 2408.00760): guide away from the model whose self-attention queries
are blurred by a Gaussian, which smooths the attention's energy landscape."""

from .base import Guider, Param
from .branch import AttentionBranch
from .pag import pag
from .perturb import INFINITE_SIGMA, LAYER_PATTERN, AttentionPerturbation
from .registry import register

SEG_SCALE = Param("seg_scale", 3.0, 0.0, 50.0, "SEG scale", "weight of the guidance away from the blurred branch "
                  "(the paper uses 3)", step=0.25, ui_range=(0.0, 10.0))
SEG_SIGMA = Param("seg_sigma", INFINITE_SIGMA, 0.01, INFINITE_SIGMA, "SEG blur sigma",
                  f"Gaussian blur of the queries, in tokens; {INFINITE_SIGMA:g} means infinite (every query the "
                  f"mean: uniform attention), the paper's choice", step=0.5)
SEG_LAYERS = Param("seg_layers", "mid", 0, 0, "SEG layers", "self-attention layers blurred: mid, down.N, up.N, "
                   "blocks.N, comma-separated", kind="text", pattern=LAYER_PATTERN)


@register
class SEG(Guider, name="seg", label="SEG", note="Hong 2024: blurred attention queries", order=80,
          params=(SEG_SCALE, SEG_SIGMA, SEG_LAYERS), plain_at_one=False,
          paper="Hong (2024), Smoothed Energy Guidance, arXiv 2408.00760"):
    """SEG: the same three-branch combination as PAG (u + s (c - u) + s_seg (c - p)), with p from blurred queries.
    diffusers' guider decides 'infinite' the other way round (its _gaussian_blur_2d blurs when sigma exceeds the
    threshold and averages otherwise); the lab follows the paper's reference code."""

    @classmethod
    def branch(cls, values):
        blur = AttentionPerturbation("blur", values["seg_layers"], values["seg_sigma"])
        return AttentionBranch(cls.label, blur, SEG_LAYERS)

    @classmethod
    def perturbs(cls, values, scales):
        return values["seg_scale"] != 0

    def guide(self, c, u, step):
        return u + self.scale_like(c) * (c - u)

    def guide_perturbed(self, c, u, p, step):
        return pag(c, u, p, self.scale_like(c), self.values["seg_scale"])
