"""Videos in, videos out: decode, restore through the photo seam, encode, keep the audio.

Frames are decoded one packet at a time (PyAV, which ships its own ffmpeg), restored
``frames_per_batch`` at a time through :meth:`PhotoRestorer.restore_photos` (so the faces of
several frames share a model batch), and encoded at once: memory holds one batch of frames,
not the video. The output has the input's frame rate and frame count; the first audio stream is
copied packet by packet, unchanged (no re-encoding). A frame with no face comes back from the
photo restorer upscaled, so it is kept, never dropped.

Every frame gets the same seeded noise (the spec's contract), so a still face does not flicker
from noise (benchmarks/video_flicker.py measures it).

Nothing half-written under the final name: the video is written to a hidden temporary name
next to it and renamed at the end; any failure removes the temporary file.

Timestamps: frames are written at a constant rate (the input's average rate), so a
variable-frame-rate input comes out constant-rate with the same number of frames.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})

# container suffix -> (ffmpeg muxer, video encoder, encoder options). The output keeps the input's
# container, so the copied audio codec is one that container already held.
_OUTPUT_FORMATS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", {"crf": "18", "preset": "medium"}),
    ".mov": ("mov", "libx264", {"crf": "18", "preset": "medium"}),
    ".mkv": ("matroska", "libx264", {"crf": "18", "preset": "medium"}),
    ".avi": ("avi", "mpeg4", {"qscale": "2"}),
    ".webm": ("webm", "libvpx-vp9", {"crf": "30", "b": "0"}),
}


class VideoError(RuntimeError):
    """A video that cannot be read or written; the message is one line naming the file and the fix."""


class PhotoRestoring(Protocol):
    """What the video path needs of `interlcm.engines.photo.PhotoRestorer`."""

    def restore_photos(self, photos: Sequence[np.ndarray]) -> list[Any]: ...  # each result has .image


@dataclass(frozen=True)
class VideoOptions:
    frames_per_batch: int = 8  # frames handed to restore_photos at once (bounds memory)
    progress: bool = True


@dataclass
class VideoReport:
    output: Path
    frames: int
    fps: Fraction
    size: tuple[int, int]  # output (width, height)
    audio_packets: int
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # per stage, whole video


def is_video(path: Path | str) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def read_video_source(path: Path) -> str | None:
    """The input id a video written by `restore_video(..., source=...)` records in its container comment."""
    import av

    from interlcm.imageio import parse_source_tag

    try:
        with av.open(os.fspath(path)) as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}
    except (av.error.FFmpegError, OSError, ValueError):
        return None
    return parse_source_tag(tags.get("comment"))


def restore_video(
    photo: PhotoRestoring,
    src: Path,
    dst: Path,
    options: VideoOptions = VideoOptions(),
    *,
    frames_dir: Path | None = None,
    source: str | None = None,
) -> VideoReport:
    """Restore every frame of `src` into the video `dst` (named by engines/outputs.py, same container as
    `src`), each frame also into `frames_dir` when given; `source` (the input's id) is recorded in the
    container comment and each frame. Raises VideoError, leaving no output, on failure."""
    import av

    src, dst = Path(src), Path(dst)
    suffix = src.suffix.lower()
    if suffix not in _OUTPUT_FORMATS:
        raise VideoError(f"{src}: unsupported video type {suffix!r}; use one of {', '.join(sorted(VIDEO_EXTENSIONS))}")
    if dst.suffix.lower() != suffix:
        raise ValueError(f"the output {dst} of {src} must keep its container ({src.suffix})")
    if dst.exists() and os.path.samefile(dst, src):  # by identity: case-insensitive file systems too
        raise VideoError(f"output {dst} would overwrite the input {src}: choose another --out")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.{uuid.uuid4().hex[:8]}.part{suffix}")
    try:
        report = _transcode(photo, src, tmp, dst, options, frames_dir, source)
        os.replace(tmp, dst)
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"cannot read {src}: {_one_line(exc)}; is it a complete, playable video? (re-export or re-download it)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _one_line(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _transcode(
    photo: PhotoRestoring, src: Path, tmp: Path, dst: Path, options: VideoOptions, frames_dir: Path | None,
    source: str | None,
) -> VideoReport:
    import av
    from tqdm import tqdm

    fmt, codec, codec_options = _OUTPUT_FORMATS[src.suffix.lower()]
    with av.open(os.fspath(src)) as inp:
        if not inp.streams.video:
            raise VideoError(f"{src} has no video stream: nothing to restore")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        fps = vin.average_rate or vin.guessed_rate
        if not fps:
            raise VideoError(f"{src} does not say its frame rate; remux it with ffmpeg (-r) first")
        ain = inp.streams.audio[0] if inp.streams.audio else None
        expected = vin.frames  # from the container header; 0 when it does not say
        writer = _Writer(tmp, fmt, codec, codec_options, Fraction(fps), ain, source)
        report = VideoReport(dst, 0, Fraction(fps), (0, 0), 0)
        pending: list[np.ndarray] = []
        bar = tqdm(total=expected or None, unit="frame", disable=not options.progress, desc=src.name)

        def flush() -> None:
            if not pending:
                return
            start = time.perf_counter()
            images = [r.image for r in photo.restore_photos(pending)]
            report.seconds["photos"] += time.perf_counter() - start  # detect + align + restore + paste
            start = time.perf_counter()
            for img in images:
                writer.write(img)
                if frames_dir is not None:
                    _save_frame(frames_dir, report.frames + 1, img, source)
                report.frames += 1
            report.seconds["encode"] += time.perf_counter() - start
            bar.update(len(pending))
            pending.clear()

        with bar, writer:
            streams = [vin] + ([ain] if ain is not None else [])
            start = time.perf_counter()
            for packet in inp.demux(*streams):
                if packet.stream is ain:
                    writer.audio(packet)
                    continue
                for frame in packet.decode():
                    pending.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
                report.seconds["decode"] += time.perf_counter() - start
                if len(pending) >= options.frames_per_batch:
                    flush()
                start = time.perf_counter()
            flush()
            writer.close()
        if report.frames == 0:
            raise VideoError(f"{src}: no frame could be decoded; is it a complete video?")
        if expected and report.frames != expected:
            raise VideoError(
                f"{src} is truncated: decoded {report.frames} of the {expected} frames its header lists; "
                "re-export or re-download it"
            )
        report.size = writer.size
        report.audio_packets = writer.audio_packets
    _merge_stage_seconds(report, photo)
    return report


def _merge_stage_seconds(report: VideoReport, photo: PhotoRestoring) -> None:
    """Add the photo restorer's own stage times (detect, paste ...), when it keeps them."""
    for stage, secs in (getattr(photo, "seconds", None) or {}).items():
        report.seconds[stage] += secs


def _save_frame(folder: Path, index: int, img: np.ndarray, source: str | None) -> None:
    from interlcm.imageio import write_image

    write_image(folder / f"{index:06d}.png", img, source=source)


class _Writer:
    """The output container, opened at the first restored frame (its size is the restorer's output).

    Audio packets that arrive before that are held (at most one batch of frames' worth), then
    muxed in order; after it they are muxed as they come.
    """

    def __init__(self, path: Path, fmt: str, codec: str, codec_options: dict[str, str], fps: Fraction, ain,  # noqa: ANN001
                 source: str | None = None):
        self.path, self.fmt, self.codec, self.codec_options, self.fps, self.ain = path, fmt, codec, codec_options, fps, ain
        self.source = source
        self.out = None
        self.vout = self.aout = None
        self.held: list = []
        self.index = 0
        self.size = (0, 0)
        self.audio_packets = 0

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        if self.out is not None:
            self.out.close()
            self.out = None

    def _open(self, img: np.ndarray) -> None:
        import av

        h, w = img.shape[:2]
        self.out = av.open(os.fspath(self.path), "w", format=self.fmt)
        if self.source is not None:  # which input this is a restoration of (engines/outputs.py)
            from interlcm.imageio import source_tag

            self.out.metadata["comment"] = source_tag(self.source)
        self.vout = self.out.add_stream(self.codec, rate=self.fps, options=self.codec_options)
        self.vout.width, self.vout.height = w, h
        # 4:2:0 needs even sides; odd ones keep full chroma (x264 supports it, players mostly do)
        self.vout.pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
        self.size = (w, h)
        if self.ain is not None:
            self.aout = self.out.add_stream_from_template(self.ain)
        for packet in self.held:
            self._mux_audio(packet)
        self.held.clear()

    def write(self, img: np.ndarray) -> None:
        import av

        if self.out is None:
            self._open(img)
        if img.shape[1::-1] != self.size:
            raise VideoError(
                f"restored frame {self.index + 1} is {img.shape[1]}x{img.shape[0]}, earlier ones "
                f"{self.size[0]}x{self.size[1]}: every frame must come back at one size"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = self.index  # constant rate: the stream's time base is 1 / fps
        self.index += 1
        for packet in self.vout.encode(frame):
            self.out.mux(packet)

    def audio(self, packet) -> None:  # noqa: ANN001 - av.Packet
        if packet.dts is None:  # the demuxer's end-of-stream flush packet carries no data
            return
        if self.out is None:
            self.held.append(packet)
        else:
            self._mux_audio(packet)

    def _mux_audio(self, packet) -> None:  # noqa: ANN001
        packet.stream = self.aout
        self.out.mux(packet)
        self.audio_packets += 1

    def close(self) -> None:
        if self.out is None:
            return
        for packet in self.vout.encode(None):  # drain the encoder's delayed frames
            self.out.mux(packet)
        self.out.close()
        self.out = None
