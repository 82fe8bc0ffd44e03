"""Videos in, videos out: decode, turn upright, restore through the photo seam, encode, copy the rest.

Frames are decoded one packet at a time (PyAV, which ships its own ffmpeg), restored
``frames_per_batch`` at a time through :meth:`PhotoRestorer.restore_photos` (so the faces of
several frames share a model batch), and encoded in order: memory holds a few batches of frames
(``BATCHES_AHEAD`` restoring, one being decoded), not the video. Through a pipeline
(interlcm.engines.pipeline) the device restores one batch while the next is decoded and earlier
frames are pasted back and encoded. A frame with no face comes back from the photo restorer
upscaled, so it is kept, never dropped. Every frame gets the same seeded noise (the spec's
contract), so a still face does not flicker from noise (`python -m interlcm.benchmarks.video`
measures it).

What the output keeps of the input:

* **Orientation.** Phones store portrait video as landscape frames plus a display matrix
  ("rotate 90"). Each frame is turned upright by its display matrix (rotation and mirroring)
  before it is restored, so the detector sees faces upright, and the output is written upright
  with no display matrix: it plays as the input did in every player, including those that
  ignore the matrix, and its size is the upright size (portrait stays portrait).
* **Timestamps.** Every frame keeps its presentation time (the encoder runs in the input
  stream's time base), so a variable-frame-rate video keeps its rhythm and stays in sync with
  the copied audio.
* **Every other stream** (each audio track, subtitles, data, attachments, a second video track)
  is copied packet for packet, not re-encoded, with its language, title and disposition. One the
  output container cannot hold is left out and named in the report's notes, with the reason.

Nothing half-written under the final name, and nothing unrecognisable left behind: the video and
the folder of saved frames are written under `interlcm.files` temporaries (TEMP_PREFIX + pid, so
`clean_stale_temporaries` removes those of a killed run) and renamed at the end, frames first,
the video last; any handled failure removes them.

Failures are `VideoError` (one sentence each): "cannot read SRC" for an unreadable, corrupt or
truncated input, "cannot write DST" for an output that cannot be written (full disk, no
permission), each with its fix.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from interlcm.files import (
    FOLDER_MODE,
    NAME_MAX,
    describe_os_error,
    os_errors,
    temp_sibling,
)
from interlcm.imageio import parse_source_tag, source_tag, write_image

BATCHES_AHEAD = 2  # batches of frames restoring while the next are decoded (a pipeline overlaps them)
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm"})

# container suffix -> (ffmpeg muxer, video encoder, encoder options). The output keeps the input's
# container, so the copied streams' codecs are ones that kind of container already held.
_OUTPUT_FORMATS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", {"crf": "18", "preset": "medium"}),
    ".mov": ("mov", "libx264", {"crf": "18", "preset": "medium"}),
    ".mkv": ("matroska", "libx264", {"crf": "18", "preset": "medium"}),
    ".avi": ("avi", "mpeg4", {"qscale": "2"}),
    ".webm": ("webm", "libvpx-vp9", {"crf": "30", "b": "0"}),
}
FRAMES_SUFFIX = "_frames"  # --save-frames: OUT/<stem>_frames/000001.png ...
# tags the muxer writes itself: copying the input's would describe the input's file, not ours
_MUXER_TAGS = frozenset({"encoder", "major_brand", "minor_version", "compatible_brands", "duration"})


class VideoError(RuntimeError):
    """A video that cannot be read or written; the message is one line naming the file and the fix."""


class PhotoRestoring(Protocol):
    """What the video path needs of `interlcm.engines.photo.PhotoRestorer`.

    One that also has `submit_photos(photos)` (interlcm.engines.pipeline.PhotoPipeline: a handle whose
    `result()` is the list) restores a batch while the next frames are decoded and earlier ones encoded.
    """

    def restore_photos(self, photos: Sequence[np.ndarray]) -> list[Any]: ...  # each result has .image (and .notes)


@dataclass(frozen=True)
class VideoOptions:
    frames_per_batch: int = 8  # frames handed to restore_photos at once (bounds memory)
    progress: bool = True


@dataclass
class VideoReport:
    output: Path
    frames: int
    fps: Fraction  # the input's average rate (each frame keeps its own timestamp)
    size: tuple[int, int]  # output (width, height), upright
    rotation: int = 0  # degrees counter-clockwise the input's display matrix turned the first frame (0: none)
    copied: list[str] = field(default_factory=list)  # the other streams copied, e.g. "audio #2 (aac, fra)"
    packets_copied: int = 0
    notes: list[str] = field(default_factory=list)  # one line each: dropped streams, frames with no face ...
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # per stage, whole video


def is_video(path: Path | str) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def frames_folder(video: Path) -> Path:
    """Where `--save-frames` puts a restored video's frames: OUT/<stem>_frames/000001.png ..."""
    return video.with_name(f"{video.stem}{FRAMES_SUFFIX}")


def read_video_source(path: Path) -> str | None:
    """The input id a video written by `restore_video(..., source=...)` records in its container comment."""
    import av


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
    """Restore every frame of `src` into the video `dst` (named by engines/outputs.py, in the container
    of `src`), each frame also into `frames_dir` when given (`frames_folder(dst)` for --save-frames).
    `source` (the input's id) is recorded in the container comment and in each frame.
    Raises VideoError (or FilesError), leaving no output."""
    src, dst = Path(src), Path(dst)
    suffix = src.suffix.lower()
    if suffix not in _OUTPUT_FORMATS:
        raise VideoError(f"{src}: unsupported video type {suffix!r}; use one of {', '.join(sorted(VIDEO_EXTENSIONS))}")
    if dst.suffix.lower() != suffix:
        raise ValueError(f"the output {dst} of {src} must keep its container ({src.suffix})")
    if dst.exists() and os.path.samefile(dst, src):  # by identity: case-insensitive file systems too
        raise VideoError(f"output {dst} would overwrite the input {src}: choose another --out")
    out_dir = dst.parent
    if frames_dir is not None and len(frames_dir.name.encode()) > NAME_MAX:
        raise VideoError(
            f"{src}: the folder for its saved frames, {frames_dir.name[:40]}...{FRAMES_SUFFIX}, would be longer than "
            f"{NAME_MAX} bytes: rename the video shorter or leave out --save-frames"
        )
    with os_errors(f"cannot create {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dst)  # short, ours, with our pid: the next run removes it if this one is killed
    frames_tmp = temp_sibling(frames_dir) if frames_dir is not None else None
    try:
        if frames_tmp is not None:
            with os_errors(f"cannot create {frames_dir}"):
                frames_tmp.mkdir(FOLDER_MODE)
        report = _transcode(photo, src, tmp, dst, frames_tmp, options, source)
        if frames_tmp is not None:
            with os_errors(f"cannot write {frames_dir}"):
                _place_frames(frames_tmp, frames_dir)  # first: the video's presence means all is there
        with os_errors(f"cannot write {dst}"):
            _fsync(tmp)
            os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
        if frames_tmp is not None:
            shutil.rmtree(frames_tmp, ignore_errors=True)
    return report


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place_frames(tmp: Path, final: Path) -> None:
    """Move the staged frames to `final`; into an existing folder (a rerun) frame by frame, nothing else touched."""
    if not final.exists():
        os.replace(tmp, final)
        return
    for frame in sorted(tmp.iterdir()):
        os.replace(frame, final / frame.name)


# --- reading and writing errors -------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def _reading(src: Path) -> Iterator[None]:
    """An error reading or decoding the input becomes a VideoError about the input."""
    import av

    try:
        yield
    except (av.error.FFmpegError, OSError) as exc:
        code = getattr(exc, "errno", None)
        if code in (errno.EACCES, errno.EPERM):
            raise VideoError(f"cannot read {src}: permission denied; make it readable (chmod +r)") from None
        if code == errno.ENOENT:
            raise VideoError(f"cannot read {src}: it does not exist; check the path") from None
        raise VideoError(
            f"cannot read {src}: {_one_line(exc)}; is it a complete, playable video? (re-export or re-download it)"
        ) from None


@contextlib.contextmanager
def _writing(dst: Path) -> Iterator[None]:
    """An error encoding or writing the output becomes a VideoError about the output, never about the input."""
    import av

    try:
        yield
    except OSError as exc:  # av.error.OSError, PermissionError ... carry an errno: full disk, no permission
        raise VideoError(describe_os_error(exc, f"cannot write {dst}")) from None
    except (av.error.FFmpegError, ValueError) as exc:  # the encoder or muxer refused what it was given
        raise VideoError(f"cannot encode {dst}: {_one_line(exc)}; please report it with the input video") from None


# --- orientation ----------------------------------------------------------------------------------


def display_matrix(frame: Any) -> np.ndarray | None:  # frame: av.VideoFrame
    """The frame's 3x3 display matrix (ffmpeg's int32 layout, row-vector convention), or None."""
    from av.sidedata.sidedata import Type

    side = frame.side_data
    for i in range(len(side)):
        if side[i].type == Type.DISPLAYMATRIX:
            return np.frombuffer(bytes(side[i]), dtype=np.int32)[:9].reshape(3, 3)
    return None


def upright(img: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """`img` (H, W, C) as the display matrix shows it: rotated by a multiple of 90 degrees and/or mirrored.

    ffmpeg maps a source pixel (x, y) to (x', y') = (a x + c y, b x + d y) (then shifted into
    view), with [[a, b], [c, d]] the matrix's top-left 2x2 (av_display_rotation_set's layout).
    Raises ValueError for an angle that is not a multiple of 90 degrees.
    """

    if matrix is None:
        return img
    m = matrix[:2, :2].astype(np.int64)
    (a, b), (c, d) = np.where(np.abs(m) * 1000 > np.abs(m).max(), np.sign(m), 0)  # 16.16 rounding noise is 0
    if b == 0 and c == 0 and a != 0 and d != 0:  # no axis swap: 0 or 180 degrees, or a mirror
        out, flip_cols, flip_rows = img, a < 0, d < 0
    elif a == 0 and d == 0 and b != 0 and c != 0:  # 90 or 270 degrees: x' comes from y, y' from x
        # out[x, y] = img[y, x]; OpenCV: ~10 ms at 1080p, numpy's strided copy ~50 ms (loaded 2-core machine)
        out, flip_cols, flip_rows = cv2.transpose(img), c < 0, b < 0
    else:
        raise ValueError("display matrix rotation is not a multiple of 90 degrees")
    if flip_cols or flip_rows:  # OpenCV's flip codes: 1 mirrors the columns, 0 the rows, -1 both
        out = cv2.flip(out, -1 if flip_cols and flip_rows else int(flip_cols))
    return out


# --- the transcode --------------------------------------------------------------------------------


def _describe(stream: Any) -> str:
    """'audio #2 (aac, fra)': the stream's kind, its number in the file, codec and language."""
    if stream.type == "attachment":
        return f"attachment #{stream.index} ({stream.metadata.get('filename', 'no name')})"
    codec = None
    with contextlib.suppress(Exception):  # data and attachment streams may have no codec context
        codec = stream.codec_context.name
    codec = codec or getattr(stream, "name", None) or "unknown codec"
    language = stream.metadata.get("language")
    details = codec + (f", {language}" if language and language != "und" else "")
    return f"{stream.type} #{stream.index} ({details})"


def _primary_video(inp: Any) -> Any:
    """The stream to restore: the first video stream that is not cover art."""
    import av

    attached = av.stream.Disposition.attached_pic
    for stream in inp.streams.video:
        if not stream.disposition & attached:
            return stream
    return None


def _add_copy(out: Any, stream: Any) -> Any:
    """An output stream copying `stream` as it is (codec parameters, tags, disposition); None for attachments."""
    if stream.type == "attachment":
        out.add_attachment(stream.metadata.get("filename", f"attachment{stream.index}"),
                           stream.metadata.get("mimetype", "application/octet-stream"), stream.data)
        return None
    copy = out.add_stream_from_template(stream, opaque=True)
    _copy_tags(stream.metadata, copy.metadata)
    copy.disposition = stream.disposition
    return copy


def _copy_tags(source: dict[str, str], target: dict[str, str]) -> None:
    target.update({k: v for k, v in source.items() if k.lower() not in _MUXER_TAGS})


def _why_not_copied(fmt: str, stream: Any) -> str | None:
    """None if a `fmt` container takes `stream` as it is; else why not (tried on a scratch container)."""
    import av

    try:
        with av.open(io.BytesIO(), "w", format=fmt) as scratch:
            _add_copy(scratch, stream)
            scratch.start_encoding()
    except (av.error.FFmpegError, ValueError, TypeError, AttributeError, NotImplementedError) as exc:
        return "it has no place for attached files" if stream.type == "attachment" else _one_line(exc)
    return None


def _transcode(
    photo: PhotoRestoring, src: Path, tmp: Path, dst: Path, frames_dir: Path | None, options: VideoOptions,
    source: str | None,
) -> VideoReport:
    import av

    fmt, codec, codec_options = _OUTPUT_FORMATS[src.suffix.lower()]
    with _reading(src):
        inp = av.open(os.fspath(src))
    with inp:
        vin = _primary_video(inp)
        if vin is None:
            raise VideoError(f"{src} has no video stream: nothing to restore")
        vin.thread_type = "AUTO"
        fps = vin.average_rate or vin.guessed_rate
        if not fps or not vin.time_base:
            raise VideoError(f"{src} does not say its frame rate; remux it with ffmpeg (-r) first")
        report = VideoReport(dst, 0, Fraction(fps), (0, 0))
        others = []
        for stream in inp.streams:
            if stream is vin:
                continue
            why = _why_not_copied(fmt, stream)
            if why is None:
                others.append(stream)
                report.copied.append(_describe(stream))
            else:
                report.notes.append(f"{_describe(stream)} is not in the output: a {fmt} file cannot hold it as it is ({why})")
        if len(inp.streams.video) > 1:
            report.notes.append(f"only video #{vin.index} is restored; the other video streams are copied unchanged")
        writer = _Writer(tmp, dst, fmt, codec, codec_options, vin, others, inp.metadata, source)
        pending: list[np.ndarray] = []
        pending_pts: list[int] = []
        in_flight: deque[tuple[Any, list[int]]] = deque()  # (batch handed to the restorer, its frames' pts), oldest first
        ahead = BATCHES_AHEAD if hasattr(photo, "submit_photos") else 0  # done at once: nothing to overlap, encode now
        frame_notes: Counter[str] = Counter()
        expected = vin.frames  # from the container header; 0 when it does not say
        bar = tqdm(total=expected or None, unit="frame", disable=not options.progress, desc=src.name)

        def flush(last: bool = False) -> None:
            if pending:
                in_flight.append((_submit(photo, list(pending)), list(pending_pts)))
                pending.clear()
                pending_pts.clear()
            while len(in_flight) > (0 if last else ahead):  # bounded: encode the oldest batch
                batch, pts_list = in_flight.popleft()
                start = time.perf_counter()
                results = batch.result()
                report.seconds["photos"] += time.perf_counter() - start  # waiting for detect ... paste
                start = time.perf_counter()
                for result, pts in zip(results, pts_list):
                    writer.write(result.image, pts)
                    report.frames += 1
                    if frames_dir is not None:
                        _save_frame(frames_dir, report.frames, result.image, source)
                    frame_notes.update(getattr(result, "notes", ()))
                report.seconds["encode"] += time.perf_counter() - start
                bar.update(len(results))

        last_time, decoded = None, 0
        with bar, writer:
            start = time.perf_counter()
            for packet in _packets(inp, src):
                if packet.stream is not vin:
                    writer.copy(packet)
                    continue
                with _reading(src):
                    frames = vin.decode(packet)
                    for frame in frames:
                        matrix = display_matrix(frame)
                        if decoded == 0:  # the first frame (earlier batches may still be restoring)
                            report.rotation = frame.rotation
                        decoded += 1
                        try:
                            pending.append(upright(frame.to_ndarray(format="rgb24"), matrix))  # (H, W, 3) uint8
                        except ValueError:
                            raise VideoError(
                                f"{src} asks to be shown rotated by {frame.rotation} degrees, not a multiple "
                                "of 90: rotate it upright first (ffmpeg -i SRC -vf rotate=... OUT)"
                            ) from None
                        pending_pts.append(frame.pts)
                        if frame.time is not None:
                            last_time = frame.time
                report.seconds["decode"] += time.perf_counter() - start
                if len(pending) >= options.frames_per_batch:
                    flush()
                start = time.perf_counter()
            flush(last=True)
            writer.close()
        if report.frames == 0:
            raise VideoError(f"{src}: no frame could be decoded; is it a complete video?")
        if _truncated(vin, report.frames, last_time, Fraction(fps)):
            raise VideoError(
                f"{src} is truncated: decoded {report.frames} of the {expected} frames its header lists; "
                "re-export or re-download it"
            )
        report.size = writer.size
        report.packets_copied = writer.packets_copied
    report.notes += [f"{note} ({count} of {report.frames} frames)" for note, count in frame_notes.items()]
    _merge_stage_seconds(report, photo)
    return report


def _submit(photo: PhotoRestoring, frames: list[np.ndarray]) -> Any:
    """A batch of frames to restore: under way (a pipeline) or done now; `.result()` gives the results."""
    submit = getattr(photo, "submit_photos", None)
    if submit is not None:
        return submit(frames)
    done: Future[list[Any]] = Future()
    done.set_result(photo.restore_photos(frames))
    return done


def _packets(inp: Any, src: Path) -> Iterator[Any]:
    """Every packet of the input in file order, then each stream's flush packet; read errors name `src`."""
    demux = inp.demux()
    while True:
        with _reading(src):
            packet = next(demux, None)
        if packet is None:
            return
        yield packet


def _truncated(vin: Any, decoded: int, last_time: float | None, fps: Fraction) -> bool:
    """Fewer frames than the header lists, and the last one ends well before the stream's end.

    Both, because a variable-rate AVI lists its skipped frame slots in the count: its frames are
    fewer but still reach the end.
    """
    if not vin.frames or decoded >= vin.frames:
        return False
    if last_time is None or vin.duration is None:
        return True
    end = float((vin.start_time or 0) * vin.time_base) + float(vin.duration * vin.time_base)
    return last_time + float(1 / fps) < end - 0.5 / float(fps)


def _merge_stage_seconds(report: VideoReport, photo: PhotoRestoring) -> None:
    """Add the photo restorer's own stage times (detect, paste ...), when it keeps them."""
    for stage, secs in (getattr(photo, "seconds", None) or {}).items():
        report.seconds[stage] += secs


def _save_frame(folder: Path, index: int, img: np.ndarray, source: str | None) -> None:

    write_image(folder / f"{index:06d}.png", img, source=source)


class _Writer:
    """The output container, opened at the first restored frame (its size is the restorer's output).

    The restored video is encoded in the input stream's time base, each frame at its own input
    timestamp. Packets of the copied streams that arrive before the container opens are held
    (at most one batch of frames' worth), then muxed; after that they are muxed as they come
    (ffmpeg's interleaving muxer orders them).
    """

    def __init__(self, path: Path, dst: Path, fmt: str, codec: str, codec_options: dict[str, str], vin: Any,
                 others: list[Any], tags: dict[str, str], source: str | None = None):
        self.path, self.dst, self.fmt, self.codec, self.codec_options = path, dst, fmt, codec, codec_options
        self.vin, self.others, self.tags, self.source = vin, others, tags, source
        self.wanted = {stream.index for stream in others}
        self.out = None
        self.vout = None
        self.copies: dict[int, Any] = {}  # input stream index -> output stream
        self.held: list = []
        self.last_pts: int | None = None
        self.size = (0, 0)
        self.packets_copied = 0

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.out is not None:
            with contextlib.suppress(Exception):  # already failing: the temporary is removed anyway
                self.out.close()
            self.out = None

    def _open(self, img: np.ndarray) -> None:
        import av

        h, w = img.shape[:2]
        self.out = av.open(os.fspath(self.path), "w", format=self.fmt)
        _copy_tags(self.tags, self.out.metadata)
        if self.source is not None:  # which input this is a restoration of (engines/outputs.py)

            self.out.metadata["comment"] = source_tag(self.source)
        self.vout = self.out.add_stream(self.codec, rate=Fraction(self.vin.average_rate or self.vin.guessed_rate),
                                        options=self.codec_options)
        self.vout.codec_context.time_base = self.vin.time_base  # frames keep their input timestamps
        self.vout.width, self.vout.height = w, h
        # 4:2:0 needs even sides; odd ones keep full chroma (x264 supports it, players mostly do)
        self.vout.pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
        _copy_tags(self.vin.metadata, self.vout.metadata)
        self.vout.disposition = self.vin.disposition
        self.size = (w, h)
        for stream in self.others:
            copy = _add_copy(self.out, stream)
            if copy is not None:
                self.copies[stream.index] = copy
        for packet in self.held:
            self._mux_copy(packet)
        self.held.clear()

    def write(self, img: np.ndarray, pts: int | None) -> None:
        import av

        with _writing(self.dst):
            if self.out is None:
                self._open(img)
            if img.shape[1::-1] != self.size:
                raise VideoError(
                    f"restored frame {img.shape[1]}x{img.shape[0]} of {self.dst.name} differs from the earlier ones, "
                    f"{self.size[0]}x{self.size[1]}: every frame must come back at one size"
                )
            if pts is None:  # a frame with no timestamp: one average frame after the previous one
                step = max(1, round(1 / (self.vout.codec_context.framerate * self.vin.time_base)))
                pts = 0 if self.last_pts is None else self.last_pts + step
            if self.last_pts is not None and pts <= self.last_pts:  # encoders need strictly increasing times
                pts = self.last_pts + 1
            self.last_pts = pts
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = pts, self.vin.time_base
            self.out.mux(self.vout.encode(frame))

    def copy(self, packet: Any) -> None:
        if packet.dts is None or packet.stream.index not in self.wanted:  # a flush packet, or a stream left out
            return
        if self.out is None:
            self.held.append(packet)
        else:
            with _writing(self.dst):
                self._mux_copy(packet)

    def _mux_copy(self, packet: Any) -> None:
        stream = self.copies.get(packet.stream.index)
        if stream is None:  # an attachment: it has no packets
            return
        packet.stream = stream
        self.out.mux(packet)
        self.packets_copied += 1

    def close(self) -> None:
        if self.out is None:
            return
        with _writing(self.dst):
            self.out.mux(self.vout.encode(None))  # drain the encoder's delayed frames
            self.out.close()
        self.out = None
