"""User inputs to control maps, through the same preprocessing the lab's ControlNets were trained with."""

from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import EngineError
from .maps import canny, sketch_to_scribble
from .openpose import keypoints_from_json, pose_map

CONTROL_TYPES = ("canny", "scribble", "pose")
MAX_PIXELS = 4096 * 4096
# The only formats an uploaded file is decoded as: PIL would otherwise try every plugin it has, EPS included (which
# runs Ghostscript where it is installed).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF or TIFF"


class ImageRefused(EngineError):
    """An image that cannot be used: `reason` completes a sentence about it ("could not be read; ...")."""

    def __init__(self, reason: str):
        super().__init__(f"The image {reason}.")
        self.reason = reason


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or array (grey, 16-bit, float, palette, CMYK, with alpha) as uint8 RGB; transparency is
    flattened onto white."""
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint16:
            array = (array / 257).round().astype(np.uint8)
        elif array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise EngineError(f"A control image must be HxW, HxWx3 or HxWx4, not {array.shape}.")
        image = Image.fromarray(array)
    if image.width * image.height > MAX_PIXELS:
        raise ImageRefused(f"is {image.width}x{image.height}; the limit is 16 megapixels")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.nan_to_num(np.asarray(image, dtype=np.float64)).clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))


_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, TypeError, SyntaxError, Image.DecompressionBombError)
_UNREADABLE_REASON = f"could not be read as an image; upload a {FORMAT_NAMES} file"


def _opened(path) -> Image.Image:
    """The image file at `path`, opened as one of IMAGE_FORMATS (its header read, no pixel decoded), its declared
    size checked."""
    image = Image.open(path, formats=IMAGE_FORMATS)
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageRefused(f"is {width}x{height}; the limit is 16 megapixels")
    return image


def check_image_header(path) -> None:
    """Refuse a file that is not one of IMAGE_FORMATS, or whose header declares more than 16 megapixels, before any
    pixel is decoded."""
    try:
        _opened(path).close()
    except EngineError:
        raise
    except _UNREADABLE:
        raise ImageRefused(_UNREADABLE_REASON) from None


def read_image(path) -> Image.Image:
    """An image file as RGB (grey, 16-bit, palette, CMYK and transparent pictures converted), decoded only as one of
    IMAGE_FORMATS and only after its declared size is checked; one sentence on failure, never naming the path."""
    try:
        with _opened(path) as image:
            image.load()
            return Image.fromarray(to_rgb_array(image))
    except EngineError:
        raise
    except _UNREADABLE:
        raise ImageRefused(_UNREADABLE_REASON) from None


def prepare_control(source, control_type: str, *, size: tuple[int, int] = (64, 64), low: int = 100,
                    high: int = 200) -> Image.Image:
    """A control map of `size` (width, height): Canny edges of a picture, a sketch's scribble, or a pose skeleton.

    `source` is an image for canny and scribble; for pose it is a skeleton image or 18-keypoint JSON text.
    """
    if control_type not in CONTROL_TYPES:
        raise EngineError(f"Unknown control type '{control_type}'; choose one of {', '.join(CONTROL_TYPES)}.")
    width, height = size
    if control_type == "pose" and isinstance(source, str):
        try:
            people = keypoints_from_json(source)
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        side = max(width, height)
        return Image.fromarray(pose_map(people, size=side)).resize((width, height), Image.NEAREST)
    rgb = to_rgb_array(source)
    if control_type == "canny":
        if not 0 <= low <= high <= 1000:
            raise EngineError(f"Canny thresholds must satisfy 0 <= low <= high <= 1000, not {low} and {high}.")
        small = Image.fromarray(rgb).resize((width, height), Image.BICUBIC)
        return Image.fromarray(canny(np.asarray(small), low, high))
    if control_type == "scribble":
        if rgb.min() == rgb.max():
            raise EngineError("The sketch is blank; draw dark strokes on the light canvas first.")
        return Image.fromarray(sketch_to_scribble(rgb)).resize((width, height), Image.NEAREST)
    return Image.fromarray(rgb).resize((width, height), Image.NEAREST)  # a skeleton image, as drawn
