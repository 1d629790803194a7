"""A pose skeleton from a photo, through controlnet_aux's OpenPose detector."""

from __future__ import annotations

from PIL import Image

from ..errors import EngineError

_detector = None


def detect_pose(image: Image.Image) -> Image.Image:
    """An OpenPose skeleton of the people in a photo, through controlnet_aux, where its weights are cached."""
    global _detector
    try:
        if _detector is None:
            from controlnet_aux.open_pose import OpenposeDetector

            try:  # the cache first: no network wait where the weights are already present
                _detector = OpenposeDetector.from_pretrained("lllyasviel/Annotators", local_files_only=True)
            except Exception:
                _detector = OpenposeDetector.from_pretrained("lllyasviel/Annotators")
    except Exception as exc:  # no network, no cached weights, or controlnet_aux missing: say which
        raise EngineError("Pose from a photo needs the OpenPose annotator weights (lllyasviel/Annotators), which "
                          f"are not available here ({type(exc).__name__}); use a preset or edit the keypoints "
                          "instead.") from exc
    return _detector(image.convert("RGB"), output_type="pil")
