"""Throughput of the Ray Data job and the Ray Serve endpoint against the single-process path, in one run.

    python -m interlcm.benchmarks.scale --preset tiny --images 32 --batch 4 --actors 2

All three restore the same N aligned faces with the same backend and options:

* single process: one opened backend, `PhotoRestorer.restore_photos` over the faces in
  batches (what `interlcm-trt restore` does, minus file I/O); model loading not timed;
* Ray job: `run_job` from a fresh output folder, wall time including the actors' start
  (each opens its own backend), decode and atomic writes; the cluster is already up;
* Serve: one replica (started and warmed up before timing), N concurrent POSTs with
  `--concurrency` in flight, wall time until the last answer.

On a CPU-only machine the actors and the replica share the same cores as everything else,
so the ratios measure Ray's overhead, not scaling.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np
from PIL import Image

from interlcm.config import get_preset
from interlcm.engines.backend import BackendOptions, open_backend
from interlcm.engines.photo import PhotoOptions, PhotoRestorer
from interlcm.engines.ray_job import JobSpec, run_job, start_local_ray
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.imageio import read_rgb


def _faces(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"face{i:04d}.png")
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def single_process(backend: BackendOptions, paths: list[Path], batch: int) -> float:
    with open_backend(backend) as opened:
        photos = PhotoRestorer(Restorer(opened.backend, opened.fast.apply(RestoreOptions(batch=batch))),
                               PhotoOptions(aligned=True))
        photos.restore_photos([read_rgb(paths[0])])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(paths), batch):
            photos.restore_photos([read_rgb(p) for p in paths[i : i + batch]])
        return time.perf_counter() - start


def ray_job(backend: BackendOptions, folder: Path, out: Path, batch: int, actors: int) -> float:
    spec = JobSpec(backend, RestoreOptions(batch=batch), PhotoOptions(aligned=True), actors)
    report = run_job(spec, [str(folder)], str(out))
    assert report.count("written") == len(report.results), report.summary()
    return report.seconds


def serve_endpoint(backend: BackendOptions, paths: list[Path], batch: int, concurrency: int) -> tuple[float, list[int]]:
    from interlcm.engines.serve import build_app, start  # Ray Serve: an optional dependency

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handle = start(build_app(backend, max_batch=batch, batch_wait_s=0.02), port=port)
    bodies = [p.read_bytes() for p in paths]

    def post(body: bytes) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/restore?aligned=true", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            return response.status

    post(bodies[0])  # warm-up
    before = len(handle.seen_batch_sizes.remote().result())
    start_time = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(post, bodies))
    seconds = time.perf_counter() - start_time
    assert all(s == 200 for s in statuses)
    return seconds, handle.seen_batch_sizes.remote().result()[before:]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", type=click.Choice(["tiny", "sd15"]), default="tiny", show_default=True)
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True)
@click.option("--onnx", type=click.Path(path_type=Path), help="ONNX folder for --backend onnxruntime.")
@click.option("--images", type=click.IntRange(1), default=32, show_default=True)
@click.option("--batch", type=click.IntRange(1, 63), default=4, show_default=True)
@click.option("--actors", type=click.IntRange(1), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(1), default=16, show_default=True, help="Serve: requests in flight.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch/ORT threads per process (single process, each actor, the replica): the same everywhere, "
              "since oversubscribed cores make torch 3-10x slower (MEASUREMENTS.md).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the numbers here.")
def main(preset, backend, onnx, images, batch, actors, concurrency, threads, json_path) -> None:
    """Images per second: single process vs Ray Data job vs Ray Serve, same inputs, one run."""
    import ray
    from ray import serve

    options = BackendOptions(backend, preset=preset, onnx=onnx, batch=batch, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _faces(Path(tmp) / "in", images, get_preset(preset).resolution)
        rows = {"single process": single_process(options, paths, batch)}
        start_local_ray(log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            rows[f"ray job, {actors} actors"] = ray_job(options, Path(tmp) / "in", Path(tmp) / "out", batch, actors)
            rows["serve, 1 replica"], sizes = serve_endpoint(options, paths, batch, concurrency)
        finally:
            serve.shutdown()
            ray.shutdown()
    base = images / rows["single process"]
    click.echo(f"{images} {preset} faces, {backend}, batch {batch}, {threads} thread(s) per process, {os.cpu_count()} CPUs")
    click.echo(f"{'path':<24}{'seconds':>9}{'images/s':>10}{'ratio':>8}")
    for name, seconds in rows.items():
        click.echo(f"{name:<24}{seconds:9.2f}{images / seconds:10.2f}{images / seconds / base:8.2f}")
    click.echo(f"serve batch sizes seen by the replica: {sizes}")
    if json_path:
        json_path.write_text(json.dumps({"images": images, "preset": preset, "backend": backend, "batch": batch, "threads": threads,
                                         "actors": actors, "seconds": rows, "serve_batch_sizes": sizes}, indent=2))


if __name__ == "__main__":
    main()
