"""Restore photos over HTTP with Ray Serve: `POST /restore`, `GET /healthz`.

Each replica opens one backend and holds it. Concurrent requests are gathered into
engine batches by ``@serve.batch`` (up to the replica's batch size, waiting at most
``batch_wait_s`` for a batch to fill) and restored through the same
:class:`~interlcm.engines.photo.PhotoRestorer` as the CLI and the Ray job, so a
response is the CLI's output file for the same image and options, byte for byte
(a lone request runs at batch 1, as ``--batch 1``; see "Batch invariance" in the
README for what holds at other batch sizes).

    POST /restore?seed=0&steps=3&aligned=true&upscale=2&colorfix=wavelet&format=png
    body: the image file's bytes (PNG, JPEG, WebP, ...); response: PNG or JPEG bytes

A bad image, a bad option or a body over the size limit gets a 4xx with a
one-line reason (``text/plain``); the replica stays up.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from ray import serve

from interlcm.choices import COLORFIXES, Variant
from interlcm.engines.outputs import source_id
from interlcm.engines.photo import PhotoOptions

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}  # response format -> content type


@dataclass(frozen=True)
class RequestOptions:
    """Options of one request; requests with equal options share an engine batch."""

    seed: int = 0
    colorfix: str = COLORFIXES[0]  # parse_options fills in the server variant's
    aligned: bool = PhotoOptions.aligned
    upscale: int = PhotoOptions.upscale
    format: str = "png"


class BadRequest(ValueError):
    """A request the server refuses; the message is the one-line reason sent back with the 4xx."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status


class FaceToolsMissing(RuntimeError):
    """Whole-photo mode cannot run on this server (no detector network): 501, not 500."""


def parse_options(query: dict[str, str], variant: Variant) -> RequestOptions:
    """Query parameters -> RequestOptions; BadRequest names the parameter, the value and what is allowed."""
    allowed = {"seed", "steps", "variant", "colorfix", "aligned", "upscale", "format"}
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
                          format=fmt)


app = FastAPI(title="interlcm", docs_url=None, redoc_url=None)


@serve.deployment
@serve.ingress(app)
class RestoreServer:
    """One replica: one opened backend, dynamic batching, per-request options."""

    def __init__(self, backend_args: dict[str, Any], max_batch: int = 4, batch_wait_s: float = 0.05,
                 max_bytes: int = 20 << 20):
        from contextlib import ExitStack

        from interlcm.choices import get_variant
        from interlcm.engines.backend import open_backend

        self._open = ExitStack()  # the backend stays open for the replica's life
        self.opened = self._open.enter_context(open_backend(**{**backend_args, "batch": max_batch}))
        self.variant = get_variant(self.opened.variant)
        self.max_batch, self.max_bytes = max_batch, max_bytes
        self.restore_batch.set_max_batch_size(max_batch)
        self.restore_batch.set_batch_wait_timeout_s(batch_wait_s)
        self._faces: tuple[Any, Any] | None = None  # (detector, parser), opened on the first whole photo
        self.batch_sizes: list[int] = []  # faces of every engine call, for tests and the benchmark

    @app.get("/healthz")
    def healthz(self) -> PlainTextResponse:
        return PlainTextResponse(f"ok: {self.opened.description}\n")

    @app.post("/restore")
    async def restore(self, request: Request) -> Response:
        from interlcm.imageio import ImageReadError, decode_rgb, encode_image

        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > self.max_bytes:
                raise BadRequest(f"body of {declared} bytes is over the {self.max_bytes}-byte limit", 413)
            body = await request.body()
            if len(body) > self.max_bytes:
                raise BadRequest(f"body of {len(body)} bytes is over the {self.max_bytes}-byte limit", 413)
            if not body:
                raise BadRequest("empty body: send the image file's bytes")
            options = parse_options(dict(request.query_params), self.variant)
            try:
                pixels = decode_rgb(body, "request body")
            except ImageReadError as exc:
                raise BadRequest(str(exc).splitlines()[0]) from None
            image = await self.restore_batch((pixels, options))
            if isinstance(image, BadRequest):
                raise image
        except BadRequest as exc:
            return PlainTextResponse(f"{exc}\n", status_code=exc.status)
        data = encode_image(image, f"restored.{options.format}", source=source_id(body))  # the bytes the CLI writes
        return Response(data, media_type=MEDIA_TYPES[options.format])

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def restore_batch(self, items: list[tuple[Any, RequestOptions]]) -> list[Any]:
        """[(photo, options)] gathered from concurrent requests -> [restored photo or BadRequest]."""
        return await asyncio.to_thread(self._restore_groups, items)  # keep the event loop (healthz) responsive

    def _face_tools(self) -> tuple[Any, Any]:
        """The detector and parser whole photos need, opened once (the CLI's default detector)."""
        from interlcm.faces.detectors import DEFAULT_DETECTOR, DetectorContext, open_detector, open_parser

        if self._faces is None:
            try:
                detector = open_detector(DEFAULT_DETECTOR, DetectorContext(backend=self.opened.backend))
            except RuntimeError as exc:
                raise FaceToolsMissing(str(exc).splitlines()[0]) from None
            self._faces = (detector, open_parser(self.opened.backend))
        return self._faces

    def _restore_groups(self, items: list[tuple[Any, RequestOptions]]) -> list[Any]:
        from interlcm.engines.photo import PhotoRestorer
        from interlcm.engines.restorer import RestoreOptions, Restorer

        results: list[Any] = [None] * len(items)
        groups: dict[RequestOptions, list[int]] = {}
        for i, (_, options) in enumerate(items):
            groups.setdefault(options, []).append(i)
        for options, members in groups.items():
            restorer = Restorer(self.opened.backend, RestoreOptions(
                steps=self.variant.steps, seed=options.seed, colorfix=options.colorfix, batch=self.max_batch))
            self.batch_sizes.append(len(members))
            try:
                found_by, parser = (None, None) if options.aligned else self._face_tools()
                photos = PhotoRestorer(restorer, PhotoOptions(aligned=options.aligned, upscale=options.upscale),
                                       found_by, parser)
                restored = photos.restore_photos([items[i][0] for i in members])
            except FaceToolsMissing as exc:
                restored = [BadRequest(f"{exc}; or pass aligned=true for face crops", 501)] * len(members)
            except (ValueError, RuntimeError) as exc:
                restored = [BadRequest(f"restoration failed: {str(exc).splitlines()[0]}", 500)] * len(members)
            for i, result in zip(members, restored):
                results[i] = result if isinstance(result, BadRequest) else result.image
        return results

    def seen_batch_sizes(self) -> list[int]:
        return list(self.batch_sizes)


def build_app(backend_args: dict[str, Any], *, replicas: int = 1, max_batch: int = 4, batch_wait_s: float = 0.05,
              max_bytes: int = 20 << 20, gpus: float = 0.0):  # -> serve Application
    """The Serve application; on GPU machines each replica takes a whole GPU."""
    resources = {"num_gpus": gpus} if gpus else {"num_cpus": 0.5}
    return RestoreServer.options(
        num_replicas=replicas, ray_actor_options=resources, max_ongoing_requests=max(64, 4 * max_batch),
    ).bind(backend_args, max_batch, batch_wait_s, max_bytes)


def start(app, host: str = "127.0.0.1", port: int = 8000):  # noqa: ANN001 -> DeploymentHandle
    """Start Serve's HTTP proxy on host:port (127.0.0.1 by default: not reachable from other machines)."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name="interlcm", route_prefix="/")
