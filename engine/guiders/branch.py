"""A guider's perturbed branch: the third, worse prediction that PAG, SEG and AutoGuidance guide away from.

A guider that has one returns it from its `branch(values)` classmethod; the engine and the denoisers ask the branch,
never the method's name, so a new perturbation guider is one file. A branch says
- where its prediction comes from: rows of the same batch, marked for the attention processors it installs
  (AttentionBranch, engine/guiders/perturb.py), or another network, the picked model's registered weak version
  (WeakModelBranch; the engine resolves ModelSpec.weak);
- which processors it installs on the shared model for the run, and so whether the run leaves that model as it is
  (then the engine may run it side by side with other requests);
- the values a model family runs it with where the request left them at their defaults (SD3's attention layers);
- what it refuses, in one sentence.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .base import Param
from .perturb import FAMILY_LAYERS, AttentionPerturbation, perturbed_attention


@dataclass(frozen=True)
class Branch:
    """The base: a branch that needs nothing of the engine and refuses nothing."""

    label: str  # the guider's label: the subject of the branch's sentences

    weak_model: ClassVar[bool] = False  # its prediction is the picked model's weak version, a call of its own
    leaves_model_as_is: ClassVar[bool] = True  # False: it installs processors on the shared model for the run

    def installed(self, model: torch.nn.Module) -> AbstractContextManager:
        """What the run's model carries for this branch, for the `with` block of the denoising loop."""
        return nullcontext()

    def family_values(self, family: str) -> dict[str, Any]:
        """Parameter values a model family ("sd", "sdxl", "sd3", "dit") runs this branch with instead of the
        request's, where those are the declared defaults; {} for none."""
        return {}

    def refusal(self, family: str, controls: bool) -> str | None:
        """One sentence when a run of this family (with ControlNets, where `controls`) cannot make the branch."""
        return None


@dataclass(frozen=True)
class AttentionBranch(Branch):
    """Rows of the same batch, with the conditional's inputs, that attend as `perturbation` says in its layers
    (PAG's identity, SEG's blurred queries). `layers` is the guider's parameter naming them: left at its default,
    a family whose model lacks those layers takes its own (FAMILY_LAYERS)."""

    perturbation: AttentionPerturbation
    layers: Param

    leaves_model_as_is: ClassVar[bool] = False  # its processors wrap the model's attention for the run

    def installed(self, model):
        return perturbed_attention(model, self.perturbation)

    def family_values(self, family):
        layers = FAMILY_LAYERS.get(family)
        if layers is None or self.perturbation.layers != self.layers.default:
            return {}
        return {self.layers.name: layers}


# The families whose runs have no weak model to call, as the weak branch's sentence names them.
_NO_WEAK_MODEL = {"sd3": "SD3 models", "dit": "the class-conditional models"}


@dataclass(frozen=True)
class WeakModelBranch(Branch):
    """The conditional prediction of the picked model's registered weak version (ModelSpec.weak), a UNet that reads
    the same prompt embeddings; another network, so a call of its own, and the shared model stays as it is."""

    weak_model: ClassVar[bool] = True

    def refusal(self, family, controls):
        if family in _NO_WEAK_MODEL:
            return f"{self.label} needs a weak version of the model; {_NO_WEAK_MODEL[family]} have none here."
        if controls:
            return (f"{self.label} does not combine with ControlNet here: the weak model cannot take the "
                    f"ControlNet's features.")
        return None
