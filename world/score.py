"""Score a generated image against what was asked (a Scene or a parsed caption): the lab's yardstick."""
from dataclasses import dataclass, field
from itertools import permutations

import cv2
import numpy as np

from .captions import ParsedCaption
from .detect import Detection, detect
from .scene import ObjectSpec, Scene

ATTRIBUTES = ("shape", "colour", "size", "position")


@dataclass
class ObjectScore:
    """One requested object against the detection matched to it; None = attribute not requested."""

    spec: ObjectSpec
    detection: Detection | None
    shape: bool | None
    colour: bool | None
    size: bool | None
    position: bool | None

    @property
    def correct(self) -> bool:
        """Every requested attribute matches (and the object was found)."""
        return self.detection is not None and all(getattr(self, a) is not False for a in ATTRIBUTES)


@dataclass
class Evaluation:
    """Per-object scores plus scene-level checks for one image."""

    objects: list[ObjectScore]
    count: bool | None  # number of objects found equals the number requested
    background: bool | None
    detected_background: str
    detections: list[Detection] = field(repr=False)

    def attribute(self, name: str) -> bool | None:
        """One attribute over all requested objects: None if no object requested it."""
        values = [getattr(o, name) for o in self.objects if getattr(o, name) is not None]
        return all(values) if values else None

    @property
    def all_correct(self) -> bool:
        """Every requested attribute of every object, the object count and the background match."""
        return all(o.correct for o in self.objects) and self.count is not False and self.background is not False

    @property
    def both_correct(self) -> bool | None:
        """For two requested objects: both fully correct; None otherwise."""
        return all(o.correct for o in self.objects) if len(self.objects) == 2 else None


def _score(spec: ObjectSpec, det: Detection | None) -> ObjectScore:
    """Compare requested attributes with one detection (a missing detection fails every requested one)."""
    checks = {a: None if getattr(spec, a) is None else (det is not None and getattr(det, a) == getattr(spec, a))
              for a in ATTRIBUTES}
    return ObjectScore(spec, det, **checks)


def _match(specs: list[ObjectSpec], dets: list[Detection]) -> list[ObjectScore]:
    """Assign detections to requested objects, maximising agreeing attributes (exhaustive: counts are tiny)."""
    options = dets + [None] * len(specs)
    best, best_hits = None, -1
    for chosen in permutations(range(len(options)), len(specs)):
        scores = [_score(s, options[i]) for s, i in zip(specs, chosen)]
        hits = sum(bool(getattr(sc, a)) for sc in scores for a in ATTRIBUTES) + sum(sc.detection is not None for sc in scores)
        if hits > best_hits:
            best, best_hits = scores, hits
    return best


def evaluate(image: np.ndarray, spec: Scene | ParsedCaption) -> Evaluation:
    """Detect objects in a uint8 (64, 64, 3) image and score them against the request."""
    bg_name, dets = detect(image)
    specs = list(spec.objects)
    return Evaluation(
        objects=_match(specs, dets),
        count=len(dets) == len(specs) if specs else None,
        background=None if spec.background is None else bg_name == spec.background,
        detected_background=bg_name,
        detections=dets,
    )


def degrade(image: np.ndarray, rng: np.random.Generator, *, blur_sigma: float = 0.7, noise_std: float = 8 / 255) -> np.ndarray:
    """Gaussian blur then Gaussian noise: roughly how a small diffusion model's samples look."""
    x = cv2.GaussianBlur(image.astype(np.float32), (0, 0), blur_sigma)
    x = x + rng.normal(0.0, noise_std * 255, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
