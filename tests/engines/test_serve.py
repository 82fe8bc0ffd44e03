"""The Ray Serve endpoint: answers like the CLI, batches, refuses what it must in one line, and holds
under slow, huge and mixed requests. One server for the module, on the engine tests' local Ray.

Limits of this server (small, so the tests are quick): 200 KB bodies, a 10 s body deadline,
1 MP in, 4 MP out, a model replica takes 4 photos (one batch) and queues 12 more.
Cost, measured alone on the shared 2-core machine (load ~6-10): 65 s, of which ~40 s is starting
Ray, the reference faces and the server (in the full suite Ray is already up: ~28 s), 10 s the
slow uploads' deadline.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from interlcm.benchmarks.serve_load import SlowClients, free_port, get, load, post  # noqa: E402
from interlcm.engines.backend import BackendOptions  # noqa: E402
from interlcm.limits import MEGAPIXEL, PixelLimits, ServeLimits  # noqa: E402
from interlcm.testing import pixel_bomb_png  # noqa: E402

LIMITS = ServeLimits(max_bytes=200_000, body_timeout_s=10.0, pixels=PixelLimits(input=1 * MEGAPIXEL, output=4 * MEGAPIXEL),
                     max_ongoing=4, max_queued=12, retry_after_s=3)


@pytest.fixture(scope="module")
def server(ray_local):
    from ray import serve

    from interlcm.engines.serve import build_app, start

    port = free_port()
    app = build_app(BackendOptions("torch", preset="tiny", threads=1), max_batch=4, batch_wait_s=0.2, limits=LIMITS)
    handle = start(app, port=port)
    yield f"http://127.0.0.1:{port}", handle, port
    serve.shutdown()


def _face(reference_faces, i: int) -> bytes:
    return (reference_faces.root / "in" / f"face{i:02d}.png").read_bytes()


def _one_line(answer) -> bool:
    return len(answer.body.strip().splitlines()) == 1


def test_ray_listens_on_loopback_only(server):
    """Every socket that Ray's processes (GCS, raylet, agents, workers, Serve's proxy and replicas) listen on."""
    import psutil

    listening = []
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            name = " ".join(proc.cmdline())[:90]
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):  # TCP listen, bound UDP
                    listening.append((name, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    names = " ".join(name for name, _, _ in listening)
    assert "gcs_server" in names and "raylet" in names and "RestoreModel" in names and "ProxyActor" in names, names
    exposed = [s for s in listening if not ipaddress.ip_address(s[1].removeprefix("::ffff:")).is_loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_serve_answers_like_the_cli(server, reference_faces):
    url, _, _ = server
    health = get(f"{url}/healthz")
    assert health.status == 200 and b"ok: torch" in health.body
    answer = post(url, _face(reference_faces, 0), f"seed={reference_faces.seed}&aligned=true")
    assert answer.status == 200, answer.body
    assert answer.body == (reference_faces.root / "reference" / "face00.png").read_bytes()


def test_serve_batches_concurrent_requests(server, reference_faces):
    url, handle, _ = server
    before = len(handle.seen_batch_sizes.remote().result())
    bodies = [_face(reference_faces, i) for i in range(12)]
    answers = load(url, bodies, in_flight=12, query=f"seed={reference_faces.seed}&aligned=true")
    sizes = handle.seen_batch_sizes.remote().result()[before:]
    assert all(a.status == 200 for a in answers), [a.body[:200] for a in answers if a.status != 200]
    assert sum(sizes) == 12 and max(sizes) > 1, sizes  # gathered into engine batches, every face once
    for i, answer in enumerate(answers):  # batched faces: within one grey level of the CLI's
        got = np.asarray(Image.open(io.BytesIO(answer.body)), dtype=np.int16)
        want = np.asarray(Image.open(reference_faces.root / "reference" / f"face{i:02d}.png"), dtype=np.int16)
        assert np.abs(got - want).max() <= 1, i


def _chunked_post(port: int, total: int) -> tuple[int, bytes]:
    """POST `total` bytes with Transfer-Encoding: chunked (no Content-Length for the server to check first)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/restore?aligned=true", body=(b"x" * 10_000 for _ in range(total // 10_000)),
                     encode_chunked=True)
        response = conn.getresponse()
        return response.status, response.read()
    except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before we finished
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_serve_refuses_bad_requests_in_one_line_and_stays_healthy(server, reference_faces):
    url, _, port = server
    good = _face(reference_faces, 1)
    photo = io.BytesIO()
    Image.new("RGB", (600, 400), (90, 120, 150)).save(photo, format="JPEG")
    for body, query, code, reason in (
        (b"definitely not an image", "aligned=true", 400, b"not an image"),
        (good, "seed=minus-one&aligned=true", 400, b"seed='minus-one' is not an integer"),
        (good, "steps=1&aligned=true", 400, b"runs the 3step model"),
        (good, "colour=red", 400, b"unknown query parameter"),
        (b"", "aligned=true", 400, b"empty body"),
        (b"x" * 300_000, "aligned=true", 413, b"200000-byte limit"),
        (pixel_bomb_png(13000, 13000), "aligned=true", 413, b"13000x13000 is 169 MP, over the 1 MP input limit"),
        (photo.getvalue(), "upscale=5", 422, b"600x400 at upscale 5 gives 3000x2000 = 6 MP, over the 4 MP output"),
    ):
        answer = post(url, body, query)
        assert answer.status == code and reason in answer.body, (answer.status, answer.body)
        assert _one_line(answer), answer.body
    status, body = _chunked_post(port, 300_000)
    assert status == 413 and b"over the 200000-byte limit" in body and len(body.strip().splitlines()) == 1, body
    answer = post(url, good, f"seed={reference_faces.seed}&aligned=true")
    assert answer.status == 200 and answer.body == (reference_faces.root / "reference" / "face01.png").read_bytes()


def test_slow_uploads_and_oversized_photos_do_not_stall_other_requests(server, reference_faces):
    """80 uploads at 1 byte/s, a pixel bomb and 8 normal requests (4 in flight) at once: the normal ones
    and /healthz are answered while every slow upload is still open; the slow ones get 408 at the deadline."""
    url, _, port = server
    bodies = [_face(reference_faces, i) for i in range(8)]
    with SlowClients(port, 80, interval_s=1.0, until_s=LIMITS.body_timeout_s + 15) as slow:
        started = time.perf_counter()
        health = get(f"{url}/healthz", timeout=10)
        bomb = post(url, pixel_bomb_png(13000, 13000), timeout=10)
        answers = load(url, bodies, in_flight=4)
        normal_s = time.perf_counter() - started
        pending_when_done = slow.pending
        slow.wait(LIMITS.body_timeout_s + 10)
    assert health.status == 200 and health.seconds < 5, health
    assert bomb.status == 413 and bomb.seconds < 5 and _one_line(bomb), bomb
    assert all(a.status == 200 for a in answers), [(a.status, a.body[:200]) for a in answers if a.status != 200]
    # the stated time: all 8 answered within the slow uploads' deadline, while all 80 were still open
    assert normal_s < LIMITS.body_timeout_s and pending_when_done == 80, (normal_s, pending_when_done)
    statuses = [status for status, _, _ in slow.answers.values()]
    assert statuses == [408] * 80, statuses
    assert all(LIMITS.body_timeout_s <= s < LIMITS.body_timeout_s + 10 for _, s, _ in slow.answers.values())
    assert all(b"did not arrive within 10 s" in body and len(body.strip().splitlines()) == 1
               for _, _, body in slow.answers.values())


def test_overload_gets_503_with_retry_after_not_a_hang(server, reference_faces):
    """40 at once against 4 photos in work + 12 queued: the rest are refused at once, the others restored."""
    url, _, _ = server
    bodies = [_face(reference_faces, i % 12) for i in range(40)]
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda b: post(url, b, "aligned=true", timeout=60), bodies))
    refused = [a for a in answers if a.status == 503]
    assert {a.status for a in answers} == {200, 503}, {a.status for a in answers}
    assert len(refused) >= 10, len(refused)  # more slip in as batches finish while the others arrive
    assert all(a.headers.get("retry-after") == "3" and b"the server is busy" in a.body and _one_line(a)
               for a in refused), refused[0]
    assert max(a.seconds for a in refused) < 10
    assert get(f"{url}/healthz").status == 200


@pytest.mark.parametrize("stage", ["run_device", "finish"])
def test_a_photo_that_fails_fails_alone(reference_faces, monkeypatch, stage):
    """An engine batch with one photo too large for memory, on the device or in paste-back: the other three
    are restored, the large one gets its own one-line 413 (the batch logic of the model replica, in this
    process). A failed device stage is retried photo by photo (the others: the CLI's pixels at --batch 1);
    a failed paste-back fails only its photo (the others keep their batch of 4: within one level)."""
    from interlcm.engines.photo import PhotoRestorer
    from interlcm.engines.serve import BadRequest, RequestOptions, RestoreModel

    original = getattr(PhotoRestorer, stage)
    device_calls = []

    def pixels(item):
        return item.pixels if stage == "run_device" else item.photo.pixels

    def out_of_memory_for_large_photos(self, photos):
        items = photos if stage == "run_device" else [photos]
        if stage == "run_device":
            device_calls.append(len(items))
        if any(pixels(p).shape[0] * pixels(p).shape[1] > 100_000 for p in items):
            raise MemoryError("Unable to allocate 1.07 GiB for an array with shape (12000, 16000, 3)")
        return original(self, photos)

    monkeypatch.setattr(PhotoRestorer, stage, out_of_memory_for_large_photos)
    model = RestoreModel.func_or_class(BackendOptions("torch", preset="tiny", threads=1), max_batch=4)
    small = [np.array(Image.open(reference_faces.root / "in" / f"face{i:02d}.png")) for i in range(3)]
    large = np.zeros((400, 600, 3), np.uint8)
    options = RequestOptions(seed=reference_faces.seed, aligned=True)
    try:
        results = model._restore_groups([(small[0], options), (large, options), (small[1], options), (small[2], options)])
    finally:
        model.threads.close()
    assert model.batch_sizes == [4]
    if stage == "run_device":
        assert device_calls == [4, 1, 1, 1, 1]  # together, then each alone
    assert isinstance(results[1], BadRequest) and results[1].status == 413, results[1]
    assert "out of memory restoring a 600x400 photo at upscale 2" in str(results[1]) and "\n" not in str(results[1])
    assert pickle.loads(pickle.dumps(results[1])).status == 413  # what the front receives from the model replica
    for result, i in zip((results[0], results[2], results[3]), range(3)):
        want = np.asarray(Image.open(reference_faces.root / "reference" / f"face{i:02d}.png"))
        assert isinstance(result, np.ndarray), result
        if stage == "run_device":  # alone: the CLI's pixels at --batch 1
            assert np.array_equal(result, want), i
        else:
            assert np.abs(result.astype(int) - want).max() <= 1, i


def test_serve_strength_query(server, reference_faces):
    """strength=0 gives the aligned crop back (model-sized already), strength=1 the CLI's bytes; out of range: 400."""
    url, _, _ = server
    crop = _face(reference_faces, 2)
    answer = post(url, crop, f"seed={reference_faces.seed}&aligned=true&strength=0")
    assert answer.status == 200, answer.body
    original = np.asarray(Image.open(reference_faces.root / "in" / "face02.png"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer.body))), original)
    answer = post(url, crop, f"seed={reference_faces.seed}&aligned=true&strength=1")
    assert answer.status == 200 and answer.body == (reference_faces.root / "reference" / "face02.png").read_bytes()
    answer = post(url, crop, "aligned=true&strength=1.5")
    assert answer.status == 400 and b"out of range" in answer.body and _one_line(answer)
