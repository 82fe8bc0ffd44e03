"""Aligning a face: 5 landmarks -> similarity transform -> a square crop at the model resolution.

Both templates are the release's (sen-mao/InterLCM vendors CodeFormer's ``FaceRestoreHelper``,
``facelib/utils/face_restoration_helper.py``), given for a 512 px crop and scaled to the model
resolution (64 px for ``tiny``):

* ``retinaface``: facexlib's FFHQ 5-point template (eye centres, nose tip, mouth corners).
* ``dlib5``: the FFHQ-1024 template for dlib's 5 points, halved as the release halves it
  (``face_template / (1024 // 512)``). dlib's points are the two corners of each eye and the
  base of the nose, in dlib's order: image-right eye outer, inner; image-left eye outer, inner;
  nose base.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from interlcm.faces.warp import warp_affine

# (5, 2) x, y in a 512 x 512 crop, in each detector's landmark order (see the module docstring)
TEMPLATES_512: dict[str, np.ndarray] = {
    "retinaface": np.array(
        [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
         [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32),
    "dlib5": np.array(
        [[686.77227723, 488.62376238], [586.77227723, 493.59405941], [337.91089109, 488.38613861],
         [437.95049505, 493.51485149], [513.58415842, 678.50495050]], dtype=np.float32) / 2.0,
}

# The release warps BGR images with borderValue=(135, 133, 132); in our RGB order that grey is:
BORDER_RGB = (132, 133, 135)

# Landmark indices that make up each eye, per landmark kind: an eye is the mean of its points.
_EYES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "retinaface": ((0,), (1,)),
    "dlib5": ((2, 3), (0, 1)),  # image-left eye = points 2, 3; image-right eye = points 0, 1
}


def template(kind: str, resolution: int) -> np.ndarray:
    """(5, 2) float32 target landmarks for a `resolution` x `resolution` crop."""
    try:
        base = TEMPLATES_512[kind]
    except KeyError:
        raise ValueError(f"no alignment template for landmark kind {kind!r}: known {sorted(TEMPLATES_512)}") from None
    return base * (resolution / 512.0)


def eye_distance(landmarks: np.ndarray, kind: str) -> float:
    """Distance in pixels between the two eye centres of (5, 2) landmarks of the given kind.

    The release's vendored helper reads the wrong fields for its eye-distance check: its detection
    rows are (x0, y0, x1, y1, score, then x, y per landmark), so the eyes are columns 5..8, but it
    takes norm(row[6] - row[8], row[7] - row[9]), i.e. (left-eye y - right-eye y, right-eye x -
    right-eye y), a number unrelated to the eye distance. Here the eyes are picked by name.
    """
    left, right = (landmarks[list(idx)].mean(axis=0) for idx in _EYES[kind])
    return float(np.linalg.norm(right - left))


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray  # (R, R, 3) uint8 RGB crop
    affine: np.ndarray  # (2, 3) float64: photo pixel -> crop pixel
    inverse: np.ndarray  # (2, 3) float64: crop pixel -> photo pixel


def align_face(
    photo: np.ndarray, landmarks: np.ndarray, kind: str, resolution: int, device: torch.device | None = None
) -> AlignedFace:
    """Warp the face with these (5, 2) landmarks out of an (H, W, 3) uint8 photo onto the template.

    Similarity fit (rotation, uniform scale, translation) with least-median-of-squares, as the
    release; bilinear warp; outside the photo the release's grey. One deviation: the release warps
    with a constant grey border, so crop pixels sampled within half a pixel of the photo's edge
    are part grey, and pasting them back stains the photo's edge (up to 19 levels at upscale 2).
    Here such pixels take the photo's edge colour; only pixels outside the photo are grey.

    `device`: warp with torch there (a GPU; only the part of the photo under the crop travels);
    None: OpenCV on the CPU. The two agree within one level (float rounding before the uint8 one).
    """
    affine, _ = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, np.float32), template(kind, resolution), method=cv2.LMEDS
    )
    if affine is None:  # degenerate landmarks (all on one point)
        raise ValueError("cannot fit an alignment to these landmarks (degenerate points)")
    inverse = cv2.invertAffineTransform(affine)
    if device is None:
        crop = cv2.warpAffine(photo, affine, (resolution, resolution), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        crop = _warp_on(device, photo, affine, inverse, resolution)
    crop[~_inside_photo(inverse, resolution, photo.shape[:2])] = BORDER_RGB
    return AlignedFace(crop, affine, inverse)


def _warp_on(device: torch.device, photo: np.ndarray, affine: np.ndarray, inverse: np.ndarray, resolution: int) -> np.ndarray:
    """cv2.warpAffine(photo, affine, (R, R), INTER_LINEAR, BORDER_REPLICATE) by torch on `device`.

    Only the photo's pixels under the crop (and their bilinear neighbours) are sent. Where the crop
    overhangs the photo, that rectangle reaches the photo's edge, so replicating its border is
    replicating the photo's.
    """
    corners = np.array([[0, 0, 1], [resolution - 1, 0, 1], [0, resolution - 1, 1], [resolution - 1, resolution - 1, 1]], np.float64)
    xy = corners @ inverse.T  # (4, 2) photo coordinates of the crop's corner pixels
    h, w = photo.shape[:2]
    x0, y0 = np.clip(np.floor(xy.min(axis=0)).astype(int) - 1, 0, (w - 1, h - 1))
    x1, y1 = np.clip(np.ceil(xy.max(axis=0)).astype(int) + 2, (x0 + 1, y0 + 1), (w, h))
    local = affine.copy()
    local[:, 2] += affine[:, :2] @ (x0, y0)  # rectangle pixel -> crop pixel
    part = torch.from_numpy(np.ascontiguousarray(photo[y0:y1, x0:x1])).to(device).permute(2, 0, 1).float()
    crop = warp_affine(part, local, (resolution, resolution), "border")
    return crop.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _inside_photo(inverse: np.ndarray, resolution: int, shape: tuple[int, int]) -> np.ndarray:
    """(R, R) bool: crop pixels whose source point lies on the photo, grown by one crop pixel.

    The photo's pixels cover [-0.5, W - 0.5]; paste-back interpolates between neighbouring crop
    pixels, so the crop pixels one step beyond that extent must carry photo colours too.
    """
    ys, xs = np.mgrid[0:resolution, 0:resolution].astype(np.float32)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    margin = 0.5 + float(np.sqrt(abs(np.linalg.det(inverse[:, :2]))))  # photo px per crop px
    h, w = shape
    return (src_x >= -margin) & (src_x <= w - 1 + margin) & (src_y >= -margin) & (src_y <= h - 1 + margin)
