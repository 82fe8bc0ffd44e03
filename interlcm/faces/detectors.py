"""The face detectors `--detector` offers: one table, read by the CLI's choices and the photo engine.

Add a detector by adding an entry to :data:`DETECTORS`; nothing else lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interlcm.faces.detect import Detector


@dataclass(frozen=True)
class DetectorContext:
    """What a detector may need to open: where weights live and the backend that runs networks."""

    weights: Path | None = None  # weights folder (detector weights sit beside the model's)
    backend: Any = None  # the opened interlcm.sampler.Backend, for detectors that are exported components


def _dlib(context: DetectorContext) -> Detector:
    from interlcm.faces.dlib_detector import DlibDetector

    return DlibDetector()


def _retinaface(name: str, component: str) -> Callable[[DetectorContext], Detector]:
    """RetinaFace run by the restoring backend (torch, ONNX Runtime or TensorRT), as a component."""

    def open_(context: DetectorContext) -> Detector:
        from interlcm.faces.retinaface import RetinaFaceDetector

        if context.backend is None:
            raise RuntimeError(f"--detector {name} runs on a backend and none was given (or use --detector dlib)")
        detector = RetinaFaceDetector(context.backend, component)
        try:  # now, with the fix, rather than on the first photo: the backend may lack the network
            detector.detect([np.zeros((64, 64, 3), np.uint8)])
        except (RuntimeError, ValueError) as exc:
            raise RuntimeError(f"--detector {name} cannot run: {str(exc).splitlines()[0]} (or use --detector dlib)") from None
        return detector

    return open_


# name -> factory. RetinaFace ResNet-50 (the release's default) and mobile0.25 (the fast option).
DETECTORS: dict[str, Callable[[DetectorContext], Detector]] = {
    "retinaface": _retinaface("retinaface", "retinaface_resnet50"),
    "retinaface_mobile": _retinaface("retinaface_mobile", "retinaface_mobile"),
    "dlib": _dlib,
}
DEFAULT_DETECTOR = "retinaface"


def open_detector(name: str, context: DetectorContext | None = None) -> Detector:
    """The detector called `name`; RuntimeError with a sentence naming the fix when it cannot run here."""
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}") from None
    return factory(context or DetectorContext())


def open_parser(backend: Any) -> Callable[[list[np.ndarray]], list[np.ndarray]] | None:
    """ParseNet on `backend` as the paste-back's face parser, or None when the backend lacks it.

    Restored (R, R, 3) uint8 RGB faces -> (R, R) float32 masks in [0, 1]; faces are resized to
    ParseNet's 512 px (bilinear, as the release) and the masks back to R.
    """
    import cv2
    import torch

    from interlcm.faces.parsenet import IN_SIZE, ParseMask

    parse = ParseMask(backend.run)

    def parser(faces: list[np.ndarray]) -> list[np.ndarray]:
        size = faces[0].shape[0]
        big = [cv2.resize(f, (IN_SIZE, IN_SIZE), interpolation=cv2.INTER_LINEAR) for f in faces]
        x = torch.from_numpy(np.stack(big)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, 512, 512)
        masks = parse(x.to(backend.device)).float().cpu().numpy()  # (N, 512, 512)
        return [cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in masks]

    try:
        parser([np.zeros((IN_SIZE, IN_SIZE, 3), np.uint8)])
    except (RuntimeError, ValueError):  # no parsenet weights or export: the soft box mask alone (noted per photo)
        return None
    return parser
