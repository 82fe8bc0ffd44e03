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
* whole photo (default): detect, align, restore, paste back (interlcm.faces). Photos whose short
  side is under 512 px are enlarged to 512 for detection only (as the release, which detects on
  the enlarged photo); faces are cropped from the original photo, so the output is always the
  input's size times ``upscale``. Faces whose eyes are under 5 px apart are dropped. A grayscale
  photo (the release's test) gets grayscale faces back. The faces of every photo in a call are
  restored together in full batches, then each photo is pasted back.

Strength (``PhotoOptions.strength``, A1111's "visibility", facefusion's "blend") mixes each restored
face with the original: whole photos scale the paste-back mask by it, so 0.0 gives the upscaled
canvas a photo without faces gives; aligned crops are mixed with the input crop stretched to the
model resolution, so 0.0 gives that stretched input (the aligned output is always model-sized).
1.0, the default, is the restored face, byte for byte as without the option.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from interlcm.backend import Backend
from interlcm.choices import DEFAULT_STRENGTH, check_strength
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.faces.align import AlignedFace, align_face, eye_distance
from interlcm.faces.detect import Detection, Detector
from interlcm.faces.detectors import DEFAULT_DETECTOR, DetectorContext, open_detector, open_parser
from interlcm.faces.paste import PastedFace, larger_crop_inverse, paste_faces
from interlcm.imageio import to_uint8
from interlcm.limits import PixelLimits
from interlcm.upsampler import Upsamplers

DETECT_MIN_SIDE = 512  # the release enlarges photos with a shorter short side before detecting
MIN_EYE_DISTANCE = 5.0  # px, in the photo the detector saw (the release's eye_dist_threshold)
GRAY_THRESHOLD = 10.0  # mean variance of the channel differences below which a photo is gray (release)

# Restored (R, R, 3) uint8 RGB faces -> (R, R) float32 masks in [0, 1] (1 = face), e.g. ParseNet's.
FaceParser = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class PhotoOptions:
    aligned: bool = False  # inputs are aligned face crops (the release's --has_aligned)
    upscale: int = 2  # whole-photo mode: output canvas is the input times this (the release's default)
    only_center_face: bool = False  # whole-photo mode: keep the face nearest the image centre
    save_faces: bool = False  # also return the aligned restored faces
    keep_gray: bool = True  # whole-photo mode: a grayscale photo gets gray faces (not for the colorization variant)
    limits: PixelLimits = PixelLimits()  # largest photo read and made; checked on the file's header, before decoding
    strength: float = DEFAULT_STRENGTH  # mix of restored (1.0) and original (0.0) face; choices.STRENGTH_RANGE

    def __post_init__(self) -> None:
        check_strength(self.strength)

    @property
    def output_scale(self) -> int:
        """Output size over input size, per side, as the pixel limits count it (aligned crops: 1)."""
        return 1 if self.aligned else self.upscale


@dataclass
class PhotoResult:
    image: np.ndarray  # (H', W', 3) uint8 RGB: the restored photo (aligned mode: the restored crop)
    faces: list[np.ndarray] = field(default_factory=list)  # (R, R, 3) uint8 restored faces, if asked
    notes: list[str] = field(default_factory=list)  # one line each, e.g. which paste-back mask was used
    found: int = 0  # faces restored: detected and pasted back (whole photos), 1 (aligned crops)
    originals: list[np.ndarray] = field(default_factory=list)  # (R, R, 3) uint8 aligned input faces, with `faces`


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


def mix(original: np.ndarray, restored: np.ndarray, strength: float) -> np.ndarray:
    """Per-pixel mix of two (H, W, 3) uint8 images, as the paste-back blends: strength 1.0 is `restored`."""
    if strength == 1.0:
        return restored
    out = original.astype(np.float32) + np.float32(strength) * (restored.astype(np.float32) - original)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def is_gray(photo: np.ndarray, threshold: float = GRAY_THRESHOLD) -> bool:
    """The release's test: the channel differences barely vary ((H, W, 3) uint8 RGB)."""
    c = photo.astype(np.int16)
    diffs = (c[..., 0] - c[..., 1], c[..., 1] - c[..., 2], c[..., 2] - c[..., 0])
    return float(np.mean([d.var() for d in diffs])) <= threshold


def to_gray(face: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same shape, every channel the luma."""
    return np.repeat(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def detection_view(photo: np.ndarray) -> tuple[np.ndarray, float]:
    """The photo the detector sees, and its scale: short side enlarged to DETECT_MIN_SIDE if smaller."""
    short = min(photo.shape[:2])
    if short >= DETECT_MIN_SIDE:
        return photo, 1.0
    scale = DETECT_MIN_SIDE / short
    h, w = photo.shape[:2]
    size = (round(w * scale), round(h * scale))
    return cv2.resize(photo, size, interpolation=cv2.INTER_LINEAR), scale


def select_faces(detections: list[Detection], kind: str, shape: tuple[int, int], only_center: bool) -> list[Detection]:
    """Drop faces with eyes under MIN_EYE_DISTANCE px apart; with `only_center`, keep the face nearest the centre."""
    kept = [d for d in detections if eye_distance(d.landmarks, kind) >= MIN_EYE_DISTANCE]
    if only_center and kept:
        centre = np.array([shape[1] / 2, shape[0] / 2])
        kept = [min(kept, key=lambda d: float(np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - centre)))]
    return kept


class PhotoRestorer:
    """A restorer plus the photo-level options: turns photos into restored photos.

    Whole-photo mode needs a `detector`; `parser` (None: the soft box mask alone) refines the paste mask.
    """

    def __init__(
        self,
        restorer: Restorer,
        options: PhotoOptions,
        detector: Detector | None = None,
        parser: FaceParser | None = None,
        upsamplers: Upsamplers | None = None,
    ):
        if not options.aligned and detector is None:
            raise ValueError("whole-photo mode needs a face detector (or pass aligned=True for face crops)")
        self.restorer = restorer
        self.options = options
        self.detector = detector
        self.parser = parser
        # Real-ESRGAN for the background canvas and the restored faces (aligned mode: unused, as the release)
        self.upsamplers = upsamplers or Upsamplers()
        self.seconds: dict[str, float] = defaultdict(float)  # detect / align / restore / paste, summed

    def restore_photos(self, photos: Sequence[np.ndarray]) -> list[PhotoResult]:
        if self.options.aligned:
            restored = restore_faces(self.restorer, photos)
            size = self.restorer.config.resolution
            originals = [cv2.resize(p, (size, size), interpolation=cv2.INTER_LINEAR) if p.shape[:2] != (size, size)
                         else p for p in photos]  # what the model saw (to_model_input's stretch)
            keep = self.options.save_faces
            return [PhotoResult(mix(o, r, self.options.strength), [r] if keep else [], found=1,
                                originals=[o] if keep else []) for o, r in zip(originals, restored)]
        assert self.detector is not None
        with self._timed("detect"):
            found = self._detect(photos)
        with self._timed("align"):
            aligned = [[self._align(photo, d) for d in dets] for photo, dets in zip(photos, found)]
        flat = [face.image for faces in aligned for face in faces]
        with self._timed("restore"):
            restored = restore_faces(self.restorer, flat)  # every photo's faces, in full batches
        with self._timed("paste"):
            masks = self.parser(restored) if (self.parser is not None and restored) else [None] * len(restored)
            results, start = [], 0
            for photo, faces in zip(photos, aligned):
                mine = slice(start, start + len(faces))
                start += len(faces)
                results.append(self._paste(photo, faces, restored[mine], masks[mine]))
        return results

    def _detect(self, photos: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces of each photo, landmarks in the photo's own pixels, filtered as the options say."""
        assert self.detector is not None
        views = [detection_view(photo) for photo in photos]
        found = self.detector.detect([view for view, _ in views])
        kind = self.detector.landmark_kind
        out = []
        for (view, scale), dets in zip(views, found):
            kept = select_faces(dets, kind, view.shape[:2], self.options.only_center_face)
            out.append([Detection(d.box / scale, d.landmarks / scale, d.score) for d in kept])
        return out

    def _align(self, photo: np.ndarray, detection: Detection) -> AlignedFace:
        assert self.detector is not None
        return align_face(photo, detection.landmarks, self.detector.landmark_kind, self.restorer.config.resolution)

    def _paste(self, photo, aligned, restored, masks) -> PhotoResult:  # noqa: ANN001 - lists of the above
        gray = self.options.keep_gray and is_gray(photo)
        if gray:
            restored = [to_gray(face) for face in restored]
        inverses = [a.inverse for a in aligned]
        if self.upsamplers.face is not None and restored and self.options.upscale > 1:
            # the release's --face_upsample: each restored face enlarged by `upscale` before it is warped back
            s = self.options.upscale
            with self._timed("face upsample"):  # the photo's faces in one batch, split to the backend's
                restored = self.upsamplers.face.enhance_many(restored, outscale=s)
            inverses = [larger_crop_inverse(inverse, s) for inverse in inverses]
            side = restored[0].shape[0]
            masks = [None if m is None else cv2.resize(m, (side, side), interpolation=cv2.INTER_LINEAR) for m in masks]
        pasted = [PastedFace(face, inverse, mask) for inverse, face, mask in zip(inverses, restored, masks)]
        background = None
        if self.upsamplers.background is not None:  # the release's --bg_upsampler: Real-ESRGAN canvas
            with self._timed("background"):
                background = self.upsamplers.background.enhance(photo, outscale=self.options.upscale)
        image = paste_faces(photo, pasted, self.options.upscale, background, strength=self.options.strength)
        if not restored:
            notes = ["no face found: the photo is only upscaled"]
        elif self.parser is not None:
            notes = ["paste-back mask: soft box mask combined with the face-parsing mask"]
        else:
            notes = ["paste-back mask: soft box mask alone (no face parser)"]
        if gray and restored:
            notes.append("grayscale photo: faces kept gray")
        keep = self.options.save_faces
        return PhotoResult(image, list(restored) if keep else [], notes, found=len(restored),
                           originals=[a.image for a in aligned] if keep else [])

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


def open_photo_restorer(
    backend: Backend,
    options: RestoreOptions,
    photo: PhotoOptions,
    detector: str = DEFAULT_DETECTOR,
    weights: Path | None = None,
    timing: bool = False,
    upsamplers: Upsamplers | None = None,
) -> PhotoRestorer:
    """The one way the CLI, the Ray actors and the Serve replicas build a PhotoRestorer on an opened backend.

    Whole-photo mode opens `detector` (a one-line RuntimeError if it cannot run) and ParseNet
    when the backend has it (else the soft box mask alone, said in each result's notes).
    """
    found_by = parser = None
    if not photo.aligned:
        found_by = open_detector(detector, DetectorContext(weights=weights, backend=backend))
        parser = open_parser(backend)
    return PhotoRestorer(Restorer(backend, options, timing=timing), photo, found_by, parser, upsamplers=upsamplers)
