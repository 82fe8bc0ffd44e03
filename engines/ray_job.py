"""Restore a folder (or a bucket) of photos on a Ray cluster: read -> decode -> restore -> write.

The pipeline is a Ray Data dataset of (input, output) rows:

1. decode tasks read the bytes through the input filesystem and decode them
   (:func:`interlcm.imageio.decode_rgb`); an unreadable file becomes a row with a reason;
2. an actor pool restores them: each actor opens one backend and holds one
   :class:`~interlcm.engines.photo.PhotoRestorer` (the same unit of work as the
   single-process CLI), ``num_gpus=1`` per actor on GPU clusters, a fraction of a
   CPU on CPU-only ones (whole-CPU actors on a 2-core machine leave no CPU for the
   read tasks and the job never makes progress);
3. write tasks encode and write each result atomically (local: temp file + rename;
   object stores: one PUT per object), so an output that exists is complete.

Resumable: inputs whose output already exists are skipped before the job starts,
so a rerun only does what is missing and a killed job loses only the batches in
flight. Ray retries the tasks of a dead actor on a restarted one; outputs have
fixed names and are written atomically, so a retried batch rewrites the same
files with the same bytes and never leaves half-written or duplicate files.
Every input of a run gets one row in ``OUT/results.jsonl`` (written, skipped,
failed + a one-line reason).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from interlcm.engines.backend import BackendOptions
from interlcm.engines.photo import PhotoOptions
from interlcm.engines.restorer import RestoreOptions
from interlcm.faces.detectors import DEFAULT_DETECTOR

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True)
class JobSpec:
    """Everything an actor needs to build the same restorer the single-process CLI builds."""

    backend: BackendOptions  # what each actor opens: the single-process CLI's options, the same object
    options: RestoreOptions
    photo: PhotoOptions
    actors: int | None = None  # default: one per GPU, else 1
    detector: str = DEFAULT_DETECTOR  # whole-photo mode (interlcm.faces.detectors.DETECTORS)


@dataclass
class JobReport:
    rows: list[dict] = field(default_factory=list)  # one per input: input, output, status, reason, faces, backend
    seconds: float = 0.0  # wall time of the Ray Data job (skipped inputs cost nothing)
    actors: int = 0

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def faces(self) -> int:
        return sum(r["faces"] for r in self.rows if r["status"] == "written")

    def summary(self) -> str:
        written, rate = self.count("written"), self.count("written") / self.seconds if self.seconds else 0.0
        ran = sorted({r["backend"] for r in self.rows if r.get("backend")})  # what the actors opened
        return ("".join(f"backend: {b}\n" for b in ran)
                + f"{len(self.rows)} image(s): {written} restored ({self.faces} face(s)), "
                f"{self.count('skipped')} skipped (output exists), {self.count('failed')} failed; "
                f"{self.seconds:.1f} s on {self.actors} actor(s), {rate:.2f} images/s")


# --- where files live -----------------------------------------------------------------------------


def open_location(where: str):  # -> (pyarrow.fs.FileSystem, path inside it)
    """A local path, or a URI any pyarrow filesystem (s3://, gs://, hdfs://, file://) or fsspec reaches."""
    import pyarrow.fs as pafs

    if "://" not in where:
        return pafs.LocalFileSystem(), os.path.abspath(where)
    try:
        return pafs.FileSystem.from_uri(where)
    except (ValueError, NotImplementedError):  # ArrowInvalid / ArrowNotImplementedError: not a pyarrow scheme
        pass
    import fsspec  # any other scheme: az://, memory://, ... through fsspec

    fs, path = fsspec.core.url_to_fs(where)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _is_local(fs) -> bool:  # noqa: ANN001
    import pyarrow.fs as pafs

    return isinstance(fs, pafs.LocalFileSystem)


def list_inputs(inputs: Sequence[str]):  # -> (filesystem, [paths])
    """Image files of local files/folders/globs (as the CLI lists them) or of one remote folder."""
    from interlcm.imageio import IMAGE_EXTENSIONS, list_images

    remote = [i for i in inputs if "://" in i]
    if not remote:
        fs, _ = open_location(".")
        return fs, [os.path.abspath(p) for p in list_images(list(inputs))]
    if len(inputs) != 1:
        raise ValueError("give one remote folder (URI) per job, or local paths only")
    import pyarrow.fs as pafs

    fs, root = open_location(remote[0])
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return fs, [root]
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    paths = sorted(
        f.path for f in found
        if f.type == pafs.FileType.File and not f.base_name.startswith(".")
        and PurePosixPath(f.base_name).suffix.lower() in IMAGE_EXTENSIONS
    )
    if not paths:
        raise ValueError(f"no images found at {remote[0]!r}: give image files, folders or glob patterns")
    return fs, paths


def output_name(src: str) -> str:
    """Output file name for an input: `<stem>.png`, as the single-process CLI names it today.

    TODO(lead): the faces branch moves this mapping into engines/runtime.py (relative
    folders, clashing stems, JPEG in -> JPEG out); call that one from here when it lands.
    """
    return f"{PurePosixPath(src).stem}.png"


def _exists_complete(fs, path: str) -> bool:  # noqa: ANN001
    """Outputs are written atomically, so one that exists with data is complete."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    return info.type == pafs.FileType.File and (info.size or 0) > 0


def _read_bytes(fs, path: str) -> bytes:  # noqa: ANN001
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_bytes(fs, path: str, data: bytes) -> None:  # noqa: ANN001
    if _is_local(fs):  # temp file + fsync + rename: readers never see a half-written file
        from pathlib import Path

        from interlcm.files import atomic_write_bytes

        atomic_write_bytes(Path(path), data)
        return
    parent = str(PurePosixPath(path).parent)
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:  # object stores publish an object only when the upload completes
        f.write(data)


# --- the three stages -----------------------------------------------------------------------------


def _objects(items: list) -> np.ndarray:
    """A 1-D object array of (H, W, 3) arrays of different sizes (Ray stores it as a ragged tensor column)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


_NO_IMAGE = np.zeros((1, 1, 3), np.uint8)  # placeholder pixels of a failed row


def decode_stage(batch: dict[str, np.ndarray], fs, photo: PhotoOptions) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Read and decode each input; one over the pixel limits is refused from its header, before decoding."""
    from interlcm.imageio import ImageReadError, decode_rgb
    from interlcm.limits import PixelLimitError

    images, errors = [], []
    for src in batch["src"]:
        try:
            images.append(decode_rgb(_read_bytes(fs, src), src, limits=photo.limits, upscale=photo.output_scale))
            errors.append("")
        except (ImageReadError, PixelLimitError, OSError) as exc:
            images.append(_NO_IMAGE)
            errors.append(str(exc).splitlines()[0])
    return {"src": batch["src"], "dst": batch["dst"], "image": _objects(images), "error": np.array(errors, dtype=object)}


class RestoreActor:
    """Holds one opened backend and one PhotoRestorer for its whole life; restores batches of photos."""

    def __init__(self, spec: JobSpec):
        from interlcm.engines.backend import open_backend
        from interlcm.engines.photo import open_photo_restorer

        self._open = ExitStack()  # the backend stays open for the actor's life (its process exit releases it)
        opened = self._open.enter_context(open_backend(spec.backend))
        self.photos = open_photo_restorer(opened.backend, opened.fast.apply(spec.options), spec.photo, spec.detector,
                                          spec.backend.weights)
        self.aligned = spec.photo.aligned
        self.ran = f"{opened.description}; {opened.fast.describe()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = list(batch["error"])
        ok = [i for i, e in enumerate(errors) if not e]
        images = [np.array(img) for img in batch["image"]]  # Ray hands out read-only views
        faces = [0] * len(images)
        try:
            results = self.photos.restore_photos([images[i] for i in ok]) if ok else []
        except (ValueError, RuntimeError) as exc:  # e.g. NaN output: the batch fails, the job goes on
            results = []
            for i in ok:
                errors[i] = f"restoration failed: {str(exc).splitlines()[0]}"
        for i, result in zip(ok, results):
            images[i] = result.image
            faces[i] = 1 if self.aligned else len(result.faces)  # TODO(lead): PhotoResult should count faces
        return {"src": batch["src"], "dst": batch["dst"], "image": _objects(images),
                "error": np.array(errors, dtype=object), "faces": np.array(faces),
                "backend": np.array([self.ran] * len(images), dtype=object)}


def write_stage(batch: dict[str, np.ndarray], fs) -> dict[str, np.ndarray]:  # noqa: ANN001
    from interlcm.imageio import encode_image

    status, reasons = [], []
    for dst, image, error in zip(batch["dst"], batch["image"], batch["error"]):
        if error:
            status.append("failed")
            reasons.append(error)
            continue
        try:
            _write_bytes(fs, dst, encode_image(np.asarray(image, dtype=np.uint8), PurePosixPath(dst).name))
            status.append("written")
            reasons.append("")
        except OSError as exc:
            status.append("failed")
            reasons.append(f"cannot write {dst}: {exc}")
    return {"input": batch["src"], "output": batch["dst"], "status": np.array(status, dtype=object),
            "reason": np.array(reasons, dtype=object), "faces": batch["faces"], "backend": batch["backend"]}


# --- the job --------------------------------------------------------------------------------------


# Ray's own switch between a cluster node and a Ray for this machine alone (its default on macOS and Windows).
# When it is "0", Ray takes loopback as the node's IP address, and every service binds the node's IP address.
RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_local_ray(**init: Any) -> None:
    """Start Ray for this machine alone: every service it starts listens on loopback (127.0.0.1) only.

    Ray binds the GCS, the raylet, the object manager, every worker's gRPC server and its agents to
    the node's IP address. On Linux that is the external address, even for
    ``ray.init(_node_ip_address="127.0.0.1")``: ray.init replaces a loopback address by the external
    one. Ray's local-only mode keeps loopback; it is read when Ray is imported, so the variable is set
    for the processes Ray starts and the already imported constant follows it. The dashboard is not
    started (nothing here needs it). ``init``: more ray.init arguments (e.g. num_cpus).
    Raises RuntimeError, after shutting Ray down, if the node still is not on loopback.
    """
    os.environ[RAY_LOCAL_ONLY_ENV] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # what Ray reads at import when the variable above is set first
    ray.init(include_dashboard=False, logging_level="warning", **init)
    node_ip = ray.util.get_node_ip_address()
    if not _is_loopback(node_ip):
        ray.shutdown()
        raise RuntimeError(f"the local Ray cluster would listen on {node_ip}, not on loopback: "
                           f"set {RAY_LOCAL_ONLY_ENV}=0 before Ray is imported")


def _is_loopback(host: str) -> bool:
    import ipaddress

    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def connect(address: str) -> bool:
    """Join the cluster at `address`, or start one on loopback for `local`; True if we started Ray here."""
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        start_local_ray()
    else:
        ray.init(address=address, logging_level="warning")
    return True


def plan(inputs: Sequence[str], out: str) -> tuple[Any, Any, list[tuple[str, str]], list[dict]]:
    """(input fs, output fs, [(input, output)] to do, rows for inputs skipped because their output exists)."""
    in_fs, sources = list_inputs(inputs)
    out_fs, out_root = open_location(out)
    todo, skipped, seen = [], [], {}
    for src in sources:
        dst = str(PurePosixPath(out_root) / output_name(src))
        if dst in seen:
            raise ValueError(f"{src} and {seen[dst]} would both be written to {dst}: rename one of them")
        seen[dst] = src
        if dst in sources and _is_local(in_fs) == _is_local(out_fs):
            raise ValueError(f"output {dst} would overwrite an input: choose another --out")
        if _exists_complete(out_fs, dst):
            skipped.append({"input": src, "output": dst, "status": "skipped", "reason": "output exists", "faces": 0,
                            "backend": ""})
        else:
            todo.append((src, dst))
    return in_fs, out_fs, todo, skipped


def actor_resources(actors: int | None) -> tuple[int, dict[str, float]]:
    """(actors, per-actor resources): a whole GPU each on GPU clusters, else a CPU share leaving room for I/O."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), float(total.get("CPU", 1))
    if gpus:
        return actors or gpus, {"num_gpus": 1}
    actors = actors or 1
    # keep at least one CPU's worth free for the decode and write tasks (1 CPU each)
    return actors, {"num_cpus": round(min(1.0, max(cpus - 1, 0.5) / actors), 3)}


def run_job(spec: JobSpec, inputs: Sequence[str], out: str) -> JobReport:
    """Restore `inputs` into `out` on the connected Ray cluster; writes OUT/results.jsonl. Ray must be initialised."""
    import ray

    in_fs, out_fs, todo, skipped = plan(inputs, out)
    report = JobReport(rows=list(skipped))
    actors, resources = actor_resources(spec.actors)
    report.actors = actors
    backend = spec.backend
    if backend.threads is None and "num_cpus" in resources:  # split the cores, don't oversubscribe
        backend = replace(backend, threads=max(1, int(ray.cluster_resources().get("CPU", 1)) // actors))
    spec = replace(spec, backend=backend, actors=actors)
    start = time.perf_counter()
    try:
        if todo:
            ds = ray.data.from_items([{"src": s, "dst": d} for s, d in todo],
                                     override_num_blocks=min(len(todo), 4 * actors))
            ds = ds.map_batches(decode_stage, fn_kwargs={"fs": in_fs, "photo": spec.photo}, batch_size=spec.options.batch,
                                batch_format="numpy")
            ds = ds.map_batches(RestoreActor, fn_constructor_kwargs={"spec": spec}, batch_size=spec.options.batch,
                                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **resources)
            ds = ds.map_batches(write_stage, fn_kwargs={"fs": out_fs}, batch_format="numpy")
            for row in ds.iter_rows():
                report.rows.append({k: (int(v) if k == "faces" else str(v)) for k, v in row.items()})
    finally:  # also on Ctrl-C: the table lists what was done
        report.seconds = time.perf_counter() - start
        write_results(out_fs, open_location(out)[1], report.rows)
    return report


def write_results(fs, out_root: str, rows: list[dict]) -> str:  # noqa: ANN001
    path = str(PurePosixPath(out_root) / RESULTS_NAME)
    rows = sorted(rows, key=lambda r: r["input"])
    _write_bytes(fs, path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return path
