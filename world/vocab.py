"""The closed vocabulary of the procedural world: shapes, colours, sizes, positions, backgrounds."""
import numpy as np

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "star", "heart", "figure")

# Object colours, chosen far apart in Lab so a blurry generation still maps to one name.
COLOURS = {
    "red": (220, 30, 30),
    "orange": (250, 150, 20),
    "yellow": (245, 225, 40),
    "green": (40, 165, 60),
    "blue": (30, 95, 235),
    "purple": (150, 40, 170),
    "pink": (250, 140, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

BACKGROUNDS = {"gray": (128, 128, 128), "beige": (215, 200, 160), "navy": (25, 35, 95),
               "white": COLOURS["white"], "black": COLOURS["black"]}

# Extent = the larger side of the object's bounding box, in pixels of the 64x64 image.
# The gap between 18 and 26 lets the evaluator separate sizes even after blur.
SIZES = {"small": (14.0, 18.0), "large": (26.0, 31.0)}
SIZE_THRESHOLD = 22.0

# 3x3 grid: position name -> (row, col).
POSITIONS = {
    "top left": (0, 0), "top": (0, 1), "top right": (0, 2),
    "left": (1, 0), "center": (1, 1), "right": (1, 2),
    "bottom left": (2, 0), "bottom": (2, 1), "bottom right": (2, 2),
}
CELL_OF = {cell: name for name, cell in POSITIONS.items()}

# The 18 OpenPose/COCO body keypoints, in controlnet_aux order.
KEYPOINT_NAMES = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
)


def position_of(x: float, y: float, *, size: int = IMAGE_SIZE) -> str:
    """Name of the 3x3 grid cell that contains the point (x, y) in pixels."""
    col = min(2, max(0, int(x * 3 // size)))
    row = min(2, max(0, int(y * 3 // size)))
    return CELL_OF[(row, col)]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB uint8 colours, shape (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


# A pair closer than this (Lab delta E) is "too similar" to put an object on that background.
MIN_CONTRAST = 45.0


def contrast(colour: str, background: str) -> float:
    """Lab distance between an object colour and a background colour."""
    a, b = srgb_to_lab(COLOURS[colour]), srgb_to_lab(BACKGROUNDS[background])
    return float(np.linalg.norm(a - b))


ALLOWED_BACKGROUNDS = {
    c: tuple(b for b in BACKGROUNDS if contrast(c, b) >= MIN_CONTRAST) for c in COLOURS
}
