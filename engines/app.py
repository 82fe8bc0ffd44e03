"""`interlcm-app`: restore faces in the browser (Gradio): before/after slider, each face, seconds per stage.

    interlcm-app --preset tiny            # the restorer in this process (or --weights / --onnx / --engines)
    interlcm-app --server http://127.0.0.1:8000   # the page in front of a running interlcm-serve

The page takes a photo (upload, drag and drop, clipboard or webcam) or a short video, the whole-photo
options of `interlcm-trt restore` (aligned, detector, only centre face, upscale, Real-ESRGAN background
and faces, colour fix, seed, strength) and shows the result next to the input at full resolution, the
faces before and after, the backend that ran with its seconds per stage, and a PNG to download: the
CLI's bytes for the same options and seed. Requests wait in Gradio's queue (one runs at a time; the
page shows its position). A bad upload (not an image, corrupt, too large, no face) gets one line on the
page and the app goes on serving. The encoder variant (steps) is the backend's, fixed at start-up.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
from PIL import Image

from interlcm.choices import COLORFIXES, DEFAULT_STRENGTH, STRENGTH_RANGE
from interlcm.cli.options import SEED_MAX
from interlcm.engines.cli import backend_options
from interlcm.engines.loaded import LoadedRestorer, RestoreRequest
from interlcm.engines.outputs import source_id
from interlcm.engines.photo import PhotoOptions, PhotoResult
from interlcm.engines.pipeline import PhotoPipeline
from interlcm.faces.detectors import DEFAULT_DETECTOR, DETECTORS
from interlcm.imageio import ImageReadError, decode_rgb, encode_image, write_image
from interlcm.upsampler import TileOptions
from interlcm.video import VideoError, VideoOptions, restore_video

UPSCALE = (1, 8)  # the page's upscale range, as `interlcm-trt restore --upscale`
KEEP_RESULTS_S = 3600  # results older than this are deleted from the app's folder (Gradio's cache: the same)
VARIANT_COLORFIX = "variant's"  # the colour fix choice that means "the one the encoder variant is meant for"
OFFERED_BY_SERVE = frozenset({"aligned", "upscale", "colorfix", "seed", "strength"})  # serve.py's query parameters
RANDOM_WEIGHTS_BANNER = ("**Random weights:** the output only shows the pipeline runs (detect, align, restore, "
                         "paste back); it is not a restoration. Get real weights with `interlcm-weights download`.")


PAGE_CSS = """
#banner { background: #fff4d6; border: 1px solid #e0b84c; border-radius: 6px; padding: 4px 12px; }
#message p { font-weight: 600; color: #a4380b; }
"""


class InputError(ValueError):
    """An upload the page refuses; the message is the one line shown."""


@dataclass(frozen=True)
class Limits:
    max_mb: float = 20.0  # upload size, photos and videos
    max_megapixels: float = 16.0  # photo size before upscaling
    max_frames: int = 300  # video length


@dataclass
class Outcome:
    """What the page shows for one request."""

    image: np.ndarray  # (H, W, 3) uint8 RGB restored photo (a video: its first frame)
    before: np.ndarray  # the input at the output's size (bilinear), for the slider
    faces: list[tuple[np.ndarray, str]] = field(default_factory=list)  # gallery: (picture, caption)
    report: str = ""  # markdown: backend, seconds per stage, notes
    message: str = ""  # one line when something is worth saying (no face found)
    video: Path | None = None  # a restored video


# --- what restores: this process or a running interlcm-serve -----------------------------------------


class LocalEngine:
    """The restorer in this process (engines.loaded.LoadedRestorer)."""

    offers = frozenset({"aligned", "detector", "only_center_face", "upscale", "bg_upsampler", "face_upsample",
                        "colorfix", "seed", "strength"})

    def __init__(self, loaded: Any):
        self.loaded = loaded
        self.description = loaded.description
        self.random_weights = loaded.random_weights
        self.variant = loaded.variant

    def restore_photo(self, photo: np.ndarray, request: Any) -> Outcome:
        done = self.loaded.restore([photo], request)
        result = done.results[0]
        faces = [(pic, f"face {i + 1}: {what}") for i, (before, after) in enumerate(zip(result.originals, result.faces))
                 for pic, what in ((before, "input"), (after, "restored"))]
        stages = " · ".join(f"{k} {v:.2f}" for k, v in done.stages.items())
        networks = " · ".join(f"{k} {v:.2f}" for k, v in sorted(done.components.items(), key=lambda kv: -kv[1]))
        lines = [f"**Backend:** {self.description}",
                 f"**Faces:** {len(result.faces)} · **seconds:** {stages}{' · ' if stages else ''}total {done.seconds:.2f}",
                 f"**Networks (s):** {networks}" if networks else "", *(f"- {note}" for note in result.notes)]
        message = "" if result.found or request.photo.aligned else "No face found: the photo is only upscaled."
        return Outcome(result.image, _before(photo, result.image), faces, "\n\n".join(x for x in lines if x), message)

    def video_restorer(self, request: Any) -> Any:
        """The pipelined runtime (engines/pipeline.py) on the held backend; a context manager."""

        return PhotoPipeline(self.loaded.photo_restorer(request, timing=False))


class ServerEngine:
    """A running interlcm-serve: POST /restore with the options as query parameters."""

    offers = OFFERED_BY_SERVE

    def __init__(self, url: str, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=10) as response:
                health = response.read().decode().strip()
        except (urllib.error.URLError, OSError) as exc:
            raise click.ClickException(f"cannot reach interlcm-serve at {self.url} ({_reason(exc)}): "
                                       "start it with `interlcm-serve ...` or fix --server") from None
        self.description = f"interlcm-serve at {self.url}: {health.removeprefix('ok: ')}"
        self.random_weights = "random" in health
        self.variant = None

    def restore_photo(self, photo: np.ndarray, request: Any) -> Outcome:
        start = time.perf_counter()
        image = self.restore_photos([photo], request)[0].image
        report = f"**Backend:** {self.description}\n\n**Seconds:** round trip {time.perf_counter() - start:.2f}"
        return Outcome(image, _before(photo, image), [], report)

    def restore_photos(self, photos: list[np.ndarray], request: Any) -> list[Any]:

        query = {"seed": request.seed, "aligned": str(request.photo.aligned).lower(), "upscale": request.photo.upscale,
                 "strength": request.photo.strength, **({"colorfix": request.colorfix} if request.colorfix else {})}
        out = []
        for photo in photos:
            call = urllib.request.Request(f"{self.url}/restore?{urllib.parse.urlencode(query)}",
                                          data=encode_image(photo, "upload.png"), method="POST")
            try:
                with urllib.request.urlopen(call, timeout=self.timeout) as response:
                    out.append(PhotoResult(decode_rgb(response.read(), "the server's answer")))
            except urllib.error.HTTPError as exc:
                raise InputError(f"interlcm-serve: {exc.read().decode(errors='replace').strip()}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise InputError(f"interlcm-serve at {self.url} did not answer ({_reason(exc)})") from None
        return out

    def video_restorer(self, request: Any) -> Any:
        engine = self

        class OverHttp:
            def restore_photos(self, photos: list[np.ndarray]) -> list[Any]:
                return engine.restore_photos(list(photos), request)

        return contextlib.nullcontext(OverHttp())


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc).splitlines()[0]


def _before(photo: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The input at the output's size (bilinear: the canvas faces are pasted on), for the slider."""

    h, w = like.shape[:2]
    return photo if photo.shape[:2] == (h, w) else cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)


# --- uploads ---------------------------------------------------------------------------------------


def read_upload(payload: dict | None, limits: Limits, kind: str = "photo") -> tuple[Path, str]:
    """A Gradio upload (its FileData, unprocessed) -> (path, the user's file name); InputError if refused."""
    if not payload or not payload.get("path"):
        raise InputError(f"No {kind} given: upload one (or drop it on the box) first.")
    path = Path(payload["path"])
    name = payload.get("orig_name") or path.name
    size = path.stat().st_size
    if size > limits.max_mb * 2**20:
        raise InputError(f"{name} is {size / 2**20:.1f} MB, over the {limits.max_mb:g} MB limit: send a smaller file.")
    return path, name


def decode_photo(path: Path, name: str, limits: Limits) -> np.ndarray:
    """The photo's pixels ((H, W, 3) uint8 RGB, as the CLI reads files); InputError in one line if refused."""


    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as header:  # the size before decoding: refuse huge photos cheaply
            w, h = header.size
    except Image.DecompressionBombError:
        raise InputError(f"{name} is too large to decode safely: send a photo under {limits.max_megapixels:g} MP.") from None
    except (OSError, ValueError, SyntaxError):
        w = h = 0  # not an image: decode_rgb says so in its words
    if w * h > limits.max_megapixels * 1e6:
        raise InputError(f"{name} is {w}x{h} ({w * h / 1e6:.1f} MP), over the {limits.max_megapixels:g} MP limit: "
                         "send a smaller photo.")
    try:
        return decode_rgb(data, name)
    except ImageReadError as exc:
        raise InputError(str(exc).splitlines()[0]) from None


def check_video(path: Path, name: str, limits: Limits) -> None:
    import av

    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise InputError(f"{name} has no video stream: upload a video (or the photo tab for a photo).")
            stream = container.streams.video[0]
            frames = stream.frames or int((stream.duration or 0) * stream.time_base * (stream.average_rate or 0))
    except av.error.FFmpegError as exc:
        raise InputError(f"{name} is not a readable video ({str(exc).splitlines()[0]}).") from None
    if frames > limits.max_frames:
        raise InputError(f"{name} has {frames} frames, over the {limits.max_frames}-frame limit: send a shorter clip.")


def page_request(aligned, detector, only_center, upscale, bg, face_up, colorfix, seed, strength):
    """The page's values as a RestoreRequest (unprocessed: an API call can send anything); InputError if out of range."""

    seed, upscale = int(seed or 0), int(upscale)
    if not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed {seed} is out of range: use 0 to {SEED_MAX}.")
    if not UPSCALE[0] <= upscale <= UPSCALE[1]:
        raise InputError(f"upscale {upscale} is out of range: use {UPSCALE[0]} to {UPSCALE[1]}.")
    photo = PhotoOptions(aligned=bool(aligned), upscale=upscale, only_center_face=bool(only_center),
                         strength=float(strength), save_faces=True)
    return RestoreRequest(photo, seed, None if colorfix == VARIANT_COLORFIX else colorfix, detector, bool(bg),
                          bool(face_up))


# --- the page --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageDefaults:
    detector: str = DEFAULT_DETECTOR
    upscale: int = 2  # the release's and the CLI's default


def build_page(engine: LocalEngine | ServerEngine, workdir: Path, limits: Limits = Limits(),
               defaults: PageDefaults = PageDefaults()):
    """The Gradio page; results are written under `workdir`."""
    import gradio as gr

    offered = engine.offers

    def option(name: str) -> dict:
        if name in offered:
            return {}
        return {"interactive": False, "info": "not offered by interlcm-serve"}

    def failed(message: str) -> tuple:
        return None, [], "", None, gr.Video(None, visible=False), f"⚠️ {message}"

    def shown(outcome: Outcome, stem: str, source: str | None = None) -> tuple:

        _prune(workdir, KEEP_RESULTS_S)
        folder = workdir / uuid.uuid4().hex[:12]
        after = write_image(folder / f"{stem}_restored.png", outcome.image, source=source)  # the CLI's bytes
        before = write_image(folder / f"{stem}_input.png", outcome.before)
        note = f"⚠️ {outcome.message}" if outcome.message else ""
        download = str(outcome.video or after)
        video = gr.Video(str(outcome.video) if outcome.video else None, visible=outcome.video is not None)
        return (str(before), str(after)), outcome.faces, outcome.report, download, video, note

    def restore_photo(upload, aligned, detector, only_center, upscale, bg, face_up, colorfix, seed, strength,
                      progress=gr.Progress()) -> tuple:  # noqa: B008 - Gradio's way of asking for a progress bar
        try:
            path, name = read_upload(upload, limits)
            photo = decode_photo(path, name, limits)
            progress(0.1, desc="detect, align, restore, paste back")
            request = page_request(aligned, detector, only_center, upscale, bg, face_up, colorfix, seed, strength)
            outcome = engine.restore_photo(photo, request)
        except (InputError, ValueError, RuntimeError) as exc:  # incl. a detector that cannot run: one sentence
            return failed(str(exc).splitlines()[0])
        return shown(outcome, Path(name).stem, source_id(Path(path)))

    def restore_clip(upload, aligned, detector, only_center, upscale, bg, face_up, colorfix, seed, strength,
                     progress=gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008 - frames: restore_video's tqdm

        try:
            path, name = read_upload(upload, limits, "video")
            check_video(path, name, limits)
            request = page_request(aligned, detector, only_center, upscale, bg, face_up, colorfix, seed, strength)
            _prune(workdir, KEEP_RESULTS_S)
            dst = workdir / uuid.uuid4().hex[:12] / Path(path).name  # the upload's own container
            with engine.video_restorer(request) as photos:  # this process: frames decoded ahead, encoded behind
                done = restore_video(photos, path, dst, VideoOptions(), source=source_id(Path(path)))
        except (InputError, VideoError, ValueError, RuntimeError) as exc:
            return failed(str(exc).splitlines()[0])
        first = _first_frame(done.output)
        seconds = " · ".join(f"{k} {v:.2f}" for k, v in done.seconds.items())
        text = (f"**Backend:** {engine.description}\n\n**Video:** {done.frames} frames at {done.fps} fps, "
                f"{done.size[0]}x{done.size[1]}, other streams copied: {', '.join(done.copied) or 'none'}"
                + "".join(f"\n\n{note}" for note in done.notes) + f"\n\n**Seconds:** {seconds}")
        return shown(Outcome(first, _before(_first_frame(path), first), [], text, video=done.output), Path(name).stem)

    variant = engine.variant
    with gr.Blocks(title="InterLCM face restoration", analytics_enabled=False,
                   delete_cache=(KEEP_RESULTS_S, KEEP_RESULTS_S)) as page:
        gr.Markdown("# InterLCM face restoration")
        if engine.random_weights:
            gr.Markdown(RANDOM_WEIGHTS_BANNER, elem_id="banner")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Photo"):
                    photo_in = gr.Image(label="Photo: upload, drop, paste or webcam", type="filepath", image_mode=None,
                                        sources=["upload", "webcam", "clipboard"], elem_id="photo")
                    photo_go = gr.Button("Restore", variant="primary", elem_id="restore")
                with gr.Tab("Video"):
                    video_in = gr.Video(label=f"Short video (up to {limits.max_frames} frames)", sources=["upload"],
                                        elem_id="video")
                    video_go = gr.Button("Restore video", variant="primary", elem_id="restore_video")
                strength = gr.Slider(*STRENGTH_RANGE, value=DEFAULT_STRENGTH, step=0.05, label="Strength",
                                     info="1 the restored face, 0 the input (A1111's visibility, facefusion's blend)",
                                     elem_id="strength", **option("strength"))
                upscale = gr.Slider(*UPSCALE, value=defaults.upscale, step=1, label="Upscale", elem_id="upscale",
                                    **option("upscale"))
                aligned = gr.Checkbox(label="Aligned face crop (no detection; output at the model's size)",
                                      elem_id="aligned", **option("aligned"))
                detector = gr.Dropdown(list(DETECTORS), value=defaults.detector, label="Face detector",
                                       elem_id="detector", **option("detector"))
                only_center = gr.Checkbox(label="Only the centre face", elem_id="only_center", **option("only_center_face"))
                bg = gr.Checkbox(label="Real-ESRGAN background", **option("bg_upsampler"))
                face_up = gr.Checkbox(label="Real-ESRGAN faces (face upsample)", **option("face_upsample"))
                colorfix = gr.Radio([VARIANT_COLORFIX, *COLORFIXES], value=VARIANT_COLORFIX, label="Colour fix",
                                    **option("colorfix"))
                seed = gr.Number(0, precision=0, minimum=0, maximum=SEED_MAX, label="Seed", elem_id="seed",
                                 **option("seed"))
                gr.Textbox(f"{variant.name} ({variant.steps}-step), fixed at start-up: restart the app with --steps "
                           "or --variant to switch" if variant else "the server's (interlcm-serve --steps/--variant)",
                           label="Model (steps / variant)", interactive=False)
            with gr.Column(scale=2):
                message = gr.Markdown(elem_id="message")
                slider = gr.ImageSlider(label="Before / after (full resolution: fullscreen or download)", type="filepath",
                                        format="png", elem_id="result")
                video_out = gr.Video(label="Restored video", elem_id="video_result", interactive=False, visible=False)
                faces = gr.Gallery(label="Faces: aligned input, restored", columns=6, height=230, object_fit="contain",
                                   elem_id="faces")
                report = gr.Markdown(elem_id="report")
                download = gr.File(label="Download the result", elem_id="download")
        options = [aligned, detector, only_center, upscale, bg, face_up, colorfix, seed, strength]
        outputs = [slider, faces, report, download, video_out, message]
        # preprocess=False: the raw upload reaches us, so a broken file gets our one line, not Gradio's error
        photo_go.click(restore_photo, [photo_in, *options], outputs, preprocess=False, api_name="restore")
        video_go.click(restore_clip, [video_in, *options], outputs, preprocess=False, api_name="restore_video")
    return page


def _prune(workdir: Path, age_s: float) -> None:
    """Delete result folders older than `age_s` (each request writes one; a long-running app must not fill the disk)."""

    cutoff = time.time() - age_s
    for folder in workdir.iterdir():
        if folder.is_dir() and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)


def _first_frame(path: Path) -> np.ndarray:
    import av

    with av.open(os.fspath(path)) as container:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise InputError(f"{path.name} has no frames")


def launch(page, workdir: Path, host: str = "127.0.0.1", port: int | None = None, quiet: bool = False) -> str:
    """Queue (one request at a time, positions shown) and serve the page in the background; returns its URL."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                              font_mono=["ui-monospace", "monospace"])
    page.queue(default_concurrency_limit=1)
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=quiet,
                            show_error=True, ssr_mode=False, theme=theme, css=PAGE_CSS, footer_links=[],
                            allowed_paths=[str(workdir)])
    return url


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@backend_options
@click.option("--server", metavar="URL", help="Front a running interlcm-serve (e.g. http://127.0.0.1:8000) instead.")
@click.option("--batch", type=click.IntRange(1, 63), default=1, show_default=True, help="Faces per model batch.")
@click.option("--detector", type=click.Choice(list(DETECTORS)),
              help=f"The page's first detector (default: {DEFAULT_DETECTOR}; dlib with random weights, whose "
                   "detectors find no faces).")
@click.option("--bg-tile", type=click.IntRange(0), default=400, show_default=True, help="Real-ESRGAN tile size.")
@click.option("--max-mb", type=click.FloatRange(0.01), default=Limits.max_mb, show_default=True, help="Upload size limit.")
@click.option("--max-megapixels", type=click.FloatRange(0.01), default=Limits.max_megapixels, show_default=True,
              help="Photo size limit.")
@click.option("--max-frames", type=click.IntRange(1), default=Limits.max_frames, show_default=True,
              help="Video length limit.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every network).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
def main(backend, server, batch, detector, bg_tile,
         max_mb, max_megapixels, max_frames, host, port) -> None:
    """Restore faces in the browser: the page prints its URL (Ctrl-C stops)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    limits = Limits(max_mb, max_megapixels, max_frames)
    if server and (backend.weights or backend.onnx or backend.engines or backend.preset):
        raise click.UsageError("give --server URL or a model (--weights/--onnx/--engines/--preset), not both")
    if server:
        engine: LocalEngine | ServerEngine = ServerEngine(server)
    else:

        try:
            engine = LocalEngine(LoadedRestorer(backend, tile=TileOptions(bg_tile)))
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
    defaults = PageDefaults(detector=detector or ("dlib" if engine.random_weights else DEFAULT_DETECTOR))
    click.echo(f"backend: {engine.description}")
    if engine.random_weights:
        click.echo("note: random weights: the output shows the pipeline runs, not a restoration")
    workdir = Path(tempfile.mkdtemp(prefix="interlcm-app-"))  # results shown and offered for download
    page = build_page(engine, workdir, limits, defaults)
    try:
        url = launch(page, workdir, host, port, quiet=True)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port} ({_reason(exc)}): choose another --port") from None
    click.echo(f"interlcm-app: open {url} (Ctrl-C stops)")
    page.block_thread()

if __name__ == "__main__":
    main()
