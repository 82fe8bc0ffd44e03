"""Building TensorRT engines for InterLCM's components, and the engine cache (running them: engines/trt.py).

    build_engines(onnx_dir, out_dir)        one fp16 engine per component of the export's manifest

Engines are strongly typed: precision comes from the fp16 ONNX files (TensorRT 11
builds nothing else and has no `BuilderFlag.FP16`; on TensorRT 10 we set the
STRONGLY_TYPED network flag). Every input gets one optimization profile whose
min/opt/max are the component description's shapes at the manifest's batch
min/opt/max and at the run-time dims' range the manifest records for the file.

Engine cache: `OUT/<component>.engine` plus a sidecar `OUT/<component>.engine.json`
holding a key, the sha256 of the parts below, and the parts themselves:

    onnx_sha256   the fp16 ONNX file's hash from the manifest
    external_sha256  the hash of its external weight file (`.onnx.data`, models over 2 GB), if any
    tensorrt      the TensorRT version (an engine only loads in the version that built it)
    gpu           the GPU's name and compute capability, e.g. "NVIDIA H100 80GB HBM3 (sm_90)": an
                  engine tuned on an H100 is not silently reused on an H200 of the same capability
    options       builder options: optimisation level, workspace, precision, profile shapes

A stale or foreign engine is rebuilt (`rebuild="auto"`) or refused with a one-line
reason (`rebuild="never"`); it is never silently used. The timing cache carries a
sidecar with the TensorRT version and GPU it was measured on; a cache from another
pair, or one TensorRT rejects, is discarded with a note and the build goes on. Engines, sidecars, the
folder index `engines.json` and the timing cache are written atomically (temp file
+ `os.replace`), and the sidecar also records the engine's sha256, which
`TrtBackend` checks against the bytes it deserializes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from interlcm.components import Component
from interlcm.config import PresetConfig
from interlcm.engines import trt_common
from interlcm.engines.trt_common import PRECISION, EngineError, logger, require_trt
from interlcm.export.manifest import Manifest, ManifestError, load_manifest
from interlcm.files import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from interlcm.engines.trt_common import INSTALLED as trt

log = logging.getLogger(__name__)

INDEX_FILE = "engines.json"
TIMING_CACHE_FILE = "timing.cache"
ENGINE_SUFFIX = ".engine"
BUILD_FORMAT = 3  # bump when the build procedure or the cache records change (3: profiles at the export's dims)
Rebuild = Literal["auto", "never", "always"]
Shape = tuple[int, ...]


# --- atomic files -------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


# --- the export's manifest ----------------------------------------------------------------------


def load_export(onnx_dir: Path) -> Manifest:
    """The export's manifest with every file re-hashed; ManifestError becomes EngineError."""
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
    external_sha256: str | None,
    opt_level: int,
    workspace: int | None,
    profile: dict[str, tuple[Shape, Shape, Shape]],
) -> dict[str, Any]:
    """Everything an engine depends on; two builds with equal parts make interchangeable engines."""
    return {
        "format": BUILD_FORMAT,
        "onnx_sha256": onnx_sha256,
        "external_sha256": external_sha256,
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
    if old.get("external_sha256") != new["external_sha256"]:
        return f"{file} was built from other external weights (the ONNX file's .data changed)"
    if old.get("options") != new["options"]:
        old_opts, new_opts = old.get("options") or {}, new["options"]
        changed = sorted(k for k in {*old_opts, *new_opts} if old_opts.get(k) != new_opts.get(k))
        return f"{file} was built with other options ({', '.join(changed)} changed)"
    if old != new:
        return f"{file} was built by another version of this builder (format {old.get('format')})"
    return None


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or cache_key(data.get("parts", {})) != data.get("key"):
        return None  # damaged or hand-edited: treat as missing
    return data


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


# --- building -----------------------------------------------------------------------------------


def check_names(kind: str, component: Component, inputs: Iterable[str], outputs: Iterable[str]) -> None:
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
) -> tuple[memoryview, bytes | None]:
    """Parse, configure and build one engine; returns (serialized engine, updated timing cache or None)."""
    builder = trt.Builder(logger())
    flags = 0
    # TensorRT 10: precision comes from the fp16 ONNX only with STRONGLY_TYPED (no BuilderFlag.FP16 needed).
    # TensorRT 11: every network is strongly typed; the flag is accepted and ignored (and may go away).
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger())
    if not parser.parse_from_file(str(onnx_path)):  # a path, not bytes: the weights may sit in external data
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no parser message"
        raise EngineError(f"{component.name}: TensorRT cannot parse {onnx_path}: {errors}")
    check_names(
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
    _use_timing_cache(config, timing_cache, component.name)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"{component.name}: TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above); "
            "a smaller --opt-level or a larger workspace sometimes helps"
        )
    # the engine stays in TensorRT's host memory (no second copy of a 2 GB UNet); the cache is small
    cache = config.get_timing_cache()
    return memoryview(serialized), (bytes(memoryview(cache.serialize())) if cache is not None else None)


def _use_timing_cache(config: trt.IBuilderConfig, data: bytes, name: str) -> None:
    """Give the build the saved timing cache; one TensorRT refuses is dropped with a note, never fatal.

    `create_timing_cache` returns None for bytes it cannot read, and `set_timing_cache` returns
    False for a cache from another TensorRT or GPU (ignore_mismatch=False): then an empty cache
    is used; if even that fails, the engine is built without one.
    """
    for attempt in (data, b"") if data else (b"",):
        cache = config.create_timing_cache(attempt)  # b"" starts an empty cache
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        if attempt:
            log.warning("%s: TensorRT rejected the saved timing cache (other version or GPU?); starting a new one",
                        name)
    log.warning("%s: TensorRT could not create a timing cache; building without one", name)


def _read_timing_cache(path: Path, owner: dict[str, str]) -> bytes:
    """The saved timing cache if its sidecar names this TensorRT and GPU; else b"" (with a note)."""
    if not path.is_file():
        return b""
    try:
        recorded = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded != owner:
        log.warning("timing cache %s was measured on %s, this machine is %s: discarded", path,
                    recorded or "an unknown TensorRT/GPU", owner)
        return b""
    return path.read_bytes()


def _write_timing_cache(path: Path, data: bytes, owner: dict[str, str]) -> None:
    sidecar_path(path).unlink(missing_ok=True)  # never a sidecar vouching for other bytes
    atomic_write_bytes(path, data)
    _write_json(sidecar_path(path), owner)


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
    require_trt()
    manifest = load_export(onnx_dir)
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

    tensorrt_version, gpu = trt.__version__, trt_common.gpu_identity()
    owner = {"tensorrt": tensorrt_version, "gpu": gpu}
    cache_path = Path(timing_cache) if timing_cache is not None else out_dir / TIMING_CACHE_FILE
    cache_bytes = _read_timing_cache(cache_path, owner)
    built: dict[str, Path] = {}
    records: dict[str, dict[str, Any]] = {}
    for name in names:
        entry = manifest.entry(name, PRECISION)
        component = entry.spec()  # with the run-time dims range the file was exported for
        check_names("manifest entry", component, (t.name for t in entry.inputs), (t.name for t in entry.outputs))
        profile = component.profile(cfg, batch)  # min/opt/max = the description's shapes at batch min/opt/max
        parts = cache_parts(entry.sha256, tensorrt_version, gpu, external_sha256=entry.external_sha256,
                            opt_level=opt_level, workspace=workspace, profile=profile)
        key = cache_key(parts)
        engine_path = out_dir / f"{name}{ENGINE_SUFFIX}"
        record_path = sidecar_path(engine_path)
        sidecar = read_sidecar(record_path) if engine_path.is_file() else None
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
            engine_bytes, new_cache = _build_one(
                component, manifest.path(onnx_dir, name, PRECISION), profile,
                opt_level=opt_level, workspace=workspace, timing_cache=cache_bytes,
            )
            # the old sidecar goes first: a crash between the two writes leaves "no record" (rebuild), never a
            # record that vouches for an engine it does not describe
            record_path.unlink(missing_ok=True)
            atomic_write_bytes(engine_path, engine_bytes)
            sidecar = {
                "component": name,
                "key": key,
                "parts": parts,
                "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
                "engine_bytes": engine_bytes.nbytes,
            }
            _write_json(record_path, sidecar)
            if new_cache is not None:
                cache_bytes = new_cache
                _write_timing_cache(cache_path, cache_bytes, owner)
        built[name] = engine_path
        records[name] = {"file": engine_path.name, "key": key}

    index_path = out_dir / INDEX_FILE
    try:
        previous = read_index(index_path) if index_path.is_file() else None
    except EngineError:
        previous = None  # unreadable or another format: rewritten below
    if previous is not None and (PresetConfig.from_dict(previous["config"]), list(previous["batch"]),
                                 previous.get("weights")) == (cfg, list(batch), manifest.weights):
        records = {**previous.get("engines", {}), **records}  # keep engines built by earlier partial runs
    _write_json(index_path, {
        "format": BUILD_FORMAT,
        "config": cfg.to_dict(),
        "batch": list(batch),
        "weights": manifest.weights,  # the export's weights, described: `check` rebuilds its torch reference
        "identity": manifest.identity.to_dict() if manifest.identity else None,  # typed: checked at open
        "onnx_dir": str(onnx_dir.resolve()),
        "engines": records,
    })
    return built


def read_index(path: Path) -> dict[str, Any]:
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
