"""Test inputs shared by the test suite and `interlcm-trt check`-style tools."""

from __future__ import annotations

import numpy as np
import torch


def photo(resolution: int, batch: int = 1) -> torch.Tensor:
    """Real face crops from scikit-image's astronaut photo, (B, 3, R, R) in [-1, 1]."""
    from PIL import Image
    from skimage import data  # scikit-image ships the photo (a dev dependency)

    img = data.astronaut()  # 512x512 RGB, the face is near the top middle
    crops = [img[10:230, 120:340], img[0:256, 100:356], img[30:210, 150:330], img[256:512, 0:256]]
    out = []
    for crop in crops[:batch]:
        pil = Image.fromarray(np.ascontiguousarray(crop)).resize((resolution, resolution), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


def write_clip(path, frames, fps: int = 8, audio_rate: int | None = 16000, codec: str = "libx264") -> None:  # noqa: ANN001
    """Encode (H, W, 3) uint8 RGB frames into a video at `fps`, with a 440 Hz AAC tone of equal length."""
    import av

    frames = list(frames)
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            n = audio_rate * len(frames) // fps
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / audio_rate)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = audio_rate, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
