"""No guidance: the conditional prediction alone, one model call per step."""

from .base import Guider
from .registry import register


@register
class NoGuidance(Guider, name="none", label="None", note="conditional only", order=0, guided=False, rows={}):
    """The conditional model alone (what every method reduces to at scale 1)."""

    def guide(self, c, u, step):
        return c
