"""ONNX files for the benchmark's onnxruntime rows, exported once into a cache folder.

The export runs in a child process: the sd15 UNet export peaks at about 7 GB,
which should neither add to the benchmark process's memory nor to its
measured peak. A folder is reused when its `bench-export.json` shows it was
made from the same weights at the same resolution and covers the requested
components, precisions and batch range.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from interlcm.choices import variant_for_steps
from interlcm.config import get_preset
from interlcm.export.onnx_export import export_all
from interlcm.files import FilesError, atomic_write_text, check_replaceable, replace_folder, staging_folder
from interlcm.identity import WeightsIdentity
from interlcm.models.container import build_random
from interlcm.weights import folder_identity, load_models

MARKER = "bench-export.json"


class ExportUnavailable(RuntimeError):
    """The exporter cannot run here; the onnxruntime rows are skipped with this message."""


@dataclass(frozen=True)
class ExportRequest:
    preset: str
    resolution: int
    weights: str | None  # weights folder, or None for seeded random weights
    weights_tag: str  # "random-seed0" or the weights variant and content hash
    seed: int
    steps: int
    components: tuple[str, ...]
    precisions: tuple[str, ...]
    batch: tuple[int, int, int]  # (min, opt, max) of the dynamic batch axis

    def covered_by(self, done: dict) -> bool:
        return (
            done.get("preset") == self.preset
            and done.get("resolution") == self.resolution
            and done.get("weights_tag") == self.weights_tag
            and set(self.components) <= set(done.get("components", ()))
            and set(self.precisions) <= set(done.get("precisions", ()))
            and done["batch"][0] <= self.batch[0]
            and done["batch"][2] >= self.batch[2]
        )


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    cached: bool  # True: reused, nothing exported now
    seconds: float  # export wall time (0 when cached)


def exporter_available() -> str | None:
    """None if `interlcm.export.onnx_export.export_all` imports, else why not."""
    try:
        from interlcm.export.onnx_export import export_all  # noqa: F401
    except ImportError as exc:
        return f"the ONNX exporter is not available ({exc}); pass --onnx DIR with an export folder"
    return None


def cache_folder(cache_root: Path, request: ExportRequest) -> Path:
    return Path(cache_root) / f"{request.preset}-{request.resolution}-{request.weights_tag}"


def ensure_onnx(cache_root: Path, request: ExportRequest, log=print) -> ExportResult:
    """The cached export folder for `request`, exporting it first (in a child process) when needed."""
    folder = cache_folder(cache_root, request)
    marker = folder / MARKER
    if marker.is_file() and (folder / "manifest.json").is_file():
        done = json.loads(marker.read_text())
        if request.covered_by(done):
            return ExportResult(folder, cached=True, seconds=0.0)
        # widen rather than narrow: a later run asking for less should still hit the cache
        request = ExportRequest(
            **{
                **asdict(request),
                "components": tuple(sorted(set(request.components) | set(done["components"]))),
                "precisions": tuple(sorted(set(request.precisions) | set(done["precisions"]))),
                "batch": (min(request.batch[0], done["batch"][0]), request.batch[1], max(request.batch[2], done["batch"][2])),
            }
        )
    why = exporter_available()
    if why:
        raise ExportUnavailable(why)
    log(f"exporting {', '.join(request.components)} ({', '.join(request.precisions)}) to {folder} "
        "(once; sd15 takes a few minutes and ~7 GB of RAM)")
    start = time.perf_counter()
    try:
        check_replaceable(folder, MARKER, "a benchmark export cache", option="cache folder")  # before the export
        with staging_folder(folder) as tmp:  # also removes the temporaries of killed runs
            proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(asdict(request)), str(tmp)], check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"ONNX export for the benchmark failed (exit code {proc.returncode}); see the messages above")
            atomic_write_text(tmp / MARKER, json.dumps(asdict(request), indent=2) + "\n")
            replace_folder(tmp, folder, MARKER, "a benchmark export cache")
    except FilesError as exc:
        raise RuntimeError(str(exc)) from None
    return ExportResult(folder, cached=False, seconds=time.perf_counter() - start)


def _export(request: ExportRequest, out: Path) -> None:
    """Child process: build or load the models, then export them with the project's exporter."""

    variant = variant_for_steps(request.steps).name
    if request.weights is None:
        models = build_random(get_preset(request.preset).with_resolution(request.resolution), seed=request.seed)
        identity = WeightsIdentity.random(request.preset, request.seed, variant)
    else:
        models = load_models(Path(request.weights), variant, resolution=request.resolution)
        identity = folder_identity(Path(request.weights), variant)
    export_all(models, out, components=request.components, precisions=request.precisions, batch=request.batch,
               identity=identity)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    spec["components"], spec["precisions"], spec["batch"] = (tuple(spec[k]) for k in ("components", "precisions", "batch"))
    _export(ExportRequest(**spec), Path(sys.argv[2]))
