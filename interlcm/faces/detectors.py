"""The face detectors `--detector` offers: one table, read by the CLI's choices and the photo engine.

Add a detector by adding an entry to :data:`DETECTORS`; nothing else lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from interlcm.backend import Backend
from interlcm.faces.detect import Detection, Detector
from interlcm.faces.networks import FACE_NETWORKS
from interlcm.faces.parsenet import IN_SIZE, ParseMask
from interlcm.faces.retinaface import DetectOptions, RawDetections, RetinaFaceConfig, decode, detection_sizes


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


def open_parser(backend: Backend) -> Callable[[list[np.ndarray]], list[np.ndarray]] | None:
    """ParseNet on `backend` as the paste-back's face parser, or None when the backend lacks it (no weights
    or export: the soft box mask alone, noted per photo).

    Restored (R, R, 3) uint8 RGB faces -> (R, R) float32 masks in [0, 1]; faces are resized to
    ParseNet's 512 px (bilinear, as the release) and the masks back to R. All the faces of a call
    go to the backend at once; it splits them to its batch (0.4 GB of activations per face on a CPU).
    """
    if not backend.has(ParseMask.component):
        return None
    parse = ParseMask(backend.run)

    def parser(faces: list[np.ndarray]) -> list[np.ndarray]:
        size = faces[0].shape[0]
        big = [cv2.resize(f, (IN_SIZE, IN_SIZE), interpolation=cv2.INTER_LINEAR) for f in faces]
        x = torch.from_numpy(np.stack(big)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, 512, 512)
        masks = parse(x.to(backend.device)).float().cpu().numpy()  # (N, 512, 512)
        return [cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in masks]

    return parser


class RetinaFaceDetector:
    """Detector over a backend that runs `retinaface_resnet50` or `retinaface_mobile`."""

    landmark_kind = "retinaface"

    def __init__(
        self, backend: Backend, component: str = "retinaface_resnet50", options: DetectOptions | None = None
    ):
        if component not in FACE_NETWORKS or FACE_NETWORKS[component].kind != "detector":
            detectors = [n for n, f in FACE_NETWORKS.items() if f.kind == "detector"]
            raise ValueError(f"{component!r} is not a face detector: choose one of {', '.join(detectors)}")
        self.backend = backend
        self.component = component
        self.cfg: RetinaFaceConfig = FACE_NETWORKS[component].config
        self.options = options or DetectOptions()

    def _pixels(self, photo: np.ndarray) -> tuple[torch.Tensor, float]:
        """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 on the device, and network pixels per photo pixel.

        The release's detection view (`detection_sizes`), shrunk to fit when it is larger than the
        detector takes on this backend (its engine profile: 4096 px sides by default), the scale
        carried back with the detections.
        """
        sizes, scale = detection_sizes(*photo.shape[:2], self.options)
        height, width = sizes[-1] if sizes else photo.shape[:2]
        limits = self.backend.limits(self.component).dims
        fit = min(limits["height"][1] / height, limits["width"][1] / width)
        if fit < 1:
            sizes.append((int(height * fit), int(width * fit)))
            scale *= fit
        x = torch.from_numpy(np.ascontiguousarray(photo)).to(self.backend.device).permute(2, 0, 1)[None].float()
        for size in sizes:
            # bilinear, half-pixel centres, rounded to uint8 values: OpenCV's INTER_LINEAR enlargement (to
            # within its fixed-point rounding); antialiased only when shrinking to fit
            shrink = size[0] < x.shape[2]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink).round().clamp(0, 255)
        return x, scale

    def detect(self, photos: Sequence[np.ndarray]) -> list[list[Detection]]:
        """(H, W, 3) uint8 RGB photos -> the faces of each, best first; photos of one size share a batch."""
        prepared = [self._pixels(p) for p in photos]
        results: list[list[Detection]] = [[] for _ in photos]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, (x, _) in enumerate(prepared):
            by_size.setdefault(tuple(x.shape[-2:]), []).append(i)
        for size, indices in by_size.items():  # the backend splits a group to its batch
            out = self.backend.run(self.component, pixels=torch.cat([prepared[i][0] for i in indices]))
            for row, i in enumerate(indices):
                raw = RawDetections(
                    out["loc"][row], out["conf"][row], out["landmarks"][row], size, prepared[i][1]
                )
                results[i] = decode(raw, self.cfg, self.options)
        return results
