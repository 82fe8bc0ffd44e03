"""`--detector dlib`: dlib's HOG face detector and its 5-point shape predictor, fully offline.

Needs the ``faces-dlib`` extra: ``dlib-bin`` (prebuilt dlib wheels) and ``face-recognition-models``
(ships dlib's public-domain ``shape_predictor_5_face_landmarks.dat``). Its landmarks are dlib's
5 points (eye corners and nose base), aligned with their own template (``align.TEMPLATES_512["dlib5"]``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interlcm.faces.detect import Detection

_INSTALL = "install the faces-dlib extra: pip install 'interlcm[faces-dlib]'"


def shape_predictor_path() -> Path:
    """The 5-point model inside face-recognition-models, found without importing that package.

    (Its ``__init__`` imports ``pkg_resources``, which recent setuptools no longer ship.)
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"--detector dlib needs dlib's 5-point landmark model: {_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_5_face_landmarks.dat"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from face-recognition-models: reinstall it ({_INSTALL})")
    return path


class DlibDetector:
    """HOG detection (upsampling the photo `upsample` times for small faces), then 5 landmarks per face."""

    landmark_kind = "dlib5"

    def __init__(self, upsample: int = 1, min_score: float = 0.3):
        try:
            import dlib
        except ImportError:
            raise RuntimeError(f"--detector dlib needs dlib: {_INSTALL}") from None
        self.upsample = upsample
        # HOG SVM margin. dlib keeps everything above 0, but on scikit-image's astronaut that also
        # returns the mission patch (0.12) while real faces there and in group photos score 0.56-1.4.
        self.min_score = min_score
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(shape_predictor_path()))

    def detect(self, photos: Sequence[np.ndarray]) -> list[list[Detection]]:
        return [self._detect_one(np.ascontiguousarray(photo)) for photo in photos]

    def _detect_one(self, photo: np.ndarray) -> list[Detection]:
        rects, scores, _ = self._detector.run(photo, self.upsample, self.min_score)
        found = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(photo, rect)
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], np.float32)  # (5, 2)
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
            found.append(Detection(box, landmarks, float(score)))
        return sorted(found, key=lambda d: -d.score)
