"""Training batches: many rendered scenes with captions, reproducible from one seed."""
import numpy as np

from .captions import caption
from .scene import Scene, render, sample_scene
from .split import HELD_OUT


def render_batch(seed: int, n: int, *, n_objects: int | tuple[int, ...] = 1, shapes=None, exclude=HELD_OUT,
                 paraphrase: bool = True) -> tuple[np.ndarray, list[Scene], list[str]]:
    """(images uint8 (n, 64, 64, 3), scenes, captions); held-out combos are excluded unless exclude=frozenset()."""
    rng = np.random.default_rng(seed)
    counts = (n_objects,) if isinstance(n_objects, int) else tuple(n_objects)
    images = np.empty((n, 64, 64, 3), np.uint8)
    scenes, captions = [], []
    for i in range(n):
        scene = sample_scene(rng, n_objects=counts[rng.integers(len(counts))], shapes=shapes, exclude=exclude)
        images[i] = render(scene, rng).image
        scenes.append(scene)
        captions.append(caption(scene, rng, paraphrase=paraphrase))
    return images, scenes, captions
