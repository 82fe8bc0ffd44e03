"""What a face detector returns, and the interface every detector implements.

Detectors: RetinaFace ResNet-50 / mobile0.25 (networks exported like every other
component; `interlcm.faces.retinaface`) and dlib's HOG detector with its 5-point
shape predictor (offline, `interlcm.faces.dlib_detector`). Each names its own
landmark convention, because alignment needs the matching template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # (4,) float32 x0, y0, x1, y1 in photo pixels
    landmarks: np.ndarray  # (5, 2) float32 x, y in photo pixels, in the detector's `landmark_kind` order
    score: float


class Detector(Protocol):
    # "retinaface": left eye, right eye, nose tip, left and right mouth corners (FFHQ template)
    # "dlib5": dlib's 5 points (eye corners and nose base; their own template)
    landmark_kind: str

    def detect(self, photos: Sequence[np.ndarray]) -> list[list[Detection]]:
        """(H, W, 3) uint8 RGB photos -> the faces found in each, best first."""
        ...
