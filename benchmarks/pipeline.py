"""Photos per second of the pipelined runtime against the sequential one, on a simulated GPU, in one run.

    python -m interlcm.benchmarks.pipeline --photos 40 --size 4000x3000 --upscale 2 --device-ms 40 --device-ms 10

A folder of phone-size JPEG photos (1 to 4 faces each: the demo face, turned and scaled; generated
once and cached in .cache/bench-pipeline) goes through `restore_files` (read, restore, paste back, write JPEG) twice per simulated
device speed: sequentially (``workers=0``) and pipelined (``--workers`` CPU threads beside the device
thread), each in a fresh process (so each peak RSS is its own).

The GPU is a stand-in (a benchmark fixture, not a product option): every component call sleeps
``device-ms / calls per face`` per face in the batch, so restoring and parsing one face takes
``device-ms`` (a photo's detection costs one call's share). `time.sleep` releases the GIL as a GPU
call does. It runs the real sampler on the sd15 preset's shapes (512 px faces) and returns
zeros, except that the decoder gives back the input face (so the "restoration" is the aligned face);
the detector knows where it put the faces, the parser returns one fixed face mask (on a GPU the
parsing arithmetic runs on the device). Everything else is the product's code on the CPU:
JPEG decoding, the gray test, alignment, paste-back, JPEG encoding, atomic writes.

The ideal is ``max(device time, CPU time / workers)``: the device stage's time (its sleeps and the
CPU work the device thread does) and the CPU seconds of the sequential run. On a machine shared
with other work the pipelined run gets fewer cores than ``--workers``: the table gives the cores
the rest of the machine kept busy meanwhile, and the ideal for the cores that were left.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import cv2
import numpy as np
import torch
from PIL import Image

from interlcm.benchmarks.measure import CpuMeter, PeakRss
from interlcm.components import get_component
from interlcm.config import PRESETS, PresetConfig
from interlcm.engines.outputs import plan_outputs
from interlcm.engines.photo import DETECT_MIN_SIDE, PhotoOptions, PhotoRestorer
from interlcm.engines.pipeline import restore_files
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.faces.align import template
from interlcm.faces.detect import Detection
from interlcm.faces.parsenet import IN_SIZE, NUM_CLASSES, mask_from_logits
from interlcm.imageio import demo_image_path, read_rgb

CACHE = Path(".cache/bench-pipeline")
DEVICE_STAGES = ("detect", "align", "restore", "parse")  # PhotoRestorer.seconds keys timed on the device thread


class StandInGpu:
    """A backend whose component calls take `seconds` per batch item and compute nothing (see the module doc)."""

    name = "stand-in"
    device = torch.device("cpu")
    max_batch = None

    def __init__(self, config: PresetConfig, seconds: float):
        self.config = config
        self.seconds = seconds  # per item, per call
        self.busy = 0.0  # seconds slept
        self.calls = 0  # item-calls
        self._zeros: dict[tuple[int, ...], torch.Tensor] = {}
        self._faces: torch.Tensor | None = None

    def take(self, items: int) -> None:
        """The device time of one call on `items` items (the GIL is released meanwhile)."""
        time.sleep(self.seconds * items)
        self.busy += self.seconds * items
        self.calls += items

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = next(iter(inputs.values())).shape[0]
        self.take(batch)
        if "image" in inputs:
            self._faces = inputs["image"]  # the decoder hands the input faces back
        if component == "vae_decoder" or component.startswith("colorfix_"):
            return {"image": self._faces}
        shapes = get_component(component).output_shapes(self.config, batch)
        return {name: self._zeros_of(shape) for name, shape in shapes.items()}

    def _zeros_of(self, shape: tuple[int, ...]) -> torch.Tensor:
        if shape not in self._zeros:
            self._zeros[shape] = torch.zeros(shape)
        return self._zeros[shape]

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


class KnownFaces:
    """The stand-in detector: looks a photo up by its pixels and returns the landmarks it was made with."""

    landmark_kind = "retinaface"

    def __init__(self, landmarks: dict[str, list[list[list[float]]]], gpu: StandInGpu | None = None):
        self.gpu = gpu
        self.landmarks = landmarks

    def detect(self, photos: list[np.ndarray]) -> list[list[Detection]]:
        if self.gpu is not None:
            self.gpu.take(len(photos))
        found = []
        for photo in photos:
            faces = [np.asarray(lm, np.float32) for lm in self.landmarks[photo_key(photo)]]
            found.append([Detection(np.r_[lm.min(0), lm.max(0)], lm, 1.0) for lm in faces])
        return found


class FixedParser:
    """The stand-in ParseNet: one call's device time per face, one face-shaped mask for every face."""

    def __init__(self, gpu: StandInGpu, resolution: int):
        self.gpu = gpu
        yy, xx = np.mgrid[0:IN_SIZE, 0:IN_SIZE] / IN_SIZE - 0.5
        inside = (xx / 0.36) ** 2 + ((yy - 0.04) / 0.46) ** 2 < 1  # an upright ellipse: "skin"
        logits = torch.zeros(1, NUM_CLASSES, IN_SIZE, IN_SIZE)
        logits[0, 1][torch.from_numpy(inside)] = 1.0
        self.mask = mask_from_logits(logits)[0].numpy()  # the release's recipe, once
        assert resolution == IN_SIZE

    def __call__(self, faces: list[np.ndarray]) -> list[np.ndarray]:
        self.gpu.take(len(faces))
        return [self.mask] * len(faces)


def photo_key(photo: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(photo[::97, ::89]).tobytes(), digest_size=16).hexdigest()


def make_photos(folder: Path, count: int, size: tuple[int, int], faces_each: int | None = None) -> dict[str, list]:
    """`count` JPEG photos of `size` (w, h) with 1 to 4 faces (or `faces_each`: the demo face, turned and
    scaled) on a smooth background; their landmarks (the alignment template carried along), by photo key.
    Cached."""
    if min(size) < DETECT_MIN_SIDE:  # the detector would see an enlarged view, which the known faces do not key
        raise ValueError(f"photos of {size[0]}x{size[1]}: use a short side of at least {DETECT_MIN_SIDE} px")
    index = folder / "landmarks.json"
    if index.exists():
        return json.loads(index.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    face = read_rgb(demo_image_path())  # (256, 256, 3), about where the template puts a face
    w, h = size
    rng = np.random.default_rng(0)
    landmarks: dict[str, list] = {}
    for i in range(count):
        xx, yy = np.meshgrid(np.linspace(0, 1, w, dtype=np.float32), np.linspace(0, 1, h, dtype=np.float32))
        photo = np.stack([90 + 60 * xx, 110 + 40 * yy, 140 - 50 * xx], axis=2).astype(np.uint8)
        faces = []
        n = faces_each or i % 4 + 1
        columns = min(n, 5)
        rows = -(-n // columns)
        for k in range(n):
            scale, angle = rng.uniform(0.2, 0.3) / rows * h / face.shape[0], rng.uniform(-12, 12)
            centre = ((k % columns + 0.5) / columns * w, (k // columns + rng.uniform(0.35, 0.65)) / rows * h)
            matrix = cv2.getRotationMatrix2D((128.0, 128.0), angle, scale)
            matrix[:, 2] += np.subtract(centre, (128.0, 128.0))
            _paste(photo, face, matrix)
            faces.append((np.c_[template("retinaface", 256), np.ones(5)] @ matrix.T).tolist())
        path = folder / f"photo{i:03d}.jpg"
        Image.fromarray(photo).save(path, quality=92)
        landmarks[photo_key(read_rgb(path))] = faces
    index.write_text(json.dumps(landmarks))
    return landmarks


def _paste(photo: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> None:
    """Warp `face` onto `photo` in place, inside its box."""
    corners = np.array([[0, 0, 1], [256, 0, 1], [0, 256, 1], [256, 256, 1]], np.float64) @ matrix.T
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int), photo.shape[1::-1])
    local = matrix.copy()
    local[:, 2] -= (x0, y0)
    size = (int(x1 - x0), int(y1 - y0))
    warped = cv2.warpAffine(face, local, size, flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(face.shape[:2], np.float32), local, size, flags=cv2.INTER_LINEAR)[..., None]
    region = photo[y0:y1, x0:x1]
    region[...] = np.rint(inside * warped + (1 - inside) * region)


@dataclass
class Run:
    workers: int
    device_ms: float
    photos: int
    faces: int
    wall_s: float
    cpu_s: float  # this process, every thread
    device_s: float  # the device stages' time (sleeps and the device thread's own CPU work)
    slept_s: float  # of which the stand-in GPU's sleeps
    other_cores: float  # what the rest of the machine kept busy meanwhile
    peak_rss_mb: float
    stages: dict[str, float]


def run_once(folder: Path, workers: int, device_ms: float, upscale: int, batch: int) -> Run:
    """One `restore_files` over the folder on the stand-in GPU; outputs written to a temporary folder."""
    torch.set_num_threads(1)  # the stand-in computes nothing; the sampler's glue is tiny
    cfg = PRESETS["sd15"]
    landmarks = json.loads((folder / "landmarks.json").read_text())
    gpu = StandInGpu(cfg, 0.0)
    restorer = Restorer(gpu, RestoreOptions(batch=batch))
    restorer.restore(torch.zeros(1, 3, cfg.resolution, cfg.resolution))  # count the calls one face makes
    calls_per_face = gpu.calls + 1  # + ParseNet
    gpu.seconds, gpu.busy, gpu.calls = device_ms / 1000 / calls_per_face, 0.0, 0
    photos = PhotoRestorer(restorer, PhotoOptions(upscale=upscale), KnownFaces(landmarks, gpu),
                           FixedParser(gpu, cfg.resolution))
    paths = sorted(folder.glob("*.jpg"))
    with tempfile.TemporaryDirectory(dir=folder.parent) as out, PeakRss() as rss, CpuMeter() as cpu:
        report = restore_files(photos, plan_outputs(paths, Path(out)), progress=False, workers=workers)
    if report.count("failed"):
        raise RuntimeError(f"{report.count('failed')} photo(s) failed, e.g. {report.where('failed')[0].reason}")
    return Run(workers, device_ms, report.count("written"), sum(len(v) for v in landmarks.values()), cpu.result.wall_s,
               cpu.result.process_cpu_s, sum(photos.seconds[s] for s in DEVICE_STAGES), gpu.busy,
               cpu.result.other_cores, rss.peak / 2**20, dict(photos.seconds))


def big_photo(folder: Path, workers: int, upscale: int) -> dict[str, float]:
    """Peak RSS of `restore_files` on the folder's one big photo: tiny random weights (torch), its known faces."""
    from interlcm.config import TINY
    from interlcm.models.container import build_random
    from interlcm.torch_backend import TorchBackend

    torch.set_num_threads(1)
    landmarks = json.loads((folder / "landmarks.json").read_text())
    restorer = Restorer(TorchBackend(build_random(TINY, seed=0)), RestoreOptions(batch=4))
    photos = PhotoRestorer(restorer, PhotoOptions(upscale=upscale), KnownFaces(landmarks))
    paths = sorted(folder.glob("*.jpg"))
    with tempfile.TemporaryDirectory(dir=folder.parent) as out:
        before = PeakRss()
        with before:
            pass  # the process's size before the run: models, libraries
        with PeakRss() as rss, CpuMeter() as cpu:
            report = restore_files(photos, plan_outputs(paths, Path(out)), progress=False, workers=workers)
    if report.count("failed"):
        raise RuntimeError(f"failed: {report.where('failed')[0].reason}")
    return {"workers": workers, "wall_s": cpu.result.wall_s, "rss_before_mb": before.peak / 2**20,
            "peak_rss_mb": rss.peak / 2**20, "faces": sum(len(v) for v in landmarks.values())}


def _child(task: str, **args: object) -> dict:
    """`task` (run_once or big_photo) in a fresh process: its peak RSS is its own."""
    done = subprocess.run([sys.executable, "-m", "interlcm.benchmarks.pipeline", "--child",
                           json.dumps({"task": task, **args})], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"{task} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(seq: Run, pipe: Run, cores: int) -> dict[str, float]:
    """The ideal from the sequential run's work, and how the pipelined run did against it."""
    ideal = max(seq.device_s, seq.cpu_s / pipe.workers)
    left = max(0.1, min(pipe.workers, cores - pipe.other_cores))  # cores the pipelined run could have had
    ideal_left = max(seq.device_s, seq.cpu_s / left)
    return {"ideal_s": ideal, "pipelined_over_ideal": pipe.wall_s / ideal, "speedup": seq.wall_s / pipe.wall_s,
            "cores_left": left, "pipelined_over_ideal_left": pipe.wall_s / ideal_left}


@click.command()
@click.option("--photos", "count", type=click.IntRange(1), default=40, show_default=True)
@click.option("--size", default="4000x3000", show_default=True, help="Photo width x height.")
@click.option("--upscale", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=4, show_default=True, help="Faces per device batch.")
@click.option("--device-ms", type=float, multiple=True, default=(40.0, 10.0), show_default=True,
              help="Simulated device time per face (restore + parse); repeatable.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="CPU workers of the pipelined run.")
@click.option("--big", metavar="WxH", help="Instead: peak RSS of one photo this big with --big-faces faces, "
              "tiny random weights, sequential and pipelined.")
@click.option("--big-faces", type=click.IntRange(1), default=10, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the numbers here.")
@click.option("--child", hidden=True)
def main(count: int, size: str, upscale: int, batch: int, device_ms: tuple[float, ...], workers: int, big: str | None,
         big_faces: int, json_out: Path | None, child: str | None) -> None:
    """Sequential vs pipelined photos/s on a stand-in GPU, and the ideal."""
    if child:
        args = json.loads(child)
        task, folder = args.pop("task"), Path(args.pop("folder"))
        result = asdict(run_once(folder, **args)) if task == "run_once" else big_photo(folder, **args)
        click.echo(json.dumps(result))
        return
    cores = os.cpu_count() or 1
    if big:
        w, h = (int(v) for v in big.lower().split("x"))
        folder = CACHE / f"big-{w}x{h}-{big_faces}"
        make_photos(folder, 1, (w, h), faces_each=big_faces)
        rows = [_child("big_photo", folder=str(folder), workers=n, upscale=upscale) for n in (0, workers)]
        for row in rows:
            click.echo(f"{w}x{h}, {row['faces']} faces, --upscale {upscale}, workers={row['workers']}: peak RSS "
                       f"{row['peak_rss_mb']:.0f} MB ({row['rss_before_mb']:.0f} MB before the run), {row['wall_s']:.1f} s")
    else:
        w, h = (int(v) for v in size.lower().split("x"))
        folder = CACHE / f"{count}x{w}x{h}"
        click.echo(f"photos: {folder} ({count} x {w}x{h} JPEG, 1-4 faces each; generated once)")
        make_photos(folder, count, (w, h))
        rows = []
        for ms in device_ms:
            seq, pipe = (Run(**_child("run_once", folder=str(folder), workers=n, device_ms=ms, upscale=upscale,
                                      batch=batch)) for n in (0, workers))
            rows.append({"sequential": asdict(seq), "pipelined": asdict(pipe), **compare(seq, pipe, cores)})
            click.echo(_table(seq, pipe, rows[-1]))
    if json_out is not None:
        setting = ({"big": [w, h], "faces": big_faces} if big else
                   {"photos": count, "size": [w, h], "batch": batch})
        json_out.write_text(json.dumps({**setting, "upscale": upscale, "workers": workers, "cores": cores,
                                        "rows": rows}, indent=1))


def _table(seq: Run, pipe: Run, ratios: dict[str, float]) -> str:
    lines = [f"\n{seq.device_ms:g} ms per simulated face, {seq.photos} photos, {seq.faces} faces",
             "| runtime | wall s | photos/s | CPU s | cores used | device s | other cores | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in (("sequential", seq), (f"pipelined, {pipe.workers} workers", pipe)):
        lines.append(f"| {name} | {r.wall_s:.1f} | {r.photos / r.wall_s:.2f} | {r.cpu_s:.1f} | {r.cpu_s / r.wall_s:.2f} | "
                     f"{r.device_s:.1f} | {r.other_cores:.2f} | {r.peak_rss_mb:.0f} |")
    lines.append(f"ideal max(device {seq.device_s:.1f} s, CPU {seq.cpu_s:.1f} s / {pipe.workers}) = "
                 f"{ratios['ideal_s']:.1f} s: pipelined / ideal = {ratios['pipelined_over_ideal']:.2f}, "
                 f"speed-up over sequential {ratios['speedup']:.2f}x; with the {ratios['cores_left']:.2f} cores "
                 f"the machine left: pipelined / ideal = {ratios['pipelined_over_ideal_left']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
