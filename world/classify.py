"""Name a detected object's shape by matching its box-normalised silhouette against rendered templates."""
import cv2
import numpy as np

from .figure import POSES, pose_keypoints
from .segment import find_objects
from .shapes import Placement, draw_figure, draw_object
from .vocab import BACKGROUNDS, COLOURS, IMAGE_SIZE, SIZES

GRID = 20  # silhouettes are compared on a GRID x GRID box-normalised raster
ASPECT_WEIGHT = 0.5  # how much a mismatched box aspect ratio (log units) costs against IoU
TEMPLATE_BLURS = (0.0, 0.8)  # templates also seen blurred, as generated samples are
_bank = None


def normalise(alpha: np.ndarray, bbox) -> np.ndarray:
    """Crop soft alpha (0..1) to the bbox and resize to GRID x GRID."""
    x0, y0, x1, y1 = bbox
    return cv2.resize(alpha[y0:y1, x0:x1].astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA)


def _aspect(bbox) -> float:
    """Width over height of a box."""
    return (bbox[2] - bbox[0]) / (bbox[3] - bbox[1])


def _silhouettes(alpha: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Composite an alpha mask as a red object on gray, blur it, and segment it like a generated image."""
    out = []
    a = alpha[..., None].astype(np.float32) / 255.0
    bg, fg = np.array(BACKGROUNDS["gray"], np.float32), np.array(COLOURS["red"], np.float32)
    image = bg + a * (fg - bg)
    for sigma in TEMPLATE_BLURS:
        blurred = cv2.GaussianBlur(image, (0, 0), sigma) if sigma else image
        _, found = find_objects(np.round(blurred).astype(np.uint8))
        out.append((normalise(found[0].alpha, found[0].bbox), _aspect(found[0].bbox)))
    return out


def template_bank() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Silhouettes (T, GRID, GRID), aspects (T,), shape names (T): every shape, small and large, sharp and blurred."""
    # Figures get one template per pose and mirror, so a blobby small person still matches a person.
    global _bank
    if _bank is None:
        rng = np.random.default_rng(0)
        sils, aspects, names = [], [], []
        centre = IMAGE_SIZE / 2
        for extent in (np.mean(SIZES["small"]), np.mean(SIZES["large"])):
            place = Placement(centre, centre, float(extent))
            masks = [(s, draw_object(s, place, rng)[0]) for s in ("circle", "square", "triangle", "star", "heart")]
            masks += [("figure", draw_figure(pose_keypoints(rng, p, jitter=0.0, mirror=m), place))
                      for p in POSES for m in (False, True)]
            for name, alpha in masks:
                for sil, aspect in _silhouettes(alpha):
                    sils.append(sil), aspects.append(aspect), names.append(name)
        _bank = (np.stack(sils), np.array(aspects), names)
    return _bank


def match_scores(alpha: np.ndarray, bbox) -> dict[str, float]:
    """Best soft IoU per shape over its templates, minus a penalty for a different box aspect ratio."""
    sils, aspects, names = template_bank()
    sil = normalise(alpha, bbox)[None]
    iou = np.minimum(sils, sil).sum((1, 2)) / np.maximum(np.maximum(sils, sil).sum((1, 2)), 1e-6)
    score = iou - ASPECT_WEIGHT * np.abs(np.log(_aspect(bbox) / aspects))
    best = {}
    for name, s in zip(names, score):
        best[name] = max(best.get(name, -np.inf), float(s))
    return best


def classify_shape(alpha: np.ndarray, bbox) -> str:
    """Shape name for a soft alpha mask (H, W, 0..1) of one object with its bbox: the best-matching template."""
    scores = match_scores(alpha, bbox)
    return max(scores, key=scores.get)
