"""Export InterLCM's components to ONNX (fp32 and fp16) and prove each file equal to torch.

One loop over `interlcm.components.COMPONENTS`: trace the torch wrapper with the
TorchScript exporter, simplify, optionally convert to fp16, check, hash, and
record it in `manifest.json`. `validate` runs every file with ONNX Runtime on
fresh inputs (another seed, another batch size) and compares with torch.

Choices, as measured here (torch 2.13, onnx 1.23; see export/README.md):
- TorchScript exporter (`dynamo=False`), opset 17: the dynamo exporter took
  105 s for a tiny UNet this one traces in a few seconds, and below opset 18 it
  wrote invalid UNet/ControlNet graphs.
- fp16 by onnxconverter-common on the simplified fp32 graph, with a block list
  (`Component.fp16_keep_fp32`). Not a half-precision torch trace: that makes
  *everything* fp16 (GroupNorm statistics, softmax, the timestep embedding)
  with no way to mark fp32 islands, and CPU half kernels are slow. Not
  ModelOpt AutoCast: it needs calibration data and a CUDA-oriented install.
  Two converter quirks are fixed here: stale fp32 Casts (`_fix_fp16_casts`)
  and initializers shared between blocked and converted nodes
  (`_untie_blocked_initializers`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch

from interlcm.components import BY_NAME, DEFAULT_COMPONENTS, Component, get_component
from interlcm.config import PresetConfig

from .manifest import (
    FORMAT,
    MANIFEST,
    FileEntry,
    Manifest,
    ManifestError,
    TensorInfo,
    load_manifest,
    read_manifest,
    sha256_file,
    verify_entry,
)
from .trt_support import check_trt_support

if TYPE_CHECKING:
    from interlcm.models.container import InterLCMModels

DEFAULT_OPSET = 17
RECIPE_VERSION = 1  # bump when the export steps change: files made by older code are redone
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GB; above this, weights go to .onnx.data


class ExportError(RuntimeError):
    """An export that cannot proceed or produced a graph we refuse to write."""


class ValidationError(RuntimeError):
    """One or more exported outputs differ from torch beyond their tolerance (message has the table)."""


# --- one file -----------------------------------------------------------------------------------


def file_name(component: str, precision: str) -> str:
    return f"{component}.{precision}.onnx"


def versions(precisions: Iterable[str] = ("fp32",)) -> dict[str, str]:
    import onnxruntime
    import onnxslim

    v = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxslim": onnxslim.__version__,
        "exporter": f"torch.onnx.export(dynamo=False) torch {torch.__version__}",
        "recipe": str(RECIPE_VERSION),
    }
    if "fp16" in precisions:
        import onnxconverter_common

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
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensor_infos(comp: Component, cfg: PresetConfig, names: Sequence[str], which: str) -> list[TensorInfo]:
    shapes = comp.input_shapes(cfg, 1) if which == "inputs" else comp.output_shapes(cfg, 1)
    specs = {t.name: t for t in (comp.inputs if which == "inputs" else comp.outputs)}
    return [
        TensorInfo(n, ["batch", *shapes[n][1:]], str(specs[n].dtype).removeprefix("torch.")) for n in names
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

    onnxslim serialises the whole proto, which protobuf cannot do past 2 GB (the
    sd15 UNet is 3.4 GB). Those models keep the TorchScript exporter's own
    constant folding and get their shapes from inference on a weight-less copy.
    """
    model = onnx.load(str(raw))  # loads the exporter's per-tensor external files too
    if _weight_bytes(model) < EXTERNAL_DATA_BYTES:
        import onnxslim

        return onnxslim.slim(model)
    skeleton = onnx.load(str(raw), load_external_data=False)  # dims and dtypes, no data
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(onnx.shape_inference.infer_shapes(skeleton).graph.value_info)
    return model


def _fp16_block_lists(comp: Component, model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(op types, node names) the converter must keep in fp32.

    Op types block every node of that type; name fragments (module scopes such as
    `time_proj/`) block just those nodes. The two must stay separate: blocking the
    *op types* of name-blocked nodes would keep every Mul, Exp and Cast of the
    graph in fp32 (and makes the converter loop on its own Casts).
    """
    from onnxconverter_common import float16

    ops = set(float16.DEFAULT_OP_BLOCK_LIST) | {k for k in comp.fp16_keep_fp32 if "/" not in k}
    fragments = tuple(k for k in comp.fp16_keep_fp32 if "/" in k)
    present = {n.op_type for n in model.graph.node}
    names = [n.name for n in model.graph.node if n.op_type not in ops and any(f in n.name for f in fragments)]
    return sorted(ops & present), names


def _blocked(op_types: list[str], names: list[str]) -> Callable[[onnx.NodeProto], bool]:
    op_set, name_set = set(op_types), set(names)
    return lambda n: n.op_type in op_set or n.name in name_set


def _untie_blocked_initializers(model: onnx.ModelProto, blocked: Callable[[onnx.NodeProto], bool]) -> None:
    """Give fp32-kept nodes their own copy of initializers they share with converted nodes.

    onnxslim merges equal constants (e.g. a zero conv bias and a zero LayerNorm
    bias); the converter then keeps the shared tensor fp32 and an fp16 Conv ends
    up with an fp32 bias, which ONNX Runtime rejects.
    """
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, []).append(node)
    for name, nodes in users.items():
        if len({blocked(n) for n in nodes}) < 2:
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = f"{name}__fp32"
        model.graph.initializer.append(copy)
        for node in filter(blocked, nodes):
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = copy.name


def _fix_fp16_casts(model: onnx.ModelProto) -> int:
    """Make converted `Cast(to=float)` nodes cast to fp16 as their declared outputs say.

    The converter retypes a Cast's output to fp16 but keeps `to=FLOAT` (the bug the
    issue saw around the timestep); ONNX Runtime then rejects the graph.
    """
    fp16 = {
        v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    }
    fixed = 0
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in fp16:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
                    fixed += 1
    return fixed


def _fp32_outputs(model: onnx.ModelProto) -> None:
    """Make every graph output fp32, as `keep_io_types` promises.

    When the last node is kept in fp32 (CLIP's final LayerNorm) the converter
    still casts its result to fp16 and declares the output fp16.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT16:
            continue
        tt.elem_type = onnx.TensorProto.FLOAT
        node = producers[out.name]
        if node.op_type == "Cast":
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("to", onnx.TensorProto.FLOAT))
            continue
        half = f"{out.name}__fp16"
        for n in model.graph.node:
            for field in (n.input, n.output):
                for i, name in enumerate(field):
                    if name == out.name:
                        field[i] = half
        model.graph.node.append(onnx.helper.make_node("Cast", [half], [out.name], to=onnx.TensorProto.FLOAT))


def to_fp16(model: onnx.ModelProto, comp: Component) -> onnx.ModelProto:
    """fp16 weights and arithmetic, `comp.fp16_keep_fp32` left in fp32, fp32 inputs and outputs."""
    from onnxconverter_common import float16

    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the fp32 model is saved too
    del model.graph.value_info[:]  # onnxslim's annotations can be stale: the converter re-infers them
    op_types, names = _fp16_block_lists(comp, model)
    _untie_blocked_initializers(model, _blocked(op_types, names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" for tiny weights
        out = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=op_types,
            node_block_list=names,
        )
    _fix_fp16_casts(out)
    _fp32_outputs(out)
    return out


def _save_source(model: onnx.ModelProto, tmp: Path) -> Path:
    """The fp32 model on disk (external data), for an fp16-only export of a large model."""
    path = tmp / "source" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.data"
    )
    return path


def _drop_noop_casts(model: onnx.ModelProto) -> None:
    """Remove Casts to the type their input already has (onnxslim does this on the small path).

    The TorchScript graph keeps `t_emb.to(sample.dtype)` as a float->float Cast right after the
    fp32-kept timestep embedding; the converter then casts to fp16 and back to fp32 there, and
    the UNet's time-embedding Add gets mixed types.
    """
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    types.update({t.name: t.data_type for t in model.graph.initializer})
    outputs = {o.name for o in model.graph.output}
    drop = [
        n
        for n in model.graph.node
        if n.op_type == "Cast"
        and n.output[0] not in outputs
        and types.get(n.input[0]) == next(a.i for a in n.attribute if a.name == "to")
    ]
    rename = {n.output[0]: n.input[0] for n in drop}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            while name in rename:  # chains of dropped Casts
                name = rename[name]
            n.input[i] = name
    for n in drop:
        model.graph.node.remove(n)


def _fp16_from_saved(comp: Component, fp32_path: Path) -> onnx.ModelProto:
    """fp16 conversion of a model over 2 GB, whose fp32 weights sit in external data.

    The converter needs ONNX shape inference, which serialises the model, and
    protobuf cannot hold more than 2 GB. So convert the graph of a weight-less
    copy (every initializer still points into the fp32 data file), then read each
    initializer from that file and cast it to the dtype the converter chose.
    """
    from onnx.external_data_helper import ExternalDataInfo

    skeleton = onnx.load(str(fp32_path), load_external_data=False)
    _drop_noop_casts(skeleton)
    source_types = {t.name: t.data_type for t in skeleton.graph.initializer}
    half = to_fp16(skeleton, comp)
    for t in half.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(t)
        src_type = source_types[t.name.removesuffix("__fp32")]  # untied copies share their source's bytes
        src_dtype = onnx.helper.tensor_dtype_to_np_dtype(src_type)
        count = info.length // np.dtype(src_dtype).itemsize
        values = np.fromfile(
            fp32_path.parent / info.location, dtype=src_dtype, count=count, offset=info.offset
        )
        t.raw_data = values.astype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).tobytes()
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return half


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
    models: InterLCMModels,
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
    fp32 = _simplify(raw)
    shutil.rmtree(raw.parent)
    written: dict[str, tuple[Path, str | None]] = {}
    large = _weight_bytes(fp32) >= EXTERNAL_DATA_BYTES
    for precision in sorted(precisions, key=lambda p: p != "fp32"):  # fp32 first: large fp16 reads its file
        if precision == "fp16" and large:
            source = written["fp32"][0] if "fp32" in written else _save_source(fp32, tmp)
            model = _fp16_from_saved(comp, source)
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
    out_dir: Path, cfg: PresetConfig, opset: int, batch: tuple, weights: str, precisions
) -> Manifest:
    fresh = Manifest(
        FORMAT,
        _json_normal(cfg.to_dict()),
        cfg.resolution,
        opset,
        tuple(batch),
        weights,
        versions(precisions),
    )
    if not (out_dir / MANIFEST).is_file():
        return fresh
    try:
        old = read_manifest(out_dir)
    except ManifestError:
        return fresh
    same_folder_kind = (old.preset, old.opset, tuple(old.batch), old.weights) == (
        fresh.preset,
        fresh.opset,
        fresh.batch,
        fresh.weights,
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
    models: InterLCMModels,
    out_dir: Path | str,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    precisions: Sequence[str] = ("fp32",),
    batch: tuple[int, int, int] = (1, 1, 4),
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    progress: bool = True,
    weights: str | None = None,
) -> Manifest:
    """Export `components` x `precisions` into `out_dir` and return the updated manifest.

    Files whose recipe (component, preset, weights, opset, precision, batch range,
    tool versions) is unchanged and whose bytes still match the manifest are skipped
    unless `force`. Each file is written in a scratch folder and renamed into
    place; the manifest is rewritten (atomically) after every file, so an
    interrupted export leaves the finished files listed and nothing else.
    """
    from tqdm import tqdm

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
    comps = [get_component(c) for c in components]
    cfg = models.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".export-*"):  # scratch left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    weights = weights or models.origin
    manifest = _open_manifest(out_dir, cfg, opset, batch, weights, precisions)
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
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as scratch:
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


def _json_normal(d: Any) -> Any:
    """Tuples as lists, as a dict reads back from JSON."""
    return json.loads(json.dumps(d))


# --- validation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityRow:
    component: str
    precision: str
    output: str
    batch: int
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|
    cosine: float
    limit: float  # allowed max_abs: tol.rel * max|torch| + tol.abs
    ok: bool

    def line(self) -> str:
        flag = "ok" if self.ok else "FAIL"
        return (
            f"{self.component:20s} {self.precision:5s} {self.output:8s} {self.batch:>3d} "
            f"{self.max_abs:10.3e} {self.max_rel:10.3e} {self.cosine:10.7f} {self.limit:10.3e}  {flag}"
        )


TABLE_HEADER = (
    f"{'component':20s} {'prec':5s} {'output':8s} {'B':>3s} "
    f"{'max abs':>10s} {'max rel':>10s} {'cosine':>10s} {'limit':>10s}"
)


def format_table(rows: Sequence[ParityRow]) -> str:
    return "\n".join([TABLE_HEADER, *(r.line() for r in rows)])


def compare(
    comp: Component, precision: str, out: str, batch: int, got: np.ndarray, ref: np.ndarray
) -> ParityRow:
    tol = comp.tol_fp16 if precision == "fp16" else comp.tol_fp32
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    scale = float(np.abs(ref64).max())
    max_abs = float(np.abs(got64 - ref64).max()) if got.shape == ref.shape else float("inf")
    denom = float(np.linalg.norm(got64) * np.linalg.norm(ref64))
    cosine = float(got64.ravel() @ ref64.ravel() / denom) if denom > 0 and got.shape == ref.shape else 0.0
    limit = tol.rel * scale + tol.abs
    ok = bool(np.isfinite(got).all()) and max_abs <= limit
    return ParityRow(
        comp.name, precision, out, batch, max_abs, max_abs / max(scale, 1e-30), cosine, limit, ok
    )


def ort_session(path: Path, threads: int | None = None):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])  # path: finds .onnx.data


def _check_io(comp: Component, session: Any, entry: FileEntry) -> list[str]:
    """Names and dtypes of the ONNX file against the component description."""
    problems = []
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != list(comp.input_names):
        problems.append(f"inputs {got_in} != {list(comp.input_names)}")
    if got_out != list(comp.output_names):
        problems.append(f"outputs {got_out} != {list(comp.output_names)}")
    for t in (*session.get_inputs(), *session.get_outputs()):
        if t.type != "tensor(float)":
            problems.append(f"{t.name} is {t.type}, expected float32 at the boundary")
        if t.shape and not isinstance(t.shape[0], str):
            problems.append(f"{t.name} has a fixed batch axis {t.shape[0]}")
    return problems


def validate(
    out_dir: Path | str,
    models: InterLCMModels,
    components: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] | None = None,
    seed: int = 1234,
    echo: Callable[[str], None] | None = print,
) -> list[ParityRow]:
    """Run each listed file with ONNX Runtime on fresh inputs and compare with torch fp32.

    Inputs come from another seed than the export's; the default batch sizes are
    the profile's min and a size other than the traced `opt`, so a batch axis
    baked in at trace time fails here. Raises ValidationError with the whole
    table when any output is off (or any file's names or dtypes are wrong).
    """
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir)  # refuses tampered files
    cfg = models.config
    if manifest.preset != _json_normal(cfg.to_dict()):
        raise ValidationError(
            f"{out_dir} was exported for preset {manifest.preset['name']}, models are {cfg.name}"
        )
    lo, opt, hi = manifest.batch
    batches = list(batches or sorted({lo, opt + 1 if opt < hi else max(lo, opt - 1)}))
    entries = [
        e
        for e in manifest.entries
        if (components is None or e.component in components)
        and (precisions is None or e.precision in precisions)
    ]
    if not entries:
        raise ValidationError(
            f"nothing to validate in {out_dir} for {components or 'all'} / {precisions or 'all'}"
        )
    rows: list[ParityRow] = []
    problems: list[str] = []
    if echo:
        echo(TABLE_HEADER)
    for name in dict.fromkeys(e.component for e in entries):
        comp = BY_NAME[name]
        module = comp.build(models).eval()
        sessions = {}
        for e in (e for e in entries if e.component == name):
            sessions[e.precision] = ort_session(out_dir / e.file)
            problems += [f"{name} {e.precision}: {p}" for p in _check_io(comp, sessions[e.precision], e)]
        for b in batches:
            inputs = comp.sample_inputs(cfg, b, seed=seed + b)
            with torch.inference_mode():
                ref = module(*inputs.values())
            refs = ref if isinstance(ref, tuple) else (ref,)
            feed = {k: v.numpy() for k, v in inputs.items()}
            for precision, session in sessions.items():
                for out_name, got, r in zip(comp.output_names, session.run(None, feed), refs):
                    row = compare(comp, precision, out_name, b, got, r.numpy())
                    rows.append(row)
                    if echo:
                        echo(row.line())
        del sessions
    failed = [r for r in rows if not r.ok]
    if failed or problems:
        lines = [
            f"{len(failed)} output(s) out of tolerance, {len(problems)} interface problem(s) in {out_dir}:"
        ]
        lines += problems
        if failed:
            lines += [TABLE_HEADER, *(r.line() for r in failed)]
        raise ValidationError("\n".join(lines))
    return rows


@contextlib.contextmanager
def torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
