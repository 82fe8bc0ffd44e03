"""Photos in, photos out: the unit of work every front end shares.

The single-process CLI, the Ray Data job, the Ray Serve endpoint and the video
path all hand a list of decoded photos (``(H, W, 3)`` uint8 RGB arrays) to
:meth:`PhotoRestorer.restore_photos` and get one :class:`PhotoResult` per photo.
Faces of all the photos in a call are restored together in batches of the
restorer's batch size; since every face gets the same seeded noise (see the
spec's "Seeded noise"), how photos are grouped never changes a result.

Modes:

* aligned (the release's ``--has_aligned``): the photo *is* a face crop. It is
  stretched to the model resolution with bilinear (OpenCV ``INTER_LINEAR``)
  resizing, no crop, as the release does; the result is the restored crop.
* whole photo (default): detect, align, restore, paste back (interlcm.faces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from interlcm.engines.runtime import Restorer
from interlcm.imageio import to_uint8
from interlcm.upsampler import Upsamplers


@dataclass(frozen=True)
class PhotoOptions:
    aligned: bool = False  # inputs are aligned face crops (the release's --has_aligned)
    upscale: int = 2  # whole-photo mode: output canvas is the input times this (the release's default)
    only_center_face: bool = False  # whole-photo mode: keep the face nearest the image centre
    save_faces: bool = False  # also return the aligned restored faces


@dataclass
class PhotoResult:
    image: np.ndarray  # (H', W', 3) uint8 RGB: the restored photo (aligned mode: the restored crop)
    faces: list[np.ndarray] = field(default_factory=list)  # (R, R, 3) uint8 restored faces, if asked
    notes: list[str] = field(default_factory=list)  # one line each, e.g. which paste-back mask was used


def to_model_input(face: np.ndarray, resolution: int) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, R, R) float32 in [-1, 1], stretched with bilinear resizing as the release."""
    if face.shape[:2] != (resolution, resolution):
        face = cv2.resize(face, (resolution, resolution), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1).float() / 127.5 - 1.0


def restore_faces(restorer: Restorer, faces: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Restore aligned faces in full batches of the restorer's batch size; uint8 RGB in and out."""
    resolution = restorer.config.resolution
    batch = restorer.options.batch
    out: list[np.ndarray] = []
    for start in range(0, len(faces), batch):
        lq = torch.stack([to_model_input(f, resolution) for f in faces[start : start + batch]])
        out += [to_uint8(img) for img in restorer.restore(lq)]
    return out


class PhotoRestorer:
    """A restorer plus the photo-level options: turns photos into restored photos."""

    def __init__(self, restorer: Restorer, options: PhotoOptions, upsamplers: Upsamplers | None = None):
        self.restorer = restorer
        self.options = options
        # whole-photo mode: Real-ESRGAN background canvas and face upscaling (aligned mode: unused, as the release)
        self.upsamplers = upsamplers or Upsamplers()

    def restore_photos(self, photos: Sequence[np.ndarray]) -> list[PhotoResult]:
        if self.options.aligned:
            restored = restore_faces(self.restorer, photos)
            return [PhotoResult(img, [img] if self.options.save_faces else []) for img in restored]
        raise NotImplementedError("whole-photo mode: detection, alignment and paste-back (issue 11)")
