"""Photos in, photos out: the unit of work every front end shares.

The single-process CLI, the Ray Data job, the Ray Serve endpoint and the video
path all hand a list of decoded photos (``(H, W, 3)`` uint8 RGB arrays) to
:meth:`PhotoRestorer.restore_photos` and get one :class:`PhotoResult` per photo.
Faces of all the photos in a call are restored together in batches of the
restorer's batch size; since every face gets the same seeded noise (see the
spec's "Seeded noise"), how photos are grouped never changes a result.

The work comes in three stages: `prepare` (CPU, per photo), `run_device` (detect, align,
restore, parse, upsample: the backend's device, photos together) and `finish` (paste-back,
per photo). `restore_photos` runs them in turn; interlcm.engines.pipeline overlaps them.

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

import threading
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
    """The release's test: the channel differences barely vary ((H, W, 3) uint8 RGB).

    OpenCV's signed differences and moments: numpy's int16 copy and two-pass variance took 4x as long
    on a 12 Mpx photo, for the same value (to 1e-15).
    """
    r, g, b = cv2.split(photo)
    variances = []
    for x, y in ((r, g), (g, b), (b, r)):
        _, std = cv2.meanStdDev(cv2.subtract(x, y, dtype=cv2.CV_16S))
        variances.append(float(std[0, 0]) ** 2)
    return float(np.mean(variances)) <= threshold


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


@dataclass
class PhotoInput:
    """A photo ready for the device stages: `PhotoRestorer.prepare`'s output (CPU work)."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    gray: bool = False  # whole-photo mode with keep_gray: the photo is grayscale, so its faces will be


@dataclass
class FacesRestored:
    """One photo after the device stages: what paste-back needs (`PhotoRestorer.run_device`'s output)."""

    photo: PhotoInput
    pasted: list[PastedFace] = field(default_factory=list)  # whole-photo mode: restored faces, where they go
    faces: list[np.ndarray] = field(default_factory=list)  # (R', R', 3) uint8 faces as pasted (gray, upsampled)
    background: np.ndarray | None = None  # Real-ESRGAN's upscaled photo (--bg-upsampler), else None
    originals: list[np.ndarray] = field(default_factory=list)  # (R, R, 3) uint8 aligned input faces, if save_faces


class PhotoRestorer:
    """A restorer plus the photo-level options: turns photos into restored photos.

    Whole-photo mode needs a `detector`; `parser` (None: the soft box mask alone) refines the paste mask.
    The work comes in three stages, which `restore_photos` runs one after the other and
    `interlcm.engines.pipeline` overlaps: `prepare` (CPU, per photo), `run_device` (the backend's
    device: detect, align, restore, parse, upsample; photos together), `finish` (paste-back, per photo).
    `warp_device`: align and paste with torch on this device (the backend's, when it is a GPU);
    None: OpenCV on the CPU.
    """

    def __init__(
        self,
        restorer: Restorer,
        options: PhotoOptions,
        detector: Detector | None = None,
        parser: FaceParser | None = None,
        upsamplers: Upsamplers | None = None,
        warp_device: torch.device | None = None,
    ):
        if not options.aligned and detector is None:
            raise ValueError("whole-photo mode needs a face detector (or pass aligned=True for face crops)")
        self.restorer = restorer
        self.options = options
        self.detector = detector
        self.parser = parser
        # Real-ESRGAN for the background canvas and the restored faces (aligned mode: unused, as the release)
        self.upsamplers = upsamplers or Upsamplers()
        self.warp_device = warp_device
        self.seconds: dict[str, float] = defaultdict(float)  # detect / align / restore / parse / paste, summed
        self._seconds_lock = threading.Lock()  # stages of several photos may run at once (pipeline.py)

    def restore_photos(self, photos: Sequence[np.ndarray]) -> list[PhotoResult]:
        """The three stages one after the other: (H, W, 3) uint8 RGB photos -> one result each."""
        return [self.finish(item) for item in self.run_device([self.prepare(photo) for photo in photos])]

    def prepare(self, photo: np.ndarray) -> PhotoInput:
        """CPU work before the device: is the photo grayscale (whole-photo mode, keep_gray)."""
        if self.options.aligned or not self.options.keep_gray:
            return PhotoInput(photo)
        with self._timed("gray test"):
            return PhotoInput(photo, is_gray(photo))

    def run_device(self, photos: Sequence[PhotoInput]) -> list[FacesRestored]:
        """Detect, align, restore (every photo's faces in full batches), parse and upsample."""
        if self.options.aligned:
            restored = restore_faces(self.restorer, [p.pixels for p in photos])
            return [FacesRestored(photo, faces=[face]) for photo, face in zip(photos, restored)]
        assert self.detector is not None
        with self._timed("detect"):
            found = self._detect([p.pixels for p in photos])
        with self._timed("align"):
            aligned = [[self._align(p.pixels, d) for d in dets] for p, dets in zip(photos, found)]
        flat = [face.image for faces in aligned for face in faces]
        with self._timed("restore"):
            restored = restore_faces(self.restorer, flat)  # every photo's faces, in full batches
        with self._timed("parse"):
            masks = self.parser(restored) if (self.parser is not None and restored) else [None] * len(restored)
        results, start = [], 0
        for photo, faces in zip(photos, aligned):
            mine = slice(start, start + len(faces))
            start += len(faces)
            results.append(self._faces_to_paste(photo, faces, restored[mine], masks[mine]))
        return results

    def finish(self, item: FacesRestored) -> PhotoResult:
        """Paste the restored faces back (whole-photo mode); the photo's result."""
        keep = self.options.save_faces
        if self.options.aligned:
            size = self.restorer.config.resolution
            original = item.photo.pixels  # what the model saw (to_model_input's stretch)
            if original.shape[:2] != (size, size):
                original = cv2.resize(original, (size, size), interpolation=cv2.INTER_LINEAR)
            restored = item.faces[0]
            return PhotoResult(mix(original, restored, self.options.strength), [restored] if keep else [], found=1,
                               originals=[original] if keep else [])
        photo = item.photo.pixels
        with self._timed("paste"):
            image = paste_faces(photo, item.pasted, self.options.upscale, item.background,
                                strength=self.options.strength, device=self.warp_device)
        if not item.pasted:
            notes = ["no face found: the photo is only upscaled"]
        elif self.parser is not None:
            notes = ["paste-back mask: soft box mask combined with the face-parsing mask"]
        else:
            notes = ["paste-back mask: soft box mask alone (no face parser)"]
        if item.photo.gray and item.pasted:
            notes.append("grayscale photo: faces kept gray")
        return PhotoResult(image, list(item.faces) if keep else [], notes, found=len(item.pasted),
                           originals=list(item.originals))

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
        resolution = self.restorer.config.resolution
        return align_face(photo, detection.landmarks, self.detector.landmark_kind, resolution, self.warp_device)

    def _faces_to_paste(
        self, photo: PhotoInput, aligned: list[AlignedFace], restored: list[np.ndarray], masks: list[np.ndarray | None]
    ) -> FacesRestored:
        """The device work after restoring: gray faces for gray photos, Real-ESRGAN on faces and background."""
        if photo.gray:
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
        background = None
        if self.upsamplers.background is not None:  # the release's --bg_upsampler: Real-ESRGAN canvas
            with self._timed("background"):
                background = self.upsamplers.background.enhance(photo.pixels, outscale=self.options.upscale)
        pasted = [PastedFace(face, inverse, mask) for inverse, face, mask in zip(inverses, restored, masks)]
        originals = [a.image for a in aligned] if self.options.save_faces else []
        return FacesRestored(photo, pasted, list(restored), background, originals)

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._seconds_lock:
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
    when the backend has it (else the soft box mask alone, said in each result's notes). On a GPU
    backend, alignment and paste-back run there too (torch warps); on the CPU, OpenCV's.
    """
    found_by = parser = None
    if not photo.aligned:
        found_by = open_detector(detector, DetectorContext(weights=weights, backend=backend))
        parser = open_parser(backend)
    return PhotoRestorer(Restorer(backend, options, timing=timing), photo, found_by, parser, upsamplers=upsamplers,
                         warp_device=warp_device_for(backend))


def warp_device_for(backend: Backend) -> torch.device | None:
    """Where alignment and paste-back warp: the backend's GPU; on the CPU, OpenCV (None), which is faster there."""
    return backend.device if backend.device.type == "cuda" else None
