"""TensorRT engines for InterLCM's components: build, cache, run.

    build_engines(onnx_dir, out_dir)        one fp16 engine per component of the export's manifest
    with TrtBackend(out_dir) as backend:    the sampler's Backend, on CUDA tensors
        restore(backend, lq, noise, settings)
    check_cuda()                            can this machine run TensorRT at all, and if not, why

Engines are strongly typed: precision comes from the fp16 ONNX files (TensorRT 11
builds nothing else and has no `BuilderFlag.FP16`; on TensorRT 10 we set the
STRONGLY_TYPED network flag). Every input gets one optimization profile whose
min/opt/max are the component description's shapes at the manifest's batch
min/opt/max.

Engine cache: `OUT/<component>.engine` plus a sidecar `OUT/<component>.engine.json`
holding a key, the sha256 of the parts below, and the parts themselves:

    onnx_sha256   the fp16 ONNX file's hash from the manifest
    tensorrt      the TensorRT version (an engine only loads in the version that built it)
    gpu           the compute capability, e.g. sm_89
    options       builder options: optimisation level, workspace, precision, profile shapes

A stale or foreign engine is rebuilt (`rebuild="auto"`) or refused with a one-line
reason (`rebuild="never"`); it is never silently used. Engines, sidecars, the
folder index `engines.json` and the timing cache are written atomically (temp file
+ `os.replace`), and the sidecar also records the engine's sha256, which
`TrtBackend` checks against the bytes it deserializes.

The TensorRT module lives in the module-level name `trt`, imported on first use
(`_require_trt`). Tests put a recording stand-in there; mypy sees the real stubs
(`python -m interlcm.engines.trt_typecheck`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from interlcm.components import Component, get_component
from interlcm.config import PresetConfig
from interlcm.files import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt

    from interlcm.export.manifest import Manifest
else:
    trt = None  # imported by _require_trt() on first use; tests put a recording stand-in here

log = logging.getLogger(__name__)

INDEX_FILE = "engines.json"
TIMING_CACHE_FILE = "timing.cache"
ENGINE_SUFFIX = ".engine"
PRECISION = "fp16"  # engines are built from the manifest's fp16 entries, strongly typed
BUILD_FORMAT = 1  # bump when the build procedure changes in a way that changes engines
Rebuild = Literal["auto", "never", "always"]
Shape = tuple[int, ...]


class EngineError(RuntimeError):
    """An engine cannot be built, loaded or run; the message says why and what to do."""


# --- TensorRT and the device ----------------------------------------------------------------------


_INSTALL_HINT = "pip install tensorrt on a machine with an NVIDIA GPU and CUDA"


def _tensorrt_problem() -> str | None:
    """Import TensorRT into the module-level name `trt`; None if it worked, else a short reason."""
    if globals()["trt"] is not None:
        return None
    try:
        module = importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from the bindings' missing libraries
        return f"tensorrt does not import ({type(exc).__name__}: {exc})"
    if not hasattr(module, "Builder"):
        # `tensorrt-stubs` installs a bare tensorrt/ folder of .pyi files: Python imports it as an empty namespace
        return "tensorrt is not installed (only its type stubs are)"
    globals()["trt"] = module
    return None


def _require_trt() -> None:
    problem = _tensorrt_problem()
    if problem is not None:
        raise EngineError(f"{problem}: {_INSTALL_HINT}")


def _logger() -> trt.ILogger:
    return trt.Logger(trt.Logger.WARNING)


def _compute_capability(device: torch.device | None = None) -> str:
    """The GPU's architecture tag, e.g. 'sm_89'; part of every engine's cache key."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _stream_handle(device: torch.device) -> int:
    """torch's current CUDA stream: engines run in order with the sampler's own torch ops."""
    return torch.cuda.current_stream(device).cuda_stream


def _require_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise EngineError(f"TrtBackend needs a CUDA device, got {device}: TensorRT runs on NVIDIA GPUs only")
    ok, why = check_cuda(device.index or 0)
    if not ok:
        raise EngineError(f"cannot run TensorRT engines here: {why}")


def check_cuda(device: int = 0) -> tuple[bool, str]:
    """(usable, reason): a CUDA device that really allocates, and a TensorRT that really imports.

    onnxruntime-gpu and pip's tensorrt stubs both "install" on machines without a GPU, so
    this checks by doing: an allocation on the device and a TensorRT runtime.
    """
    reasons = []
    gpu = ""
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__} built for CUDA {torch.version.cuda}" if torch.version.cuda else \
            f"torch {torch.__version__} is a CPU-only build"
        reasons.append(f"no CUDA device ({built})")
    else:
        try:
            torch.empty(1, device=f"cuda:{device}").add_(1)
            torch.cuda.synchronize(device)
            gpu = f"{torch.cuda.get_device_name(device)} ({_compute_capability(torch.device('cuda', device))})"
        except Exception as exc:  # noqa: BLE001 - any CUDA failure means "not usable"
            reasons.append(f"CUDA device {device} cannot allocate ({type(exc).__name__}: {exc})")
    problem = _tensorrt_problem()
    if problem is not None:
        reasons.append(problem)
    else:
        try:
            if trt.Runtime(_logger()) is None:
                reasons.append("tensorrt cannot create a runtime")
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"tensorrt cannot create a runtime ({type(exc).__name__}: {exc})")
    if reasons:
        return False, "; ".join(reasons)
    return True, f"CUDA device {gpu}, TensorRT {trt.__version__}"


def _dims(dims: trt.Dims) -> Shape:
    """A TensorRT Dims as a tuple (the stubs give Dims indexing and len, not iteration)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    try:
        return table[dtype]
    except KeyError:
        raise EngineError(f"engine tensor dtype {dtype} has no torch equivalent") from None


# --- atomic files -------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


# --- the export's manifest ----------------------------------------------------------------------


def _load_manifest(onnx_dir: Path) -> Manifest:
    """The export's manifest with every file re-hashed; ManifestError becomes EngineError."""
    from interlcm.export.manifest import ManifestError, load_manifest

    try:
        return load_manifest(onnx_dir, verify=True)
    except ManifestError as exc:
        raise EngineError(f"cannot use the export in {onnx_dir}: {exc}") from exc


def _batch_range(batch: Sequence[int]) -> tuple[int, int, int]:
    lo, opt, hi = (int(b) for b in batch)
    if not 1 <= lo <= opt <= hi:
        raise EngineError(f"manifest batch range (min, opt, max) = {(lo, opt, hi)} must satisfy 1 <= min <= opt <= max: "
                          "re-export with a valid --batch")
    return lo, opt, hi


# --- cache keys ---------------------------------------------------------------------------------


def cache_parts(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu: str,
    *,
    opt_level: int,
    workspace: int | None,
    profile: dict[str, tuple[Shape, Shape, Shape]],
) -> dict[str, Any]:
    """Everything an engine depends on; two builds with equal parts make interchangeable engines."""
    return {
        "format": BUILD_FORMAT,
        "onnx_sha256": onnx_sha256,
        "tensorrt": tensorrt_version,
        "gpu": gpu,
        "options": {
            "precision": PRECISION,
            "strongly_typed": True,
            "opt_level": opt_level,
            "workspace": workspace,
            "profile": {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())},
        },
    }


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stale_reason(name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """Why the engine built with `old` parts cannot stand in for one built with `new`; None if it can."""
    file = f"{name}{ENGINE_SUFFIX}"
    if old is None:
        return f"{file} has no cache record"
    if (old.get("tensorrt"), old.get("gpu")) != (new["tensorrt"], new["gpu"]):
        return (f"{file} was built for TensorRT {old.get('tensorrt')} / {old.get('gpu')}, "
                f"this machine has {new['tensorrt']} / {new['gpu']}")
    if old.get("onnx_sha256") != new["onnx_sha256"]:
        return (f"{file} was built from another ONNX file (sha256 {str(old.get('onnx_sha256'))[:12]}, "
                f"the manifest has {new['onnx_sha256'][:12]})")
    if old.get("options") != new["options"]:
        old_opts, new_opts = old.get("options") or {}, new["options"]
        changed = sorted(k for k in {*old_opts, *new_opts} if old_opts.get(k) != new_opts.get(k))
        return f"{file} was built with other options ({', '.join(changed)} changed)"
    if old != new:
        return f"{file} was built by another version of this builder (format {old.get('format')})"
    return None


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or cache_key(data.get("parts", {})) != data.get("key"):
        return None  # damaged or hand-edited: treat as missing
    return data


def _sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


# --- building -----------------------------------------------------------------------------------


def _check_names(kind: str, component: Component, inputs: Iterable[str], outputs: Iterable[str]) -> None:
    got_in, got_out = list(inputs), list(outputs)
    if sorted(got_in) != sorted(component.input_names) or sorted(got_out) != sorted(component.output_names):
        raise EngineError(
            f"{component.name}: the {kind} has inputs {got_in} and outputs {got_out}, but the component description "
            f"says {list(component.input_names)} -> {list(component.output_names)}: re-export the ONNX with this "
            "version of interlcm (interlcm-export), then rebuild the engines"
        )


def _build_one(
    component: Component,
    onnx_path: Path,
    profile: dict[str, tuple[Shape, Shape, Shape]],
    *,
    opt_level: int,
    workspace: int | None,
    timing_cache: bytes,
) -> tuple[memoryview, bytes]:
    """Parse, configure and build one engine; returns (serialized engine, updated timing cache)."""
    logger = _logger()
    builder = trt.Builder(logger)
    flags = 0
    # TensorRT 10: precision comes from the fp16 ONNX only with STRONGLY_TYPED (no BuilderFlag.FP16 needed).
    # TensorRT 11: every network is strongly typed; the flag is accepted and ignored (and may go away).
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # a path, not bytes: the weights may sit in external data
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no parser message"
        raise EngineError(f"{component.name}: TensorRT cannot parse {onnx_path}: {errors}")
    _check_names(
        f"ONNX file {onnx_path.name}",
        component,
        (network.get_input(i).name for i in range(network.num_inputs)),
        (network.get_output(i).name for i in range(network.num_outputs)),
    )

    config = builder.create_builder_config()
    config.builder_optimization_level = opt_level
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache)  # b"" starts an empty cache
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"{component.name}: TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above); "
            "a smaller --opt-level or a larger workspace sometimes helps"
        )
    # the engine stays in TensorRT's host memory (no second copy of a 2 GB UNet); the cache is small
    return memoryview(serialized), bytes(memoryview(config.get_timing_cache().serialize()))


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    components: Sequence[str] | None = None,
    opt_level: int = 3,
    timing_cache: str | Path | None = None,
    rebuild: Rebuild = "auto",
    workspace: int | None = None,
) -> dict[str, Path]:
    """Build (or reuse) one fp16 engine per component; returns {component: engine path}.

    components: default every component with an fp16 file in the manifest.
    timing_cache: persistent TensorRT timing cache (default OUT/timing.cache), loaded if present and
        saved after each engine, so an interrupted build keeps what it learned.
    rebuild: "auto" rebuilds stale engines, "never" refuses them (EngineError with the reason),
        "always" rebuilds everything.
    workspace: cap on TensorRT's workspace pool in bytes (default: TensorRT's, the device's memory).
    """
    if rebuild not in ("auto", "never", "always"):
        raise ValueError(f"rebuild must be 'auto', 'never' or 'always', got {rebuild!r}")
    if not 0 <= opt_level <= 5:
        raise ValueError(f"opt_level must be in 0..5 (TensorRT's builder optimisation level), got {opt_level}")
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    _require_trt()
    manifest = _load_manifest(onnx_dir)
    cfg, batch = manifest.config, _batch_range(manifest.batch)
    available = [e.component for e in manifest.entries if e.precision == PRECISION]
    names = list(components) if components else available
    missing = [n for n in names if n not in available]
    if missing:
        raise EngineError(
            f"no fp16 ONNX for {', '.join(missing)} in {onnx_dir} (it has: {', '.join(available) or 'none'}): "
            "export them with interlcm-export --fp16"
        )
    if not names:
        raise EngineError(f"{onnx_dir} has no fp16 ONNX files to build engines from: export with interlcm-export --fp16")

    cache_path = Path(timing_cache) if timing_cache is not None else out_dir / TIMING_CACHE_FILE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    tensorrt_version, gpu = trt.__version__, _compute_capability()
    built: dict[str, Path] = {}
    records: dict[str, dict[str, Any]] = {}
    for name in names:
        component = get_component(name)
        entry = manifest.entry(name, PRECISION)
        _check_names("manifest entry", component, (t.name for t in entry.inputs), (t.name for t in entry.outputs))
        profile = component.profile(cfg, batch)  # min/opt/max = the description's shapes at batch min/opt/max
        parts = cache_parts(entry.sha256, tensorrt_version, gpu, opt_level=opt_level, workspace=workspace,
                            profile=profile)
        key = cache_key(parts)
        engine_path = out_dir / f"{name}{ENGINE_SUFFIX}"
        sidecar_path = _sidecar_path(engine_path)
        sidecar = _read_sidecar(sidecar_path) if engine_path.is_file() else None
        reason = stale_reason(name, sidecar["parts"] if sidecar else None, parts)
        if not engine_path.is_file():
            reason = f"{engine_path.name} does not exist"
        if reason is None and rebuild != "always":
            log.info("%s: up to date (%s)", name, key[:12])
        else:
            if rebuild == "never":
                raise EngineError(f"{reason}: rebuild with `interlcm-trt build --onnx {onnx_dir} --out {out_dir}` "
                                  "(or --rebuild auto)")
            log.info("%s: building (%s)", name, reason or "rebuild='always'")
            engine_bytes, cache_bytes = _build_one(
                component, manifest.path(onnx_dir, name, PRECISION), profile,
                opt_level=opt_level, workspace=workspace, timing_cache=cache_bytes,
            )
            # the old sidecar goes first: a crash between the two writes leaves "no record" (rebuild), never a
            # record that vouches for an engine it does not describe
            sidecar_path.unlink(missing_ok=True)
            atomic_write_bytes(engine_path, engine_bytes)
            sidecar = {
                "component": name,
                "key": key,
                "parts": parts,
                "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
                "engine_bytes": engine_bytes.nbytes,
            }
            _write_json(sidecar_path, sidecar)
            atomic_write_bytes(cache_path, cache_bytes)
        built[name] = engine_path
        records[name] = {"file": engine_path.name, "key": key}

    index_path = out_dir / INDEX_FILE
    try:
        previous = _read_index(index_path) if index_path.is_file() else None
    except EngineError:
        previous = None  # unreadable or another format: rewritten below
    if previous and PresetConfig.from_dict(previous["config"]) == cfg and list(previous["batch"]) == list(batch):
        records = {**previous.get("engines", {}), **records}  # keep engines built by earlier partial runs
    _write_json(index_path, {
        "format": BUILD_FORMAT,
        "config": cfg.to_dict(),
        "batch": list(batch),
        "onnx_dir": str(onnx_dir.resolve()),
        "engines": records,
    })
    return built


def _read_index(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{path.parent} has no {INDEX_FILE}: build engines there with `interlcm-trt build`") from None
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path} is unreadable ({exc}): rebuild with `interlcm-trt build`") from None
    if data.get("format") != BUILD_FORMAT:
        raise EngineError(f"{path} has format {data.get('format')}, this version reads {BUILD_FORMAT}: "
                          "rebuild with `interlcm-trt build`")
    return data


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorMeta:
    """One engine I/O tensor as the engine declares it (-1 marks the dynamic batch axis)."""

    name: str
    is_input: bool
    dtype: torch.dtype
    shape: Shape
    profile: tuple[Shape, Shape, Shape] | None = None  # inputs: (min, opt, max) of profile 0

    def describe(self) -> str:
        dims = ", ".join("B" if d < 0 else str(d) for d in self.shape)
        text = f"{str(self.dtype).removeprefix('torch.')} ({dims})"
        if self.profile is not None:
            text += f", B in {self.profile[0][0]}..{self.profile[2][0]}"
        return text


@dataclass
class _Loaded:
    component: Component
    engine: trt.ICudaEngine
    context: trt.IExecutionContext
    io: dict[str, TensorMeta]
    # output buffers per batch size, allocated on first use and reused (see TrtBackend)
    buffers: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def inputs(self) -> list[TensorMeta]:
        return [m for m in self.io.values() if m.is_input]

    @property
    def outputs(self) -> list[TensorMeta]:
        return [m for m in self.io.values() if not m.is_input]


def _device_memory_size(engine: trt.ICudaEngine) -> int:
    """Activation memory one context of `engine` needs for profile 0 (its max shapes).

    The name moved across releases: TensorRT 11 removed `device_memory_size` and keeps the
    `_v2` forms; early 10.x releases have only `device_memory_size`. Newest first.
    """
    if hasattr(engine, "get_device_memory_size_for_profile_v2"):
        return int(engine.get_device_memory_size_for_profile_v2(0))
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def _bind_device_memory(context: trt.IExecutionContext, address: int, size: int) -> None:
    if hasattr(context, "set_device_memory"):  # 10.x with the sized setter, and 11
        context.set_device_memory(address, size)
    else:  # early 10.x: a write-only attribute, absent from the 10.13 stubs
        setattr(context, "device_memory", address)  # noqa: B010


class TrtBackend:
    """The sampler's `Backend` on TensorRT engines: CUDA tensors in, CUDA tensors out.

    Lifecycle: `with TrtBackend(dir) as backend:` deserializes every engine listed in the
    folder's index, checks each against its cache record (TensorRT version, GPU, engine
    sha256, and with `onnx_dir` the export's current hashes) and against the component
    descriptions, and creates one execution context per engine. With `share_memory` the
    contexts use one activation buffer of max(engine needs) bytes: they run one at a time
    on one stream, so they never need their scratch memory at the same time. Exit releases
    contexts, engines, buffers and that memory.

    Buffers and their lifetime: outputs are written into buffers allocated once per
    (component, batch size) and reused by every later call; `run` returns those buffers
    themselves (no copy). An output is therefore valid until the *same component* runs
    again with the same batch size. The sampler (interlcm/sampler.py) is safe with this:
    it keeps `tokens`, `context`, `cond` and `z0` across calls of *other* components only,
    consumes the SE residuals in the UNet call of the same step, and consumes `eps` before
    the next UNet call. Callers that keep a result across images or batches (the restored
    image) must copy it (`.cpu()`, `.clone()`), or pass `copy_outputs=True`.

    Streams: engines run on torch's current CUDA stream, so they are ordered with the
    sampler's torch arithmetic without host synchronisation; `synchronize()` waits.

    Not done yet: CUDA-graph capture of the step chain (the sampler's shapes are static
    per batch, so capturing SE+UNet per (step, batch) is the natural next step).
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_dir: str | Path,
        device: str | torch.device = "cuda",
        *,
        components: Sequence[str] | None = None,
        onnx_dir: str | Path | None = None,
        share_memory: bool = True,
        copy_outputs: bool = False,
    ):
        self.engine_dir = Path(engine_dir)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", 0)
        self.components = list(components) if components is not None else None
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self.share_memory = share_memory
        self.copy_outputs = copy_outputs
        index = _read_index(self.engine_dir / INDEX_FILE)
        self.config = PresetConfig.from_dict(index["config"])
        lo, opt, hi = index["batch"]
        self.batch = (int(lo), int(opt), int(hi))
        self._index = index
        self._runtime: trt.Runtime | None = None
        self._loaded: dict[str, _Loaded] = {}
        self._shared_memory: torch.Tensor | None = None

    @property
    def max_batch(self) -> int:
        """The engines' optimisation profile ends here."""
        return self.batch[2]

    # lifecycle

    def __enter__(self) -> TrtBackend:
        _require_device(self.device)
        _require_trt()
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release contexts before engines before the runtime, then every buffer."""
        for loaded in self._loaded.values():
            loaded.buffers.clear()
            del loaded.context
        self._loaded.clear()
        self._runtime = None
        self._shared_memory = None

    def _load(self) -> None:
        engines = self._index.get("engines", {})
        names = self.components if self.components is not None else list(engines)
        unknown = [n for n in names if n not in engines]
        if unknown:
            raise EngineError(f"{self.engine_dir} has no engine for {', '.join(unknown)} "
                              f"(it has: {', '.join(engines) or 'none'}): build it with `interlcm-trt build`")
        current = {"tensorrt": trt.__version__, "gpu": _compute_capability(self.device)}
        manifest = _load_manifest(self.onnx_dir) if self.onnx_dir is not None else None
        self._runtime = trt.Runtime(_logger())
        for name in names:
            engine_path = self.engine_dir / engines[name]["file"]
            sidecar = _read_sidecar(_sidecar_path(engine_path))
            if sidecar is None or sidecar.get("key") != engines[name]["key"]:
                raise EngineError(f"{engine_path.name} has no valid cache record in {self.engine_dir}: "
                                  "rebuild with `interlcm-trt build`")
            parts = sidecar["parts"]
            expected = {**parts, **current}
            if manifest is not None:
                expected["onnx_sha256"] = manifest.entry(name, PRECISION).sha256
            reason = stale_reason(name, parts, expected)
            if reason is not None:
                raise EngineError(f"{reason}: rebuild with `interlcm-trt build`")
            try:
                data = engine_path.read_bytes()
            except OSError as exc:
                raise EngineError(f"cannot read {engine_path}: {exc}") from exc
            if hashlib.sha256(data).hexdigest() != sidecar.get("engine_sha256"):
                raise EngineError(f"{engine_path.name} does not match its cache record (partial copy or edited?): "
                                  "rebuild with `interlcm-trt build --rebuild always`")
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EngineError(f"TensorRT could not deserialize {engine_path} (see its log above): "
                                  "rebuild with `interlcm-trt build --rebuild always`")
            self._loaded[name] = self._activate(name, engine)
        if self.share_memory and self._loaded:
            size = max(_device_memory_size(loaded.engine) for loaded in self._loaded.values())
            # torch's allocator aligns to 512 bytes; TensorRT asks for 256
            self._shared_memory = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
            for loaded in self._loaded.values():
                _bind_device_memory(loaded.context, self._shared_memory.data_ptr(), size)

    def _activate(self, name: str, engine: trt.ICudaEngine) -> _Loaded:
        component = get_component(name)
        io: dict[str, TensorMeta] = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            profile = None
            if is_input:
                lo, opt, hi = (_dims(d) for d in engine.get_tensor_profile_shape(tensor, 0))
                profile = (lo, opt, hi)
            io[tensor] = TensorMeta(tensor, is_input, _torch_dtype(engine.get_tensor_dtype(tensor)),
                                    _dims(engine.get_tensor_shape(tensor)), profile)
        _check_names(f"engine {name}{ENGINE_SUFFIX}", component,
                     (m.name for m in io.values() if m.is_input), (m.name for m in io.values() if not m.is_input))
        if self.share_memory:
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        else:
            context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        return _Loaded(component, engine, context, io)

    # running

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run one engine on named device tensors; returns its named outputs (reused buffers, see class doc)."""
        if not self._loaded:
            raise EngineError("TrtBackend is not open: use `with TrtBackend(engine_dir) as backend:`")
        loaded = self._loaded.get(component)
        if loaded is None:
            raise EngineError(f"no engine for {component!r} is loaded (loaded: {', '.join(self._loaded)}): "
                              f"build it with `interlcm-trt build --components {component}`")
        batch = self._check_inputs(loaded, inputs)
        context = loaded.context
        for meta in loaded.inputs:
            if not context.set_input_shape(meta.name, tuple(inputs[meta.name].shape)):
                raise EngineError(f"{component}: TensorRT rejected shape {tuple(inputs[meta.name].shape)} "
                                  f"for {meta.name} (expected {meta.describe()})")
        outputs = loaded.buffers.get(batch)
        if outputs is None:
            outputs = loaded.buffers[batch] = self._allocate_outputs(loaded, batch)
        keep = []  # contiguous copies must outlive the launch; the stream orders their reuse
        for meta in loaded.inputs:
            tensor = inputs[meta.name]
            if not tensor.is_contiguous():
                tensor = tensor.contiguous()
                keep.append(tensor)
            context.set_tensor_address(meta.name, tensor.data_ptr())
        for name, buffer in outputs.items():
            context.set_tensor_address(name, buffer.data_ptr())
        if not context.execute_async_v3(_stream_handle(self.device)):
            raise EngineError(f"{component}: TensorRT failed to enqueue the engine (see its log above)")
        del keep
        if self.copy_outputs:
            return {name: buffer.clone() for name, buffer in outputs.items()}
        return dict(outputs)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _allocate_outputs(self, loaded: _Loaded, batch: int) -> dict[str, torch.Tensor]:
        expected = loaded.component.output_shapes(self.config, batch)
        out = {}
        for meta in loaded.outputs:
            shape = _dims(loaded.context.get_tensor_shape(meta.name))  # resolved from the input shapes just set
            if shape != expected[meta.name]:
                raise EngineError(
                    f"{loaded.component.name}: the engine gives {meta.name} shape {shape} for batch {batch}, the "
                    f"component description says {expected[meta.name]} for preset {self.config.name}: "
                    "the engines were built for another preset or resolution; rebuild them"
                )
            out[meta.name] = torch.empty(shape, dtype=meta.dtype, device=self.device)
        return out

    def _check_inputs(self, loaded: _Loaded, inputs: dict[str, torch.Tensor]) -> int:
        """Every input by name, type, device, dtype and shape, all problems in one error; returns the batch."""
        name = loaded.component.name
        problems: list[tuple[str, str, str]] = []  # (tensor, expected, got)
        expected = {m.name: m for m in loaded.inputs}
        for key in inputs:
            if key not in expected:
                problems.append((key, "not an input", "given"))
        batches = set()
        for meta in loaded.inputs:
            tensor = inputs.get(meta.name)
            if tensor is None:
                problems.append((meta.name, meta.describe(), "missing"))
                continue
            if not isinstance(tensor, torch.Tensor):
                problems.append((meta.name, meta.describe(), type(tensor).__name__))
                continue
            shape = tuple(tensor.shape)
            got = f"{str(tensor.dtype).removeprefix('torch.')} {shape} on {tensor.device}"
            fits = (
                tensor.dtype == meta.dtype
                and tensor.device == self.device
                and len(shape) == len(meta.shape)
                and all(e < 0 or e == g for e, g in zip(meta.shape, shape))
                and (meta.profile is None or meta.profile[0][0] <= shape[0] <= meta.profile[2][0])
            )
            if not fits:
                problems.append((meta.name, f"{meta.describe()} on {self.device}", got))
            elif shape:
                batches.add(shape[0])
        if len(batches) > 1:
            problems.append(("(batch)", "one batch size for all inputs", ", ".join(map(str, sorted(batches)))))
        if problems:
            width = max(len(p[0]) for p in problems)
            rows = "\n".join(f"  {t:<{width}}  expected {e:<40}  got {g}" for t, e, g in problems)
            raise EngineError(f"{name}: {len(problems)} input problem(s), nothing was run:\n{rows}")
        return batches.pop() if batches else 1
