"""Pasting restored faces back into the photo, upscaled by `upscale`, with a seamless soft mask.

As the release (CodeFormer's ``FaceRestoreHelper.paste_faces_to_input_image``), with two fixes:

* Pixel centres: canvas pixel ``j`` covers photo coordinate ``(j + 0.5) / s - 0.5`` (OpenCV's
  resize convention), so the inverse affine is scaled by ``s`` and shifted by ``(s - 1) / 2``;
  the release shifts by ``s / 2``, half a canvas pixel off.
* Colours at the edge: the release multiplies the warped face (black outside the crop) by the
  hard mask before blending. Here only the soft mask weighs the face, and the face is warped with
  replicated borders, so no black from outside the crop can reach the blend even where the mask
  does (the soft mask's erosion normally keeps it off the crop's last pixels anyway).
* The photo's edge: see ``align.align_face`` (crop pixels on the photo's edge are not part grey).

The soft mask is the release's: the crop's footprint, eroded by ``2 * upscale`` px, eroded again
by ``2 * w`` and blurred over ``2 * w + 1`` px, where ``w = sqrt(footprint area) // 20``. A face
parser's mask, when given, is combined with it by taking the smaller value per pixel (the release's
"fuse"). Work is done on each face's bounding box, not the whole canvas.

`strength` (interlcm.choices.STRENGTH_RANGE) scales every face's blend mask: 1.0 pastes the restored
face as above, 0.0 leaves the canvas (the upscaled photo) unchanged, values between mix per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PastedFace:
    image: np.ndarray  # (R, R, 3) uint8 RGB restored face
    inverse: np.ndarray  # (2, 3): crop pixel -> photo pixel (AlignedFace.inverse)
    parse_mask: np.ndarray | None = None  # (R, R) float32 in [0, 1], 1 = face; None: soft box mask only


def upscale_photo(photo: np.ndarray, upscale: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (s H, s W, 3) uint8, bilinear: the background of the output."""
    if upscale == 1:
        return photo.copy()
    h, w = photo.shape[:2]
    return cv2.resize(photo, (w * upscale, h * upscale), interpolation=cv2.INTER_LINEAR)


def larger_crop_inverse(inverse: np.ndarray, scale: int) -> np.ndarray:
    """(2, 3) crop -> photo affine for the same crop enlarged `scale` times (pixel centres kept).

    A face upscaled before paste-back (the release's --face_upsample) is a crop `scale` times
    larger: its pixel p sits at crop coordinate (p + 0.5) / scale - 0.5.
    """
    offset = (1.0 / scale - 1.0) / 2.0
    linear = inverse[:, :2] / scale
    return np.concatenate([linear, inverse[:, :2] @ np.array([[offset], [offset]]) + inverse[:, 2:]], axis=1)


def canvas_inverse(inverse: np.ndarray, upscale: int) -> np.ndarray:
    """(2, 3) crop -> photo affine turned into crop -> upscaled-canvas pixels (pixel centres kept)."""
    return np.concatenate([inverse[:, :2] * upscale, inverse[:, 2:] * upscale + 0.5 * (upscale - 1)], axis=1)


def paste_faces(
    photo: np.ndarray,
    faces: Sequence[PastedFace],
    upscale: int,
    background: np.ndarray | None = None,
    strength: float = 1.0,
) -> np.ndarray:
    """Blend restored faces into the photo upscaled by `upscale`; (H, W, 3) uint8 -> (s H, s W, 3) uint8.

    `background`: the upscaled photo to paste onto (e.g. Real-ESRGAN's); default bilinear.
    `strength`: the blend masks are scaled by it (1.0: the restored faces, 0.0: the canvas unchanged).
    """
    canvas = upscale_photo(photo, upscale) if background is None else background
    if canvas.shape[:2] != (photo.shape[0] * upscale, photo.shape[1] * upscale):
        raise ValueError(f"background {canvas.shape[:2]} is not the photo {photo.shape[:2]} times {upscale}")
    if not faces:
        return canvas
    out = canvas.astype(np.float32)
    for face in faces:
        _blend_one(out, face, upscale, strength)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _blend_one(canvas: np.ndarray, face: PastedFace, upscale: int, strength: float = 1.0) -> None:
    """Blend one face into `canvas` ((H', W', 3) float32), in place, inside the face's bounding box."""
    res = face.image.shape[0]
    matrix = canvas_inverse(face.inverse, upscale)
    box = _footprint_box(matrix, res, canvas.shape[:2])
    if box is None:  # the crop lies wholly outside the photo
        return
    x0, y0, x1, y1 = box
    local = matrix.copy()
    local[:, 2] -= (x0, y0)  # warp straight into the box
    size = (x1 - x0, y1 - y0)

    footprint = cv2.warpAffine(np.ones((res, res), np.float32), local, size, flags=cv2.INTER_LINEAR)
    hard = cv2.erode(footprint, np.ones((2 * upscale, 2 * upscale), np.uint8))
    edge = int(np.sqrt(hard.sum())) // 20
    mask = hard
    if edge > 0:
        mask = cv2.erode(hard, np.ones((2 * edge, 2 * edge), np.uint8))
        mask = cv2.GaussianBlur(mask, (2 * edge + 1, 2 * edge + 1), 0)
    if face.parse_mask is not None:
        parsed = cv2.warpAffine(face.parse_mask.astype(np.float32), local, size, flags=cv2.INTER_LINEAR)
        mask = np.minimum(mask, parsed)

    restored = cv2.warpAffine(
        face.image.astype(np.float32), local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    if strength != 1.0:  # the user's mix of restored and original (1.0: the mask as it is, byte for byte)
        mask = mask * np.float32(strength)
    region = canvas[y0:y1, x0:x1]
    region += mask[..., None] * (restored - region)


def _footprint_box(matrix: np.ndarray, res: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Integer (x0, y0, x1, y1) on the canvas covering the warped crop, clipped to the canvas.

    Bilinear warping spreads the crop's outermost pixels by one crop pixel, i.e. `scale` canvas
    pixels, so the box gets that margin plus one.
    """
    corners = np.array([[0, 0, 1], [res - 1, 0, 1], [0, res - 1, 1], [res - 1, res - 1, 1]], np.float64)
    xy = corners @ matrix.T  # (4, 2)
    margin = int(np.ceil(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))) + 1
    h, w = shape
    x0, y0 = np.floor(xy.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + margin + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return int(x0), int(y0), int(x1), int(y1)
