"""Test inputs shared by the test suite and `interlcm-trt check`-style tools."""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction

import cv2
import numpy as np
import torch
from PIL import Image

from interlcm.faces.align import eye_distance, template
from interlcm.faces.detect import Detection
from interlcm.imageio import SOURCE_KEY


def photo(resolution: int, batch: int = 1) -> torch.Tensor:
    """Real face crops from scikit-image's astronaut photo, (B, 3, R, R) in [-1, 1]."""
    from skimage import data  # scikit-image ships the photo (a dev dependency)

    img = data.astronaut()  # 512x512 RGB, the face is near the top middle
    crops = [img[10:230, 120:340], img[0:256, 100:356], img[30:210, 150:330], img[256:512, 0:256]]
    out = []
    for crop in crops[:batch]:
        pil = Image.fromarray(np.ascontiguousarray(crop)).resize((resolution, resolution), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


def write_clip(
    path,
    frames,
    fps: int = 8,
    audio_rate: int | None = 16000,
    codec: str = "libx264",
    *,
    times: list[float] | None = None,
    rotation: int = 0,
    hflip: bool = False,
) -> None:
    """Encode (H, W, 3) uint8 RGB frames into a video at `fps`, with a 440 Hz AAC tone of equal length.

    `times`: each frame's presentation time in seconds (a variable frame rate; default i / fps).
    `rotation`, `hflip`: the display matrix players apply, as PyAV's `set_display_rotation` takes it
    (degrees counter-clockwise, then a mirror): a phone's portrait clip has rotation -90 ("rotate 90").
    """

    import av

    frames = list(frames)
    times = [i / fps for i in range(len(frames))] if times is None else list(times)
    on_the_rate = all(abs(t * fps - round(t * fps)) < 1e-9 for t in times)  # frames skipped, none in between
    time_base = Fraction(1, fps) if on_the_rate else Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.codec_context.time_base = time_base
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        if rotation or hflip:
            video.set_display_rotation(rotation, hflip=hflip)
        sound = out.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        for img, t in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = round(t / time_base), time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            n = round(audio_rate * (times[-1] + 1 / fps))
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / audio_rate)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = audio_rate, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))


# The astronaut's head in scikit-image's 512x512 photo: rows 20-260, cols 110-340 (240 x 230 px).
_HEAD = (slice(20, 260), slice(110, 340))


def group_photo(
    size: tuple[int, int] = (1024, 768), heads: tuple[tuple[float, float, float, float], ...] | None = None
) -> np.ndarray:
    """A synthetic group photo: the astronaut's head pasted several times onto a smooth background.

    `size` is (width, height); each head is (centre x, centre y, height in px, rotation in degrees),
    centres as fractions of the photo. Returns (H, W, 3) uint8 RGB. Default: four heads at different
    scales and tilts.
    """
    from skimage import data

    width, height = size
    heads = heads or ((0.2, 0.35, 220, 0), (0.5, 0.4, 170, 12), (0.8, 0.35, 250, -10), (0.45, 0.8, 130, 5))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas = np.stack([90 + 60 * xx / width, 110 + 40 * yy / height, 140 - 50 * xx / width], axis=2)
    head = data.astronaut()[_HEAD].astype(np.float32)
    for cx, cy, side, angle in heads:
        scale = side / head.shape[0]
        centre = (head.shape[1] / 2, head.shape[0] / 2)
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)
        matrix[:, 2] += (cx * width - centre[0], cy * height - centre[1])
        pasted = cv2.warpAffine(head, matrix, (width, height), flags=cv2.INTER_LINEAR)
        footprint = cv2.warpAffine(np.ones(head.shape[:2], np.float32), matrix, (width, height))
        canvas = footprint[..., None] * pasted + (1 - footprint[..., None]) * canvas
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def face_landmarks(centre: tuple[float, float], eye_gap: float, angle_deg: float, kind: str = "retinaface") -> np.ndarray:
    """(5, 2) float32 landmarks of a face centred at `centre` with eyes `eye_gap` px apart, tilted by `angle_deg`.

    The alignment template placed in the photo by a chosen similarity transform: a stand-in
    for a detector that knows exactly where its faces are.
    """

    tpl = template(kind, 512)
    scale = eye_gap / eye_distance(tpl, kind)
    t = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return ((tpl - 256.0) @ rot.T + np.asarray(centre)).astype(np.float32)


def pixel_bomb_png(width: int, height: int, source: str | None = None) -> bytes:
    """A PNG file of a few hundred bytes whose header says ``width`` x ``height`` RGB pixels
    (recording ``source`` as this project's outputs record their input, when given).

    Its image data holds only the first rows (a real bomb compresses every row of zeros): enough
    for any reader that checks the header's size before decoding, which is what it tests.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    text = b"" if source is None else chunk(b"tEXt", SOURCE_KEY.encode() + b"\0" + source.encode())
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


class PlacedFaces:
    """A face detector that knows where its faces are: (centre x, centre y, eye gap, tilt in degrees) per face,
    x, y and the gap as fractions of the photo's width. Random detector weights find no faces; this finds these,
    so tests can restore whole photos with several faces on any backend."""

    landmark_kind = "retinaface"

    def __init__(self, *faces: tuple[float, float, float, float]):
        self.faces = faces
        self.seen: list[tuple[int, ...]] = []  # shapes of the photos it was given

    def detect(self, photos):

        out = []
        for photo in photos:
            self.seen.append(photo.shape)
            w = photo.shape[1]
            found = []
            for cx, cy, gap, angle in self.faces:
                lm = face_landmarks((cx * w, cy * w), gap * w, angle)
                found.append(Detection(np.r_[lm.min(0), lm.max(0)], lm, 1.0))
            out.append(found)
        return out
