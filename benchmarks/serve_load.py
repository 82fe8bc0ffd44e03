"""The server under mixed load: normal requests while slow uploads trickle and oversized photos arrive.

    python -m interlcm.benchmarks.serve_load --preset tiny --requests 120 --in-flight 12 --slow 80

Starts a local Ray (loopback only) and the Serve app, warms it up, then sends the same
`--requests` aligned tiny faces, `--in-flight` at a time, twice:

1. alone;
2. while `--slow` clients each upload a body at 1 byte every `--trickle-s` seconds (they get
   408 when the server's body deadline passes) and, every second, an oversized photo: in turn
   a pixel-bomb PNG (a few hundred bytes whose header says 13000x13000) and a real 8000x6000
   JPEG (a 48 MP phone photo, over the server's default 24 MP).

For each phase: p50 / p99 / max latency of the normal requests and their failures, the slowest
`/healthz` (asked every second), and what the slow and the oversized requests got. Everything
goes to 127.0.0.1 only; every loop is bounded in count and time.

The load tools (`post`, `load`, `SlowClients`) are also what tests/engines/test_serve.py uses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from PIL import Image

from interlcm.config import get_preset
from interlcm.engines.backend import BackendOptions
from interlcm.engines.ray_job import start_local_ray
from interlcm.engines.serve import build_app, start
from interlcm.limits import ServeLimits
from interlcm.testing import pixel_bomb_png


@dataclass
class Answer:
    status: int  # HTTP status; 0: no answer (connection error or client timeout)
    seconds: float
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case


def post(url: str, body: bytes, query: str = "aligned=true", timeout: float = 120.0) -> Answer:
    """POST `body` to URL/restore?QUERY; never raises for HTTP or connection errors."""
    start = time.perf_counter()
    request = urllib.request.Request(f"{url}/restore?{query}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, time.perf_counter() - start, response.read(), _headers(response.headers))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, time.perf_counter() - start, exc.read(), _headers(exc.headers))
    except OSError as exc:
        return Answer(0, time.perf_counter() - start, str(exc).encode())


def _headers(message) -> dict[str, str]:
    return {name.lower(): value for name, value in message.items()}


def get(url: str, timeout: float = 30.0) -> Answer:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Answer(response.status, time.perf_counter() - start, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, time.perf_counter() - start, exc.read())
    except OSError as exc:
        return Answer(0, time.perf_counter() - start, str(exc).encode())


def load(url: str, bodies: list[bytes], in_flight: int, query: str = "aligned=true") -> list[Answer]:
    """POST every body, `in_flight` at a time; answers in the order of `bodies`."""
    with ThreadPoolExecutor(in_flight) as pool:
        return list(pool.map(lambda body: post(url, body, query), bodies))


class SlowClients:
    """`count` connections, each sending a POST whose body comes at one byte every `interval_s` seconds.

    A context manager: on entry every connection has sent its headers; one background thread
    trickles the bytes and reads answers until `until_s` has passed (at most) or the exit. For each
    connection `answers` holds (status, seconds after entry, body) once answered; status 0 means the
    server closed the connection without an answer.
    """

    def __init__(self, port: int, count: int, interval_s: float = 2.0, until_s: float = 60.0,
                 query: str = "aligned=true", declared_bytes: int = 100_000):
        self.port, self.count, self.interval_s, self.until_s = port, count, interval_s, until_s
        self.head = (f"POST /restore?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {declared_bytes}\r\n\r\n").encode()
        self.answers: dict[int, tuple[int, float, bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def pending(self) -> int:
        return self.count - len(self.answers)

    def __enter__(self) -> SlowClients:
        self._sockets = []
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.sendall(self.head)
            sock.setblocking(False)
            self._sockets.append(sock)
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()

    def wait(self, timeout_s: float) -> None:
        """Until every connection has its answer, or `timeout_s`."""
        deadline = time.perf_counter() + timeout_s
        while self.pending and time.perf_counter() < deadline:
            time.sleep(0.05)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(self._sockets):
            selector.register(sock, selectors.EVENT_READ, i)
        next_byte = time.perf_counter()
        while not self._stop.is_set() and self.pending and time.perf_counter() - self._start < self.until_s:
            for key, _ in selector.select(timeout=0.05):  # answers (or closed connections)
                self._answered(key.data, key.fileobj, selector)
            if time.perf_counter() >= next_byte:
                for i, sock in enumerate(self._sockets):
                    if i not in self.answers:
                        with contextlib.suppress(OSError):  # closed by the server: its answer is read above
                            sock.send(b"x")
                next_byte += self.interval_s
        selector.close()

    def _answered(self, i: int, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        """Read the whole answer (headers and body may come in separate packets), at most 2 s."""
        selector.unregister(sock)
        sock.settimeout(2.0)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
        status = int(data.split()[1]) if data.startswith(b"HTTP/") else 0
        self.answers[i] = (status, time.perf_counter() - self._start, data.partition(b"\r\n\r\n")[2])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, round(q / 100 * len(ranked) + 0.5) - 1))]


@contextlib.contextmanager
def health_probe(url: str, every_s: float = 1.0) -> Iterator[list[Answer]]:
    """Ask URL/healthz every `every_s` seconds while the block runs; yields the list of answers."""
    answers: list[Answer] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.wait(every_s):
            answers.append(get(f"{url}/healthz", timeout=30))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(timeout=35)


def summary(answers: list[Answer]) -> dict:
    ok = [a.seconds for a in answers if a.status == 200]
    failed = [a for a in answers if a.status != 200]
    return {"requests": len(answers), "ok": len(ok), "p50_s": round(percentile(ok, 50), 3),
            "p99_s": round(percentile(ok, 99), 3), "max_s": round(max(ok, default=float("nan")), 3),
            "failed": {str(a.status): a.body.decode(errors="replace").strip()[:120] for a in failed}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _faces(n: int, size: int) -> list[bytes]:


    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def _large_jpeg(width: int, height: int) -> bytes:
    """A smooth `width` x `height` JPEG: the size of a phone photo, a few hundred KB."""


    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(ramp[None, :, None], (height, width, 3)).copy()).save(buffer, format="JPEG")
    return buffer.getvalue()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", type=click.Choice(["tiny", "sd15"]), default="tiny", show_default=True)
@click.option("--requests", "count", type=click.IntRange(1, 10_000), default=120, show_default=True)
@click.option("--in-flight", type=click.IntRange(1, 256), default=12, show_default=True)
@click.option("--slow", type=click.IntRange(0, 1000), default=80, show_default=True, help="Slow uploading clients.")
@click.option("--trickle-s", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between two bytes of a slow client.")
@click.option("--batch", type=click.IntRange(1, 63), default=4, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--body-timeout", type=click.FloatRange(0.1), help="The server's body deadline (default: its own).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the numbers here.")
def main(preset, count, in_flight, slow, trickle_s, batch, threads, body_timeout, json_path) -> None:
    """Latency of normal requests alone and under slow clients and oversized photos, in one run."""

    from ray import serve


    limits = ServeLimits() if body_timeout is None else ServeLimits(body_timeout_s=body_timeout)
    bodies = _faces(count, get_preset(preset).resolution)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_local_ray(log_to_driver=False)
    report: dict = {"preset": preset, "requests": count, "in_flight": in_flight, "slow_clients": slow,
                    "trickle_s": trickle_s, "batch": batch, "threads": threads, "cpus": os.cpu_count(),
                    "body_timeout_s": limits.body_timeout_s}
    try:
        start(build_app(BackendOptions("torch", preset=preset, threads=threads), max_batch=batch, batch_wait_s=0.02,
                        limits=limits), port=port)
        load(url, bodies[:in_flight], in_flight)  # warm-up
        with health_probe(url) as health:
            started = time.perf_counter()
            report["alone"] = summary(load(url, bodies, in_flight))
            report["alone"]["wall_s"] = round(time.perf_counter() - started, 2)
        report["alone"]["healthz_max_s"] = round(max((a.seconds for a in health), default=float("nan")), 3)

        oversized_bodies = [pixel_bomb_png(13000, 13000), _large_jpeg(8000, 6000)]
        with SlowClients(port, slow, trickle_s, until_s=limits.body_timeout_s + 30) as trickling, \
                health_probe(url) as health:
            oversized: list[Answer] = []
            stop = threading.Event()

            def bombs() -> None:
                while not stop.wait(1.0):
                    oversized.append(post(url, oversized_bodies[len(oversized) % 2]))

            bomber = threading.Thread(target=bombs, daemon=True)
            bomber.start()
            started = time.perf_counter()
            answers = load(url, bodies, in_flight)
            wall = time.perf_counter() - started
            pending_at_end = trickling.pending
            stop.set()
            bomber.join(timeout=60)
            trickling.wait(limits.body_timeout_s + 20)
        report["with_slow_clients"] = summary(answers)
        report["with_slow_clients"].update(
            wall_s=round(wall, 2), slow_pending_when_done=pending_at_end,
            healthz_max_s=round(max((a.seconds for a in health), default=float("nan")), 3),
            slow_answers={str(s): sum(1 for a in trickling.answers.values() if a[0] == s)
                          for s in sorted({a[0] for a in trickling.answers.values()})},
            slow_answer_s=[round(min((a[1] for a in trickling.answers.values()), default=float("nan")), 1),
                           round(max((a[1] for a in trickling.answers.values()), default=float("nan")), 1)],
            oversized={str(s): sum(1 for a in oversized if a.status == s) for s in sorted({a.status for a in oversized})},
            oversized_max_s=round(max((a.seconds for a in oversized), default=float("nan")), 3))
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    click.echo(json.dumps(report, indent=2))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
