"""Restore photos over HTTP with Ray Serve: `POST /restore`, `GET /healthz`.

Two deployments, so that receiving requests and restoring photos never wait on each other:

* :class:`RestoreFront`, the HTTP ingress: parses the options, reads the body as a stream (within a
  byte limit and a deadline), checks the pixel limits on the image header, decodes, hands the photo
  to the model and encodes the answer. It is cheap and asynchronous: slow uploads hold an open
  request each here (up to ``max_open``), never a model slot, and ``/healthz`` is answered here.
* :class:`RestoreModel`: one opened backend per replica. Concurrent photos are gathered into engine
  batches by ``@serve.batch`` (up to the batch size, waiting at most ``batch_wait_s`` for a batch
  to fill) and restored through the same :class:`~interlcm.engines.photo.PhotoRestorer` as the CLI
  and the Ray job, so a response is the CLI's output file for the same image and options, byte for
  byte (a lone request runs at batch 1, as ``--batch 1``; see "Batch invariance" in the README for
  what holds at other batch sizes). Batches go through the pipelined runtime (engines/pipeline.py):
  while one batch pastes back on CPU threads, the next is on the device. When a batch's device stage
  fails, each photo is retried alone, so a failure stays with the request that caused it.

    POST /restore?seed=0&steps=3&aligned=true&upscale=2&colorfix=wavelet&strength=1&format=png
    body: the image file's bytes (PNG, JPEG, WebP, ...); response: PNG or JPEG bytes

Every refusal is a 4xx or 5xx with a one-line reason (``text/plain``), and the replicas stay up:
400 bad image or option, 408 body too slow, 413 body or image too large, 422 output too large,
503 + ``Retry-After`` when the queues are full (Ray Serve's ``max_ongoing_requests`` and
``max_queued_requests``: overload is refused at once, never left to hang).
"""

import asyncio
import os
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from ray import serve
from starlette.requests import ClientDisconnect

from interlcm.choices import COLORFIXES, Variant, check_strength, get_variant
from interlcm.engines.backend import BackendOptions, open_backend
from interlcm.engines.outputs import source_id
from interlcm.engines.photo import PhotoOptions, PhotoRestorer, warp_device_for
from interlcm.engines.pipeline import PHOTO_FAILURES, PhotoPipeline, PipelineThreads
from interlcm.engines.ray_job import RAY_LOCAL_ONLY_ENV
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.faces.detectors import DEFAULT_DETECTOR, DetectorContext, open_detector, open_parser
from interlcm.imageio import ImageReadError, decode_rgb, encode_image
from interlcm.limits import PixelLimitError, PixelLimits, ServeLimits

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}  # response format -> content type


@dataclass(frozen=True)
class RequestOptions:
    """Options of one request; requests with equal options share an engine batch."""

    seed: int = 0
    colorfix: str = COLORFIXES[0]  # parse_options fills in the server variant's
    aligned: bool = PhotoOptions.aligned
    upscale: int = PhotoOptions.upscale
    format: str = "png"
    strength: float = PhotoOptions.strength

    def photo_options(self, variant: Variant | None = None) -> PhotoOptions:
        keep_gray = PhotoOptions.keep_gray if variant is None else variant.keep_gray
        return PhotoOptions(aligned=self.aligned, upscale=self.upscale, strength=self.strength, keep_gray=keep_gray)


class BadRequest(ValueError):
    """A request the server refuses; the message is the one-line reason sent back with the status."""

    def __init__(self, reason: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.headers = headers or {}


class FaceToolsMissing(RuntimeError):
    """Whole-photo mode cannot run on this server (no detector network): 501, not 500."""


def parse_options(query: dict[str, str], variant: Variant) -> RequestOptions:
    """Query parameters -> RequestOptions; BadRequest names the parameter, the value and what is allowed."""
    allowed = {"seed", "steps", "variant", "colorfix", "aligned", "upscale", "format", "strength"}
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}: use {', '.join(sorted(allowed))}")

    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"{name}={raw!r} is not an integer") from None
        if not low <= value <= high:
            raise BadRequest(f"{name}={value} is out of range: use {low}..{high}")
        return value

    for name, runs in (("steps", str(variant.steps)), ("variant", variant.name)):
        if query.get(name, runs) != runs:
            raise BadRequest(f"this server runs the {variant.name} model ({variant.steps}-step), not {name}={query[name]!r}: "
                             f"leave {name} out or start a server with --{name} {query[name]}")
    aligned = query.get("aligned", str(RequestOptions.aligned)).lower()
    if aligned not in ("true", "false", "1", "0"):
        raise BadRequest(f"aligned={query['aligned']!r}: use true or false")
    colorfix = query.get("colorfix", variant.colorfix)
    if colorfix not in COLORFIXES:
        raise BadRequest(f"colorfix={colorfix!r}: use one of {', '.join(COLORFIXES)}")
    fmt = query.get("format", "png").lower().replace("jpg", "jpeg")
    if fmt not in MEDIA_TYPES:
        raise BadRequest(f"format={query['format']!r}: use png or jpeg")
    return RequestOptions(seed=integer("seed", 0, 0, 2**63 - 1), colorfix=colorfix,
                          aligned=aligned in ("true", "1"), upscale=integer("upscale", PhotoOptions.upscale, 1, 8),
                          format=fmt, strength=_strength(query.get("strength")))


def _strength(raw: str | None) -> float:
    """The `strength` query parameter (choices.STRENGTH_RANGE); BadRequest names the value and the range."""
    if raw is None:
        return PhotoOptions.strength
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"strength={raw!r} is not a number") from None
    try:
        return check_strength(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, read as a stream: 413 as soon as it passes `max_bytes` (a declared length, or
    the bytes counted so far of a chunked body), 408 if all of it has not arrived within `timeout_s`."""

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(f"body of {declared} bytes is over the {max_bytes}-byte limit", 413)
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BadRequest(f"body is over the {max_bytes}-byte limit", 413)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout_s)
    except asyncio.TimeoutError:  # TimeoutError from Python 3.11 on
        raise BadRequest(f"the body did not arrive within {timeout_s:g} s ({size} bytes came): "
                         "send it in one go", 408) from None
    except ClientDisconnect:
        raise BadRequest("the client disconnected before sending the whole body") from None
    if not size:
        raise BadRequest("empty body: send the image file's bytes")
    return b"".join(chunks)


def decode_photo(body: bytes, options: RequestOptions, limits: PixelLimits):
    """Image bytes -> RGB pixels; over the pixel limits: 413 (input) or 422 (output), from the header alone."""

    try:
        return decode_rgb(body, "request body", limits=limits, upscale=options.photo_options().output_scale)
    except PixelLimitError as exc:
        raise BadRequest(str(exc).splitlines()[0], 413 if exc.which == "input" else 422) from None
    except ImageReadError as exc:
        raise BadRequest(str(exc).splitlines()[0]) from None


def _replica_grpc_on_loopback() -> None:
    """On a local-only Ray (ray_job.start_local_ray), keep this replica's internal gRPC server on loopback.

    Ray Serve (2.60) starts an inter-deployment gRPC server in every replica on "[::]:0", every
    interface, whether or not requests use it (by default they do not), and offers no setting for
    the address. A replica's constructor runs before Serve binds it: from here it binds 127.0.0.1.
    The socket test in tests/engines/test_serve.py fails if any Ray process listens elsewhere.
    """

    if os.environ.get(RAY_LOCAL_ONLY_ENV) != "0":
        return  # a real cluster: its nodes must reach each other
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback_only", False):
        return

    def bind_loopback(server: Any, address: str) -> int:
        return bind(server, address.replace("[::]", "127.0.0.1", 1))

    bind_loopback.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_loopback


# --- the model: one backend, engine batches --------------------------------------------------------


@serve.deployment
class RestoreModel:
    """One replica: one opened backend, dynamic batching, per-request options."""

    def __init__(self, backend: BackendOptions, max_batch: int = 4, batch_wait_s: float = 0.05):


        _replica_grpc_on_loopback()
        self._open = ExitStack()  # the backend stays open for the replica's life
        self.opened = self._open.enter_context(open_backend(replace(backend, batch=max_batch)))
        self.variant = get_variant(self.opened.variant)
        self.max_batch = max_batch
        self.restore.set_max_batch_size(max_batch)
        self.restore.set_batch_wait_timeout_s(batch_wait_s)
        self._faces: tuple[Any, Any] | None = None  # (detector, parser), opened on the first whole photo
        # one device thread calls the backend while CPU threads paste back: batches overlap (pipeline.py)
        self.threads = PipelineThreads()
        self.batch_sizes: list[int] = []  # photos of every batch handed to the pipeline, for tests and the benchmark
        self._graphs = None  # the CUDA-graph step chain, captured once per batch size and shared by every request

    def describe(self) -> tuple[str, str]:
        """(backend description with the step form that runs, variant name)."""
        return f"{self.opened.description}; {self.opened.fast.describe()}", self.variant.name

    def seen_batch_sizes(self) -> list[int]:
        return list(self.batch_sizes)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05, max_concurrent_batches=2)
    async def restore(self, items: list[tuple[Any, RequestOptions]]) -> list[Any]:
        """[(photo, options)] gathered from concurrent requests -> [restored photo or BadRequest]."""
        return await asyncio.to_thread(self._restore_groups, items)  # keep the replica's event loop responsive

    def _restore_groups(self, items: list[tuple[Any, RequestOptions]]) -> list[Any]:
        groups: dict[RequestOptions, list[int]] = {}
        for i, (_, options) in enumerate(items):
            groups.setdefault(options, []).append(i)
        results: list[Any] = [None] * len(items)
        for options, members in groups.items():
            photos = [np.array(items[i][0]) for i in members]  # writable copies of Ray's read-only views
            for i, result in zip(members, self._restore_group(options, photos)):
                results[i] = result
        return results

    def _restore_group(self, options: RequestOptions, photos: list[Any]) -> list[Any]:
        """Photos with the same options, restored together through the pipeline (batches of two calls
        overlap: one on the device, the other pasting back). A failing device stage is retried one photo
        at a time there (as the CLI does), so only the photo that caused a failure gets an error."""
        self.batch_sizes.append(len(photos))
        try:
            # built on the device thread, the only caller of the backend while batches overlap
            photo_restorer = self.threads.device.submit(self._photo_restorer, options).result()
            outcomes = PhotoPipeline(photo_restorer, self.threads).submit_photos(photos).outcomes()
        except FaceToolsMissing as exc:
            return [BadRequest(f"{exc}; or pass aligned=true for face crops", 501)] * len(photos)
        except PHOTO_FAILURES as exc:  # before any photo's own stages
            return [_failure(exc, photo, options) for photo in photos]
        results: list[Any] = []
        for photo, outcome in zip(photos, outcomes):
            try:
                results.append(outcome.result().image)
            except PHOTO_FAILURES as exc:
                results.append(_failure(exc, photo, options))
        return results

    def _photo_restorer(self, options: RequestOptions) -> PhotoRestorer:
        """A PhotoRestorer for these options on the replica's backend (the CUDA-graph chain shared)."""
        restorer = Restorer(self.opened.backend, self.opened.fast.apply(RestoreOptions(
            steps=self.variant.steps, seed=options.seed, colorfix=options.colorfix, batch=self.max_batch)),
            graphs=self._graphs)
        self._graphs = restorer.chain
        found_by, parser = (None, None) if options.aligned else self._face_tools()
        return PhotoRestorer(restorer, options.photo_options(self.variant), found_by, parser,
                             warp_device=warp_device_for(self.opened.backend))

    def _face_tools(self) -> tuple[Any, Any]:
        """The detector and parser whole photos need, opened once (the CLI's default detector)."""

        if self._faces is None:
            try:
                detector = open_detector(DEFAULT_DETECTOR, DetectorContext(backend=self.opened.backend))
            except RuntimeError as exc:
                raise FaceToolsMissing(str(exc).splitlines()[0]) from None
            self._faces = (detector, open_parser(self.opened.backend))
        return self._faces


def _failure(exc: BaseException, photo: Any, options: RequestOptions) -> BadRequest:
    """The one-line answer to the request whose photo failed to restore on its own."""
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, MemoryError):
        height, width = photo.shape[:2]
        return BadRequest(f"out of memory restoring a {width}x{height} photo at upscale {options.upscale} ({reason}): "
                          "send a smaller photo or a lower upscale", 413)
    return BadRequest(f"restoration failed: {reason}", 500)


# --- the front: HTTP, limits, decoding -------------------------------------------------------------

app = FastAPI(title="interlcm", docs_url=None, redoc_url=None)


@serve.deployment
@serve.ingress(app)
class RestoreFront:
    """Receives requests and answers them; the photos go to the RestoreModel deployment."""

    def __init__(self, model: Any, limits: ServeLimits | None = None):  # model: DeploymentHandle
        _replica_grpc_on_loopback()
        self.model, self.limits = model, limits or ServeLimits()
        self._described: tuple[str, Variant] | None = None  # (backend description, variant), asked once
        self._describing = asyncio.Lock()  # the first requests arrive together: one of them asks

    async def _describe(self) -> tuple[str, Variant]:

        async with self._describing:
            if self._described is None:
                description, variant = await self.model.describe.remote()
                self._described = (description, get_variant(variant))
        return self._described

    @app.get("/healthz")
    async def healthz(self) -> PlainTextResponse:
        from ray.serve.exceptions import BackPressureError

        try:
            description, _ = await self._describe()  # asked once; then answered here, whatever the load
        except BackPressureError:
            return PlainTextResponse("busy: the model has not described itself yet\n", status_code=503,
                                     headers={"Retry-After": str(self.limits.retry_after_s)})
        return PlainTextResponse(f"ok: {description}\n")

    @app.post("/restore")
    async def restore(self, request: Request) -> Response:
        from ray.serve.exceptions import BackPressureError


        limits = self.limits
        try:
            _, variant = await self._describe()
            options = parse_options(dict(request.query_params), variant)
            body = await read_body(request, limits.max_bytes, limits.body_timeout_s)
            pixels = await asyncio.to_thread(decode_photo, body, options, limits.pixels)
            image = await self.model.restore.remote((pixels, options))
            if isinstance(image, BadRequest):
                raise image
            data = await asyncio.to_thread(encode_image, image, f"restored.{options.format}",
                                        source=source_id(body))  # the bytes the CLI writes
        except BadRequest as exc:
            return PlainTextResponse(f"{exc}\n", status_code=exc.status, headers=exc.headers)
        except BackPressureError:  # the model replicas' queue is full
            return PlainTextResponse(f"the server is busy (more than {limits.max_queued} photos waiting): "
                                     f"retry in {limits.retry_after_s} s\n", status_code=503,
                                     headers={"Retry-After": str(limits.retry_after_s)})
        return Response(data, media_type=MEDIA_TYPES[options.format])

    async def seen_batch_sizes(self) -> list[int]:
        """Photos of every engine call of the model replica that answers (tests, benchmarks)."""
        return await self.model.seen_batch_sizes.remote()


def build_app(backend: BackendOptions, *, replicas: int = 1, max_batch: int = 4, batch_wait_s: float = 0.05,
              limits: ServeLimits | None = None, gpus: float = 0.0):  # -> serve Application
    """The Serve application: one front replica, `replicas` model replicas (a whole GPU each on GPU machines).

    Back-pressure is Ray Serve's own: a model replica takes at most `limits.max_ongoing` photos
    (being restored or gathered into a batch), at most `limits.max_queued` more wait, and the
    rest are refused with 503 and Retry-After; the front does the same for requests being received.
    """
    from ray.serve.config import BackpressureConfig

    limits = limits or ServeLimits()
    busy = BackpressureConfig(status_code=503, retry_after_s=limits.retry_after_s)
    model = RestoreModel.options(
        num_replicas=replicas, ray_actor_options={"num_gpus": gpus} if gpus else {"num_cpus": 0.5},
        max_ongoing_requests=limits.max_ongoing or 2 * max_batch, max_queued_requests=limits.max_queued,
        backpressure_config=busy,
    ).bind(backend, max_batch, batch_wait_s)
    return RestoreFront.options(
        num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=limits.max_open,
        max_queued_requests=limits.max_open_queued, backpressure_config=busy,
    ).bind(model, limits)


def start(app, host: str = "127.0.0.1", port: int = 8000):
    """Start Serve's HTTP proxy on host:port (127.0.0.1 by default: not reachable from other machines)."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name="interlcm", route_prefix="/")
