"""Scenes: sample a spec, then render it to a 64x64 image with ground-truth labels."""
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from .shapes import Placement, draw_object
from .vocab import ALLOWED_BACKGROUNDS, BACKGROUNDS, COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, SIZES

GAP = 4.0  # min pixels between two objects' boxes, so they stay separate components after blur
CELL_MARGIN = 1.5  # centres stay this far inside their grid cell, so position is unambiguous


@dataclass(frozen=True)
class ObjectSpec:
    """One object's attributes; None means unspecified (only in parsed captions)."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Scene:
    """What a picture contains: one or two objects on a named background."""

    objects: tuple[ObjectSpec, ...]
    background: str


@dataclass
class ObjectLabel:
    """Ground truth for one rendered object: bbox (x0, y0, x1, y1) pixels, x1/y1 exclusive; keypoints 0..1."""

    spec: ObjectSpec
    bbox: tuple[int, int, int, int]
    keypoints: np.ndarray | None  # (18, 3) x, y in 0..1 of width/height, visibility; figures only
    mask: np.ndarray = field(repr=False)  # (64, 64) bool


@dataclass
class RenderedScene:
    """A rendered image with its per-object labels and the scene it came from."""

    image: np.ndarray  # (64, 64, 3) uint8
    labels: list[ObjectLabel]
    scene: Scene


def centre_box(position: str, extent: float) -> tuple[float, float, float, float]:
    """Allowed (x_lo, y_lo, x_hi, y_hi) for an object's centre: inside its cell, object inside the image."""
    row, col = POSITIONS[position]
    cell, half = IMAGE_SIZE / 3, extent / 2 + 0.5
    lo = [max(k * cell + CELL_MARGIN, half) for k in (col, row)]
    hi = [min((k + 1) * cell - CELL_MARGIN, IMAGE_SIZE - half) for k in (col, row)]
    return lo[0], lo[1], hi[0], hi[1]


def _separated(a: Placement, b: Placement) -> bool:
    """True when the two square boxes are at least GAP apart along x or y."""
    reach = (a.extent + b.extent) / 2 + GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _corners(position: str, extent: float) -> list[Placement]:
    """The extreme placements of an object: its centre at each corner of the allowed box."""
    x0, y0, x1, y1 = centre_box(position, extent)
    return [Placement(x, y, extent) for x, y in product((x0, x1), (y0, y1))]


def _feasible(a: ObjectSpec, b: ObjectSpec) -> bool:
    """Whether two objects at their largest extents can be placed apart."""
    ea, eb = SIZES[a.size][1], SIZES[b.size][1]
    return any(_separated(p, q) for p in _corners(a.position, ea) for q in _corners(b.position, eb))


def _sample_object(rng, shapes, exclude, taken=()) -> ObjectSpec:
    """One random object not in `exclude` and not in a taken position."""
    positions = [p for p in POSITIONS if p not in taken]
    while True:
        spec = ObjectSpec(
            shape=shapes[rng.integers(len(shapes))],
            colour=list(COLOURS)[rng.integers(len(COLOURS))],
            size=list(SIZES)[rng.integers(len(SIZES))],
            position=positions[rng.integers(len(positions))],
        )
        if (spec.colour, spec.shape, spec.position) not in exclude:
            return spec


def sample_scene(rng: np.random.Generator, *, n_objects: int = 1, shapes=None, exclude=frozenset()) -> Scene:
    """Random scene of 1 or 2 objects; `shapes` restricts shapes, `exclude` holds banned (colour, shape, position)."""
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects must be 1 or 2, got {n_objects}.")
    shapes = tuple(shapes or SHAPES)
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        raise ValueError(f"Unknown shapes {sorted(unknown)}; known shapes are {SHAPES}.")
    while True:
        objects = [_sample_object(rng, shapes, exclude)]
        if n_objects == 2:
            objects.append(_sample_object(rng, shapes, exclude, taken=(objects[0].position,)))
            if not _feasible(*objects):
                continue
        backgrounds = [b for b in BACKGROUNDS if all(b in ALLOWED_BACKGROUNDS[o.colour] for o in objects)]
        if backgrounds:
            return Scene(tuple(objects), backgrounds[rng.integers(len(backgrounds))])


def _place(specs, rng) -> list[Placement]:
    """Random placements with jitter; two objects retry until apart, falling back to the extremes."""
    extents = [rng.uniform(*SIZES[s.size]) for s in specs]
    for _ in range(20):
        places = []
        for spec, extent in zip(specs, extents):
            x0, y0, x1, y1 = centre_box(spec.position, extent)
            places.append(Placement(rng.uniform(x0, x1), rng.uniform(y0, y1), extent))
        if len(places) == 1 or _separated(*places):
            return places
    pairs = [(p, q) for p in _corners(specs[0].position, extents[0]) for q in _corners(specs[1].position, extents[1])]
    return list(next(pq for pq in pairs if _separated(*pq)))


def render(scene: Scene, rng: np.random.Generator) -> RenderedScene:
    """Draw the scene: jittered placement, anti-aliased shapes composited over the background."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    image[:] = BACKGROUNDS[scene.background]
    labels = []
    for spec, place in zip(scene.objects, _place(scene.objects, rng)):
        alpha, keypoints = draw_object(spec.shape, place, rng)
        a = alpha[..., None].astype(np.float32) * (1 / 255)
        image += a * (np.array(COLOURS[spec.colour], np.float32) - image)
        mask = alpha >= 128
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        bbox = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
        labels.append(ObjectLabel(spec, bbox, keypoints, mask))
    return RenderedScene(np.round(image).astype(np.uint8), labels, scene)


def render_seed(seed: int, *, n_objects: int = 1, shapes=None, exclude=frozenset()) -> RenderedScene:
    """Sample and render one scene, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    return render(sample_scene(rng, n_objects=n_objects, shapes=shapes, exclude=exclude), rng)
