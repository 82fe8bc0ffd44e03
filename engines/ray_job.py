"""Restore a folder (or a bucket) of photos on a Ray cluster: read -> decode -> restore -> write.

It is the restore command on a cluster: the outputs are planned by the same
:func:`interlcm.engines.outputs.plan_outputs` (mirrored folders, JPEG in -> JPEG out,
`--save-faces` folders, never over an input or a file that is not an earlier output of the
same input), and every input gets the same :class:`~interlcm.engines.outputs.InputResult`.
The pipeline is a Ray Data dataset of planned rows:

1. decode tasks read the bytes through the input filesystem, hash them (the id every output
   records) and decode them (:func:`interlcm.imageio.decode_rgb`); an unreadable file becomes
   a row with a reason;
2. an actor pool restores them: each actor opens one backend and holds one
   :class:`~interlcm.engines.photo.PhotoRestorer` (the same unit of work as the
   single-process CLI), ``num_gpus=1`` per actor on GPU clusters, a fraction of a
   CPU on CPU-only ones (whole-CPU actors on a 2-core machine leave no CPU for the
   read tasks and the job never makes progress);
3. write tasks encode and write each result, faces first, atomically (local: temp file +
   rename; object stores: one PUT per object), so an output that exists is complete. A file
   that cannot be written fails its row; a full disk stops the job.

Resumable: inputs whose output already exists (and records that very input) are skipped
before the job starts, so a rerun only does what is missing and a killed job loses only
the batches in flight. Ray retries the tasks of a dead actor on a restarted one; outputs have
fixed names and are written atomically, so a retried batch rewrites the same
files with the same bytes and never leaves half-written or duplicate files.
Every input of a run gets one row in ``OUT/results.jsonl`` (written, skipped,
failed + a one-line reason).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import numpy as np

from interlcm.engines.backend import BackendOptions, open_backend
from interlcm.engines.outputs import (
    LOCAL,
    InputResult,
    OutputClash,
    RestoreReport,
    RunPlan,
    plan_outputs,
    source_id,
)
from interlcm.engines.photo import PhotoOptions, open_photo_restorer
from interlcm.engines.restorer import RestoreOptions
from interlcm.faces.detectors import DEFAULT_DETECTOR
from interlcm.files import DiskFull, FilesError, atomic_write_bytes, clean_stale_temporaries
from interlcm.imageio import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    decode_rgb,
    encode_image,
    list_images,
    read_source,
)
from interlcm.limits import PixelLimitError

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True)
class JobSpec:
    """Everything an actor needs to build the same restorer the single-process CLI builds."""

    backend: BackendOptions  # what each actor opens: the single-process CLI's options, the same object
    options: RestoreOptions
    photo: PhotoOptions
    actors: int | None = None  # default: one per GPU, else 1
    detector: str = DEFAULT_DETECTOR  # whole-photo mode (interlcm.faces.detectors.DETECTORS)


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


def _is_local(fs) -> bool:
    import pyarrow.fs as pafs

    return isinstance(fs, pafs.LocalFileSystem)


def list_inputs(inputs: Sequence[str]):  # -> (filesystem, [paths])
    """Image files of local files/folders/globs (as the CLI lists them) or of one remote folder."""

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


class ArrowStore:
    """engines.outputs.Store over pyarrow filesystems: outputs on `out_fs`, inputs read through `in_fs`."""

    def __init__(self, in_fs, out_fs):
        self.in_fs, self.out_fs = in_fs, out_fs

    def kind(self, path: PurePath) -> str | None:
        import pyarrow.fs as pafs

        info = self.out_fs.get_file_info(str(path))
        return {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(info.type)

    def identity(self, path: PurePath) -> str:
        return str(path)  # an object store has one name per object

    def children(self, folder: PurePath) -> list[PurePath]:
        import pyarrow.fs as pafs

        found = self.out_fs.get_file_info(pafs.FileSelector(str(folder), allow_not_found=True))
        return [PurePosixPath(f.path) for f in found]

    def recorded_source(self, path: PurePath) -> str | None:

        with self.out_fs.open_input_stream(str(path)) as f:
            return read_source(f)

    def source_id(self, path: PurePath) -> str:
        return source_id(_read_bytes(self.in_fs, str(path)))


def _read_bytes(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_bytes(fs, path: str, data: bytes) -> None:
    if _is_local(fs):  # temp file + fsync + rename: readers never see a half-written file

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


_COLUMNS = ("src", "dst", "faces_dir")  # the plan's paths, carried through every stage


def decode_stage(batch: dict[str, np.ndarray], fs, photo: PhotoOptions) -> dict[str, np.ndarray]:
    """Read, hash and decode each input; one over the pixel limits is refused from its header, before decoding."""

    images, errors, sources = [], [], []
    for src in batch["src"]:
        try:
            data = _read_bytes(fs, src)
            image = decode_rgb(data, src, limits=photo.limits, upscale=photo.output_scale)
            source, error = source_id(data), ""
        except (ImageReadError, PixelLimitError, OSError) as exc:
            image, source, error = _NO_IMAGE, "", str(exc).splitlines()[0]
        images.append(image)
        sources.append(source)
        errors.append(error)
    return {**{k: batch[k] for k in _COLUMNS}, "source": np.array(sources, dtype=object), "image": _objects(images),
            "error": np.array(errors, dtype=object)}


class RestoreActor:
    """Holds one opened backend and one PhotoRestorer for its whole life; restores batches of photos."""

    def __init__(self, spec: JobSpec):

        self._open = ExitStack()  # the backend stays open for the actor's life (its process exit releases it)
        opened = self._open.enter_context(open_backend(spec.backend))
        self.photos = open_photo_restorer(opened.backend, opened.fast.apply(spec.options), spec.photo, spec.detector,
                                          spec.backend.weights)
        self.ran = f"{opened.description}; {opened.fast.describe()}"  # what this actor opened, for the report

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = list(batch["error"])
        ok = [i for i, e in enumerate(errors) if not e]
        images = [np.array(img) for img in batch["image"]]  # Ray hands out read-only views
        faces: list[np.ndarray] = [_NO_FACES] * len(images)
        found, notes = [0] * len(images), [""] * len(images)
        try:
            results = self.photos.restore_photos([images[i] for i in ok]) if ok else []
        except (ValueError, RuntimeError) as exc:  # e.g. NaN output: the batch fails, the job goes on
            results = []
            for i in ok:
                errors[i] = f"restoration failed: {str(exc).splitlines()[0]}"
        for i, result in zip(ok, results):
            images[i] = result.image
            faces[i] = np.stack(result.faces) if result.faces else _NO_FACES  # (N, R, R, 3), --save-faces
            found[i] = result.found
            notes[i] = "\n".join(result.notes)
        return {**{k: batch[k] for k in (*_COLUMNS, "source")}, "image": _objects(images), "faces": _objects(faces),
                "found": np.array(found), "notes": np.array(notes, dtype=object), "error": np.array(errors, dtype=object),
                "backend": np.array([self.ran] * len(images), dtype=object)}


_NO_FACES = np.zeros((0, 1, 1, 3), np.uint8)


def write_stage(batch: dict[str, np.ndarray], fs) -> dict[str, np.ndarray]:
    """Write each row's faces, then its photo (last: its presence means complete); one result row each."""

    rows = []
    for i, (src, dst, error) in enumerate(zip(batch["src"], batch["dst"], batch["error"])):
        if error:
            rows.append(InputResult(str(src), str(dst), "failed", str(error)))
            continue
        source, folder = str(batch["source"][i]), str(batch["faces_dir"][i])
        try:
            for n, face in enumerate(np.asarray(batch["faces"][i], dtype=np.uint8)):
                path = str(PurePosixPath(folder) / f"{n:02d}.png")
                _write_bytes(fs, path, encode_image(face, path, source=source))
            _write_bytes(fs, str(dst), encode_image(np.asarray(batch["image"][i], dtype=np.uint8), str(dst), source=source))
        except DiskFull:
            raise  # every later write would fail too: the job stops with this sentence
        except (FilesError, OSError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, FilesError) else f"cannot write {dst}: {exc}"
            rows.append(InputResult(str(src), str(dst), "failed", reason))
            continue
        notes = tuple(str(batch["notes"][i]).split("\n")) if batch["notes"][i] else ()
        rows.append(InputResult(str(src), str(dst), "written", faces=int(batch["found"][i]), notes=notes,
                                backend=str(batch["backend"][i])))
    return {"row": np.array([json.dumps(r.to_dict()) for r in rows], dtype=object)}


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


def plan(inputs: Sequence[str], out: str, spec: JobSpec, overwrite: bool = False) -> tuple[Any, Any, RunPlan]:
    """(input fs, output fs, the run's plan): the restore command's own plan (engines.outputs.plan_outputs)."""
    in_fs, sources = list_inputs(inputs)
    out_fs, out_root = open_location(out)
    local = _is_local(in_fs) and _is_local(out_fs)
    path = Path if local else PurePosixPath
    store = LOCAL if local else ArrowStore(in_fs, out_fs)
    run = plan_outputs([path(s) for s in sources], path(out_root), save_faces=spec.photo.save_faces,
                       overwrite=overwrite, store=store)
    results = path(out_root) / RESULTS_NAME  # the job's own table: replaced only when it is one
    if not overwrite and store.kind(results) is not None and not _is_results_table(out_fs, str(results)):
        raise OutputClash(f"{results} is not a table this job wrote: choose another --out, or pass --overwrite")
    return in_fs, out_fs, run


def _is_results_table(fs, path: str) -> bool:
    try:
        for line in _read_bytes(fs, path).decode().splitlines():
            InputResult.from_dict(json.loads(line))
    except (OSError, ValueError, TypeError, AttributeError):  # not JSON lines of InputResult fields
        return False
    return True


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


def run_job(spec: JobSpec, inputs: Sequence[str], out: str, *, overwrite: bool = False) -> RestoreReport:
    """Restore `inputs` into `out` on the connected Ray cluster; writes OUT/results.jsonl. Ray must be initialised.

    Raises OutputClash (a ValueError) before any work when the plan is refused.
    """
    import ray

    in_fs, out_fs, run = plan(inputs, out, spec, overwrite)
    if _is_local(out_fs):  # temporaries of killed runs (never a live run's)

        for folder in run.folders():
            clean_stale_temporaries(Path(folder))
    report = RestoreReport()
    todo = []
    for one in run.photos:
        if one.source in run.earlier:  # written atomically and records this input: complete
            report.add(InputResult(str(one.source), str(one.photo), "skipped"))
        else:
            todo.append({"src": str(one.source), "dst": str(one.photo), "faces_dir": str(one.faces or "")})
    actors, resources = actor_resources(spec.actors)
    report.actors = actors
    backend = spec.backend
    if backend.threads is None and "num_cpus" in resources:  # split the cores, don't oversubscribe
        backend = replace(backend, threads=max(1, int(ray.cluster_resources().get("CPU", 1)) // actors))
    spec = replace(spec, backend=backend, actors=actors)
    start = time.perf_counter()
    try:
        if todo:
            ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 4 * actors))
            ds = ds.map_batches(decode_stage, fn_kwargs={"fs": in_fs, "photo": spec.photo}, batch_size=spec.options.batch,
                                batch_format="numpy")
            ds = ds.map_batches(RestoreActor, fn_constructor_kwargs={"spec": spec}, batch_size=spec.options.batch,
                                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors), **resources)
            ds = ds.map_batches(write_stage, fn_kwargs={"fs": out_fs}, batch_format="numpy")
            for row in ds.iter_rows():
                report.add(InputResult.from_dict(json.loads(row["row"])))
    finally:  # also on Ctrl-C: the table lists what was done
        report.seconds = time.perf_counter() - start
        write_results(out_fs, str(run.out_dir), report.results)
    return report


def write_results(fs, out_root: str, results: list[InputResult]) -> str:
    """OUT/results.jsonl: one InputResult per line, by input."""
    path = str(PurePosixPath(out_root) / RESULTS_NAME)
    rows = sorted(results, key=lambda r: r.input)
    _write_bytes(fs, path, "".join(json.dumps(r.to_dict()) + "\n" for r in rows).encode())
    return path
