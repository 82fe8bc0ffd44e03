"""interlcm-app without a browser: upload checks, the --server client against Serve's own query parser, the command.

The page itself is driven in Chromium by test_app_browser.py.
"""

from __future__ import annotations

import io
import socket
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed (make install installs it)")

from interlcm.engines.app import (
    InputError,
    Limits,
    LocalEngine,
    ServerEngine,
    decode_photo,
    main,
    read_upload,
)
from interlcm.engines.backend import BackendOptions
from interlcm.engines.loaded import LoadedRestorer, RestoreRequest
from interlcm.engines.photo import PhotoOptions


@pytest.fixture(scope="module")
def loaded():
    with LoadedRestorer(BackendOptions("torch", preset="tiny")) as model:
        yield model


def _upload(tmp_path, name: str, data: bytes) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    return {"path": str(path), "orig_name": name}  # Gradio's FileData, as the page gets it unprocessed


def _png(shape=(40, 60, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name, data, limits, says", [
    ("notes.png", b"plain text, renamed", Limits(), "notes.png: not an image"),
    ("cut.png", _png()[:300], Limits(), "cut.png: cannot decode image"),
    ("big.png", _png(), Limits(max_mb=0.001), "over the 0.001 MB limit"),
    ("wide.png", _png((40, 60, 3)), Limits(max_megapixels=0.001), "60x40 (0.0 MP), over the 0.001 MP limit"),
])
def test_a_refused_upload_is_one_line_naming_the_file(tmp_path, name, data, limits, says):
    with pytest.raises(InputError) as info:
        path, shown = read_upload(_upload(tmp_path, name, data), limits)
        decode_photo(path, shown, limits)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert str(tmp_path) not in str(info.value)  # the user's file name, not the server's temporary path


def test_page_values_out_of_range_are_refused_in_one_line():
    """The handler gets the page's values unprocessed (an API call can send anything): checked before any work."""
    from interlcm.engines.app import VARIANT_COLORFIX, page_request

    good = dict(aligned=False, detector="dlib", only_center=False, upscale=2, bg=False, face_up=False,
                colorfix=VARIANT_COLORFIX, seed=7, strength=0.25)
    request = page_request(**good)
    assert (request.seed, request.colorfix, request.photo.upscale, request.photo.strength) == (7, None, 2, 0.25)
    for bad, says in (({"seed": -1}, "seed -1 is out of range"), ({"upscale": 9}, "upscale 9 is out of range"),
                      ({"strength": 1.5}, "strength 1.5 is out of range")):
        with pytest.raises(ValueError, match=says) as info:
            page_request(**{**good, **bad})
        assert "\n" not in str(info.value)


def test_server_and_a_model_are_refused_together():
    result = CliRunner().invoke(main, ["--server", "http://127.0.0.1:9", "--preset", "tiny"])
    assert result.exit_code == 2 and "not both" in result.output


def test_no_upload_is_one_line():
    with pytest.raises(InputError, match="No photo given"):
        read_upload(None, Limits())


def test_a_photo_without_faces_says_so(loaded):
    outcome = LocalEngine(loaded).restore_photo(np.full((60, 80, 3), 90, np.uint8), RestoreRequest(detector="dlib"))
    assert outcome.message == "No face found: the photo is only upscaled." and outcome.image.shape == (120, 160, 3)


class _StandInServe(BaseHTTPRequestHandler):
    """interlcm-serve's HTTP contract on one process: its own parse_options, the restorer it runs, its errors."""

    model: LoadedRestorer

    def do_GET(self) -> None:
        self._answer(200, f"ok: {self.model.description}\n".encode(), "text/plain")

    def do_POST(self) -> None:
        from interlcm.engines.serve import BadRequest, parse_options
        from interlcm.imageio import decode_rgb, encode_image

        url = urllib.parse.urlparse(self.path)
        body = self.rfile.read(int(self.headers["content-length"]))
        try:
            options = parse_options(dict(urllib.parse.parse_qsl(url.query)), self.model.variant)
        except BadRequest as exc:
            return self._answer(exc.status, f"{exc}\n".encode(), "text/plain")
        request = RestoreRequest(PhotoOptions(aligned=options.aligned, upscale=options.upscale,
                                              strength=options.strength), options.seed, options.colorfix)
        image = self.model.restore([decode_rgb(body, "request body")], request).results[0].image
        self._answer(200, encode_image(image, "restored.png"), "image/png")

    def _answer(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stand_in_serve(loaded):
    pytest.importorskip("ray", reason="serve.py's query parser imports Ray Serve (the ray extra)")
    handler = type("Handler", (_StandInServe,), {"model": loaded})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_mode_sends_the_options_serve_understands(stand_in_serve, loaded, tiny_cfg):
    """--server: same picture as in-process for the options Serve takes (aligned crop, seed, strength)."""
    r = tiny_cfg.resolution
    crop = np.random.default_rng(2).integers(0, 255, (r, r, 3), dtype=np.uint8)
    remote = ServerEngine(stand_in_serve)
    assert remote.random_weights and "tiny preset" in remote.description
    for strength in (1.0, 0.5):
        request = RestoreRequest(PhotoOptions(aligned=True, strength=strength), seed=3, colorfix="adain")
        here = LocalEngine(loaded).restore_photo(crop, request).image
        assert np.array_equal(remote.restore_photo(crop, request).image, here), strength


def test_server_mode_greys_out_what_serve_does_not_take(stand_in_serve, tmp_path):
    from interlcm.engines.app import build_page

    page = build_page(ServerEngine(stand_in_serve), tmp_path)
    by_id = {c.elem_id: c for c in page.blocks.values() if getattr(c, "elem_id", None)}
    assert by_id["detector"].interactive is False and by_id["only_center"].interactive is False
    assert by_id["strength"].interactive is not False and by_id["seed"].interactive is not False
    assert "banner" in by_id  # the stand-in runs random weights, and says so in /healthz


def test_server_mode_passes_serves_refusal_on_in_one_line(stand_in_serve):
    request = RestoreRequest(PhotoOptions(aligned=True), colorfix="sepia")
    with pytest.raises(InputError) as info:
        ServerEngine(stand_in_serve).restore_photo(np.zeros((8, 8, 3), np.uint8), request)
    assert str(info.value).startswith("interlcm-serve: colorfix='sepia'") and "\n" not in str(info.value)


def test_server_mode_that_cannot_reach_the_server_is_one_sentence():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    result = CliRunner().invoke(main, ["--server", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1 and "cannot reach interlcm-serve" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_help_offers_the_clis_backend_options():
    result = CliRunner().invoke(main, ["--help"])
    for option in ("--weights", "--onnx", "--engines", "--preset", "--backend", "--steps", "--server", "--port"):
        assert option in result.output


def test_the_command_serves_on_127_0_0_1_and_prints_its_url(monkeypatch):
    """`interlcm-app --preset tiny --port P`: says the backend and random weights, prints the URL, the page answers.

    Run in this process (a new one spends ~15 s importing torch and Gradio): where the command would wait
    for Ctrl-C, the test fetches the page and closes it.
    """
    import gradio as gr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetched = {}

    def block_thread(page) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
            fetched["page"] = answer.read()
        page.close()

    monkeypatch.setattr(gr.Blocks, "block_thread", block_thread)
    result = CliRunner().invoke(main, ["--preset", "tiny", "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert f"interlcm-app: open http://127.0.0.1:{port}/" in result.output
    assert "backend: torch" in result.output and "random weights" in result.output
    assert b"InterLCM face restoration" in fetched["page"]


def test_the_console_script_is_this_command():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "interlcm-app"]
    assert script.load() is main
