"""A restorer held open for a process's life, restoring one request at a time: the app and the ComfyUI nodes.

The backend opens once (`open_backend`, the CLI's options); each request then picks the whole-photo
options the CLI offers per run (aligned, detector, only centre face, upscale, Real-ESRGAN, seed, colour
fix, strength) and gets the CLI's pictures for them: the same `PhotoRestorer` on the same backend.
Detectors, the face parser and Real-ESRGAN open on first use and stay open. The encoder variant (steps)
is the backend's: switching it means opening another backend.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import numpy as np

from interlcm.choices import Variant, get_variant
from interlcm.engines.backend import BackendOptions, OpenedBackend, open_backend
from interlcm.engines.photo import FaceParser, PhotoOptions, PhotoRestorer, PhotoResult
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.faces.detect import Detector
from interlcm.faces.detectors import DEFAULT_DETECTOR, DetectorContext, open_detector, open_parser
from interlcm.upsampler import TiledUpsampler, TileOptions, Upsamplers, open_upsamplers


@dataclass(frozen=True)
class RestoreRequest:
    """One request's options; the CLI's `restore` options of the same names."""

    photo: PhotoOptions = field(default_factory=PhotoOptions)  # aligned, upscale, only centre face, strength
    seed: int = 0
    colorfix: str | None = None  # None: the variant's (as the CLI)
    detector: str = DEFAULT_DETECTOR
    bg_upsampler: bool = False  # Real-ESRGAN background canvas (--bg-upsampler realesrgan)
    face_upsample: bool = False  # Real-ESRGAN on the restored faces (--face-upsample)


@dataclass
class Restored:
    """What one request gave: a result per photo and the seconds per stage (detect, align, restore, paste, ...)."""

    results: list[PhotoResult]
    stages: dict[str, float]  # PhotoRestorer.seconds
    components: dict[str, float]  # seconds per network call (clip, vae_encode, unet, ...), summed
    seconds: float  # wall time of the request


class LoadedRestorer:
    """An opened backend plus the face tools requests ask for; thread-safe (one request at a time)."""

    def __init__(self, backend: BackendOptions, tile: TileOptions | None = None):
        self._stack = ExitStack()
        self.opened: OpenedBackend = self._stack.enter_context(open_backend(backend))
        self.batch: int = backend.batch
        self.variant: Variant = get_variant(self.opened.variant)
        self.weights = backend.weights
        self.tile = tile or TileOptions()  # Real-ESRGAN's tiles (the CLI's --bg-tile)
        self._detectors: dict[str, Detector] = {}
        self._parser: tuple[FaceParser | None] | None = None  # opened once; (None,) when the backend has no ParseNet
        self._upsampler: TiledUpsampler | None = None
        self.upsampler_origin = ""  # where Real-ESRGAN's weights came from, once opened
        self._lock = threading.Lock()

    def __enter__(self) -> LoadedRestorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    @property
    def description(self) -> str:
        return self.opened.description

    @property
    def random_weights(self) -> bool:
        return self.opened.random_weights

    def restore(self, photos: list[np.ndarray], request: RestoreRequest) -> Restored:
        """(H, W, 3) uint8 RGB photos -> their results; errors as the CLI raises them (ValueError, RuntimeError)."""
        with self._lock:
            start = time.perf_counter()
            restorer = self.photo_restorer(request)
            results = restorer.restore_photos(photos)
            timed = restorer.restorer.timings
            components = dict(timed.seconds) if timed is not None else {}
            return Restored(results, dict(restorer.seconds), components, time.perf_counter() - start)

    def photo_restorer(self, request: RestoreRequest, timing: bool = True) -> PhotoRestorer:
        """The CLI's PhotoRestorer for these options on the held backend (`timing`: per-network seconds)."""
        options = self.opened.fast.apply(RestoreOptions(
            steps=self.variant.steps, seed=request.seed, colorfix=request.colorfix or self.variant.colorfix,
            batch=self.batch))
        if timing:  # per-network seconds synchronise after every call: no graph replay then
            options = replace(options, cuda_graph=False)
        photo = replace(request.photo, keep_gray=self.variant.keep_gray)
        detector = parser = None
        if not photo.aligned:
            detector, parser = self._detector(request.detector), self._face_parser()
        upsamplers = Upsamplers()
        if request.bg_upsampler or request.face_upsample:
            net = self._realesrgan()
            upsamplers = Upsamplers(net if request.bg_upsampler else None, net if request.face_upsample else None)
        return PhotoRestorer(Restorer(self.opened.backend, options, timing=timing), photo, detector, parser, upsamplers)

    def _detector(self, name: str) -> Detector:
        if name not in self._detectors:  # RuntimeError in one sentence when it cannot run here
            self._detectors[name] = open_detector(name, DetectorContext(weights=self.weights, backend=self.opened.backend))
        return self._detectors[name]

    def _face_parser(self) -> FaceParser | None:
        if self._parser is None:
            self._parser = (open_parser(self.opened.backend),)
        return self._parser[0]

    def _realesrgan(self) -> TiledUpsampler:
        if self._upsampler is None:
            both, self.upsampler_origin = open_upsamplers(self.opened.backend, self.weights, True, True, self.tile)
            self._upsampler = both.background
        return self._upsampler
