"""The procedural world: seeded 64x64 scenes with labels, captions, condition maps and an evaluator."""
from .batch import render_batch
from .captions import VOCABULARY, ParsedCaption, canonical_caption, caption, parse_caption
from .scribble import scribble
from .score import Evaluation, ObjectScore, degrade, evaluate
from .measures import bootstrap, clipped_fraction, clopper_pearson, diversity, paired_difference, saturation
from .scene import ObjectLabel, ObjectSpec, RenderedScene, Scene, render, render_seed, sample_scene
from .split import HELD_OUT, is_held_out
from .vocab import BACKGROUNDS, COLOURS, IMAGE_SIZE, KEYPOINT_NAMES, POSITIONS, SHAPES, SIZES
