"""Export InterLCM's components to ONNX (fp32 and fp16): the orchestration.

One loop over `interlcm.components.COMPONENTS`: trace the torch wrapper with the
TorchScript exporter, simplify, optionally convert to fp16 (`export/fp16.py`),
check, hash, and record it in `manifest.json`. `export/validate.py` then runs
every file with ONNX Runtime and compares it with torch.

Choices, as measured here (torch 2.13, onnx 1.23; see export/README.md):
- TorchScript exporter (`dynamo=False`), opset 17: the dynamo exporter took
  105 s for a tiny UNet this one traces in a few seconds, and below opset 18 it
  wrote invalid UNet/ControlNet graphs.
- fp16 by onnxconverter-common with fp32 islands: see export/fp16.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnxconverter_common
import onnxslim
import torch
from tqdm import tqdm

from interlcm.components import DEFAULT_COMPONENTS, Component, get_component
from interlcm.config import PresetConfig
from interlcm.files import TEMP_PREFIX, clean_stale_temporaries, folder_lock, os_errors
from interlcm.models.container import release

from .fp16 import fp16_from_saved, to_fp16
from .manifest import (
    FORMAT,
    MANIFEST,
    FileEntry,
    Manifest,
    ManifestError,
    TensorInfo,
    read_manifest,
    sha256_file,
    verify_entry,
)
from .trt_support import check_trt_support

if TYPE_CHECKING:
    from interlcm.identity import WeightsIdentity
    from interlcm.models.container import InterLCMModels, ModelSource

DEFAULT_OPSET = 17
RECIPE_VERSION = 1  # bump when the export steps change: files made by older code are redone
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GB; above this, weights go to .onnx.data
# onnxslim holds ~7 copies of a model while it works: the sd15 ControlNet (1.44 GB) took an export from
# 6.0 to 11.3 GiB. From this size up, the exporter's own constant folding only (as the 3.4 GB UNet).
SLIM_MAX_BYTES = 1_000_000_000


class ExportError(RuntimeError):
    """An export that cannot proceed or produced a graph we refuse to write."""


# --- one file -----------------------------------------------------------------------------------


def file_name(component: str, precision: str) -> str:
    return f"{component}.{precision}.onnx"


def versions(precisions: Iterable[str] = ("fp32",)) -> dict[str, str]:
    import onnxruntime  # an extra (cpu or gpu)

    v = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxslim": onnxslim.__version__,
        "exporter": f"torch.onnx.export(dynamo=False) torch {torch.__version__}",
        "recipe": str(RECIPE_VERSION),
    }
    if "fp16" in precisions:
        v["onnxconverter_common"] = onnxconverter_common.__version__
    return v


def export_key(
    comp: Component, cfg: PresetConfig, weights: str, opset: int, precision: str, batch: tuple
) -> str:
    """Hash of everything a file is made from: same key, same file (so it can be skipped)."""
    recipe = {
        "component": comp.name,
        "preset": cfg.to_dict(),
        "weights": weights,
        "opset": opset,
        "precision": precision,
        "batch": list(batch),
        "fp16_keep_fp32": list(comp.fp16_keep_fp32),
        "versions": versions((precision,)),
    }
    if comp.dims:  # run-time-sized components: the traced size and the range
        recipe["dims"] = {n: list(r) for n, r in comp.dims.items()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensor_infos(comp: Component, cfg: PresetConfig, names: Sequence[str], which: str) -> list[TensorInfo]:
    """Shapes with the batch and every run-time-sized axis by name, the rest as numbers."""
    shapes = comp.input_shapes(cfg, 1) if which == "inputs" else comp.output_shapes(cfg, 1)
    specs = {t.name: t for t in (comp.inputs if which == "inputs" else comp.outputs)}
    axes = comp.dynamic_axes()
    return [
        TensorInfo(
            n,
            [axes[n].get(i, d) for i, d in enumerate(shapes[n])],
            str(specs[n].dtype).removeprefix("torch."),
        )
        for n in names
    ]


def _trace(
    comp: Component, module: torch.nn.Module, cfg: PresetConfig, batch: int, opset: int, path: Path
) -> None:
    args = tuple(comp.sample_inputs(cfg, batch, seed=0).values())
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about python ints: shapes are fixed per export
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(comp.input_names),
            output_names=list(comp.output_names),
            dynamic_axes=comp.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Size of the weights; `model.ByteSize()` itself raises past protobuf's 2 GB limit."""
    return sum(t.ByteSize() for t in model.graph.initializer)


def _simplify(raw: Path) -> onnx.ModelProto:
    """Constant folding, dead-node and Identity removal, shape inference (onnxslim).

    onnxslim holds several copies of the model while it works and serialises the whole proto,
    which protobuf cannot do past 2 GB. Models from SLIM_MAX_BYTES up (sd15: the ControlNet and
    the UNet) keep the TorchScript exporter's own constant folding and get their shapes from
    inference on a weight-less copy: the weights are in memory once.
    """
    model = onnx.load(str(raw), load_external_data=False)  # inline weights, or references to the exporter's files
    inline = not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if inline and _weight_bytes(model) < SLIM_MAX_BYTES:
        return onnxslim.slim(model)
    if inline:  # moving the weights to a file leaves `model` without them (onnx clears what it wrote)
        onnx.save_model(model, str(raw), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{raw.name}.data")
    skeleton = model
    model = onnx.load(str(raw))  # the weights, once
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(onnx.shape_inference.infer_shapes(skeleton).graph.value_info)
    return model


def _save_source(model: onnx.ModelProto, tmp: Path) -> Path:
    """The fp32 model on disk (external data), for an fp16-only export of a large model."""
    path = tmp / "source" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.data"
    )
    return path


def _save(model: onnx.ModelProto, path: Path) -> str | None:
    """Save `model` at `path`; weights in one `<name>.data` file when the model nears 2 GB."""
    if _weight_bytes(model) < EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path))
        return None
    data = f"{path.name}.data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return data


def export_component(
    comp: Component,
    models: InterLCMModels | ModelSource,
    precisions: Sequence[str],
    tmp: Path,
    batch: tuple[int, int, int],
    opset: int,
) -> dict[str, tuple[Path, str | None]]:
    """Trace `comp` once and write `<component>.<precision>.onnx` (+ external data) per precision into `tmp`."""
    cfg = models.config
    raw = tmp / "raw" / "model.onnx"
    raw.parent.mkdir()
    _trace(comp, comp.build(models).eval(), cfg, batch[1], opset, raw)
    release(models)  # the weights are in the traced file now: free the networks before it is loaded (sd15 UNet: 3.4 GB)
    fp32 = _simplify(raw)
    shutil.rmtree(raw.parent)
    written: dict[str, tuple[Path, str | None]] = {}
    large = _weight_bytes(fp32) >= EXTERNAL_DATA_BYTES
    for precision in sorted(precisions, key=lambda p: p != "fp32"):  # fp32 first: large fp16 reads its file
        if precision == "fp16" and large:
            source = written["fp32"][0] if "fp32" in written else _save_source(fp32, tmp)
            model = fp16_from_saved(comp, source)
        else:
            model = to_fp16(fp32, comp) if precision == "fp16" else fp32
        report = check_trt_support(model)
        if not report.ok:
            raise ExportError(
                f"{comp.name} {precision}: not parseable by TensorRT {report.tensorrt}: {report.describe()}"
            )
        out = tmp / file_name(comp.name, precision)
        data = _save(model, out)
        del model
        onnx.checker.check_model(str(out))  # path-based: works with external data over 2 GB
        written[precision] = (out, data)
    return written


# --- all files ----------------------------------------------------------------------------------


def _open_manifest(
    out_dir: Path, cfg: PresetConfig, opset: int, batch: tuple, identity: WeightsIdentity, precisions
) -> Manifest:
    fresh = Manifest(
        FORMAT,
        json_normal(cfg.to_dict()),
        cfg.resolution,
        opset,
        tuple(batch),
        identity.describe(),
        versions(precisions),
        identity=identity,
    )
    if not (out_dir / MANIFEST).is_file():
        return fresh
    try:
        old = read_manifest(out_dir)
    except ManifestError:
        return fresh
    same_folder_kind = (old.preset, old.opset, tuple(old.batch), old.identity) == (
        fresh.preset,
        fresh.opset,
        fresh.batch,
        fresh.identity,
    )
    if same_folder_kind:
        old.versions = {**old.versions, **fresh.versions}
        return old
    return fresh  # another model or settings: every file will be redone


def _up_to_date(out_dir: Path, manifest: Manifest, comp: str, precision: str, key: str) -> bool:
    try:
        entry = manifest.entry(comp, precision)
        if entry.key != key:
            return False
        verify_entry(out_dir, entry)
        return True
    except ManifestError:
        return False


def export_all(
    models: InterLCMModels | ModelSource,
    out_dir: Path | str,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    precisions: Sequence[str] = ("fp32",),
    batch: tuple[int, int, int] = (1, 1, 4),
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    progress: bool = True,
    identity: WeightsIdentity | None = None,
    dims: Mapping[str, tuple[int, int, int]] | None = None,
) -> Manifest:
    """Export `components` x `precisions` into `out_dir` and return the updated manifest.

    With a ModelSource (`interlcm.models.container`), each component's networks are made for it and
    released after tracing: the peak is what the largest component needs, not every network at once.

    `dims` overrides the (min, opt, max) of run-time-sized dimensions (e.g. the detectors'
    height and width) for the components that have them; opt is the traced size.

    Files whose recipe (component, preset, weights, opset, precision, batch range,
    tool versions) is unchanged and whose bytes still match the manifest are skipped
    unless `force`. Each file is written in a scratch folder and renamed into
    place; the manifest is rewritten (atomically) after every file, so an
    interrupted export leaves the finished files listed and nothing else.
    """

    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ExportError(f"batch range {lo}:{opt}:{hi} must satisfy 1 <= min <= opt <= max")
    if hi >= 64:
        raise ExportError(
            f"batch max {hi}: diffusers' Upsample2D changes code path at batch 64; use at most 63"
        )
    bad = [p for p in precisions if p not in ("fp32", "fp16")]
    if bad:
        raise ExportError(f"unknown precision {bad}: choose fp32 and/or fp16")
    try:
        comps = [get_component(c).with_dims(dims or {}) for c in components]
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    out_dir = Path(out_dir)
    # two exports into one folder: the second fails cleanly; disk full or the like: one sentence
    with folder_lock(out_dir, "another export"), os_errors(f"cannot write the export folder {out_dir}"):
        return _export_locked(models, out_dir, comps, precisions, batch, opset, force, progress, identity)


def _export_locked(models, out_dir, comps, precisions, batch, opset, force, progress, identity) -> Manifest:
    cfg = models.config
    clean_stale_temporaries(out_dir)  # scratch left by an interrupted run
    identity = identity or models.identity
    if identity is None:
        raise ExportError("the weights' identity is unknown: pass identity=interlcm.weights.folder_identity(weights, variant)")
    weights = json.dumps(identity.to_dict(), sort_keys=True)  # part of every file's key
    manifest = _open_manifest(out_dir, cfg, opset, batch, identity, precisions)
    bar = tqdm(comps, disable=not progress, unit="component", dynamic_ncols=True)
    for comp in bar:
        bar.set_description(comp.name)
        keys = {p: export_key(comp, cfg, weights, opset, p, batch) for p in precisions}
        todo = [p for p in precisions if force or not _up_to_date(out_dir, manifest, comp.name, p, keys[p])]
        for p in precisions:
            if p not in todo:
                bar.write(f"{comp.name + ' ' + p:24s} up to date, skipped")
        if not todo:
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=f"{TEMP_PREFIX}{os.getpid()}-export-") as scratch:
            written = export_component(comp, models, todo, Path(scratch), batch, opset)
            for precision, (path, data) in written.items():
                entry = FileEntry(
                    component=comp.name,
                    precision=precision,
                    file=path.name,
                    sha256=sha256_file(path),
                    inputs=_tensor_infos(comp, cfg, comp.input_names, "inputs"),
                    outputs=_tensor_infos(comp, cfg, comp.output_names, "outputs"),
                    external_data=data,
                    external_sha256=sha256_file(path.parent / data) if data else None,
                    key=keys[precision],
                    dims={n: list(r) for n, r in comp.dims.items()},
                )
                # data first, graph last: a graph next to stale data fails its hash check
                if data:
                    (path.parent / data).replace(out_dir / data)
                elif (out_dir / f"{path.name}.data").exists():
                    (out_dir / f"{path.name}.data").unlink()
                path.replace(out_dir / path.name)
                manifest.upsert(entry)
                manifest.save(out_dir)
        sizes = ", ".join(
            f"{p} {_file_bytes(out_dir, manifest.entry(comp.name, p)) / 1e6:.1f} MB" for p in todo
        )
        bar.write(f"{comp.name:24s} {time.perf_counter() - start:7.1f} s  ({sizes})")
    manifest.save(out_dir)
    return manifest


def _file_bytes(root: Path, e: FileEntry) -> int:
    return sum((root / f).stat().st_size for f in (e.file, e.external_data) if f)


def json_normal(d: Any) -> Any:
    """Tuples as lists, as a dict reads back from JSON."""
    return json.loads(json.dumps(d))
