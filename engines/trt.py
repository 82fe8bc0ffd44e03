"""Running TensorRT engines: `TrtBackend`, the sampler's Backend on an engine folder (building: trt_build.py).

    with TrtBackend(engine_dir) as backend:     restore(backend, lq, noise, settings)

The same code runs on a GPU and, under the stand-in of engines/trt_standin.py, on the CPU: what
differs per device (streams, their ordering, copies, allocation) is engines/device.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interlcm.backend import BackendBase, allocate_outputs
from interlcm.components import Component, Limits, get_component
from interlcm.config import PresetConfig
from interlcm.engines import trt_common
from interlcm.engines.device import ALIGNMENT, Streams, aligned_empty, streams_for
from interlcm.engines.trt_build import (
    ENGINE_SUFFIX,
    INDEX_FILE,
    check_names,
    load_export,
    read_index,
    read_sidecar,
    sidecar_path,
    stale_reason,
)
from interlcm.engines.trt_common import PRECISION, EngineError, check_cuda, logger, require_trt, torch_dtype
from interlcm.engines.trt_common import dims as dims_tuple

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from interlcm.engines.trt_common import INSTALLED as trt

Shape = tuple[int, ...]


def _require_device(device: torch.device) -> None:
    if device.type != trt_common.engine_device().type:
        raise EngineError(f"TrtBackend needs a CUDA device, got {device}: TensorRT runs on NVIDIA GPUs only")
    if device.type == "cuda":
        ok, why = check_cuda(device.index or 0)
        if not ok:
            raise EngineError(f"cannot run TensorRT engines here: {why}")


@dataclass(frozen=True)
class TensorMeta:
    """One engine I/O tensor as the engine declares it (-1 marks a dynamic axis)."""

    name: str
    is_input: bool
    dtype: torch.dtype
    shape: Shape
    profile: tuple[Shape, Shape, Shape] | None = None  # inputs: (min, opt, max) of profile 0


@dataclass
class _Bound:
    """One input-shape signature of an engine: its own execution context, with the input shapes set and the
    buffers bound once; the inputs are copied into `inputs`, the engine writes `outputs`."""

    context: trt.IExecutionContext
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [*self.inputs.items(), *self.outputs.items()]


@dataclass
class _Loaded:
    component: Component
    engine: trt.ICudaEngine
    io: dict[str, TensorMeta]
    bound: dict[tuple[Shape, ...], _Bound] = field(default_factory=dict)  # by the shapes of every input

    @property
    def inputs(self) -> list[TensorMeta]:
        return [m for m in self.io.values() if m.is_input]


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


class TrtBackend(BackendBase):
    """The sampler's `Backend` on TensorRT engines.

    Lifecycle: `with TrtBackend(dir) as backend:` checks every engine's cache record against this
    machine (TensorRT version, GPU; with `onnx_dir` the export's current hashes). An engine is
    deserialized on its first call (or at once for `components`), its bytes checked against the
    record's sha256 and its tensors against the component description: a folder holding both
    `unet` and the fused `denoise_step` loads only the form that runs. With `share_memory` every
    context uses one activation buffer of max(engine needs) bytes: they run one at a time on one
    stream, so they never need their scratch memory at the same time. Exit waits for the engine
    stream, then releases contexts, engines, buffers and that memory.

    Contexts and buffers: one execution context per engine and input-shape signature (every input's
    full shape), its input shapes set and its buffers bound once when it is made: input buffers the
    inputs are copied into (NVIDIA's demo/Diffusion `Engine` copies too) and output buffers at the
    shapes `get_tensor_shape` resolves (checked against the description). Nothing is set again, so a
    CUDA graph captured for one batch size replays against a context no other batch size touches.
    Components with run-time dims (detectors, tiles) keep only their latest signature. `run`
    returns the output buffers themselves: an output is valid until the *same component* runs
    again with the same shapes. The sampler is safe with this (it consumes each output before the
    next call of that component); callers that keep a result must copy it, or pass `copy_outputs=True`.

    Streams: engines run on a dedicated stream (`self.stream`, never the legacy default stream).
    Per call, on the caller's stream: wait for the engine's earlier work, copy the inputs in; then
    the engine stream waits for those copies, the engine is enqueued, and the caller's stream waits
    for it (events, no host synchronisation). `synchronize()` waits on the host.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_dir: str | Path,
        device: str | torch.device | None = None,
        *,
        components: Sequence[str] | None = None,
        onnx_dir: str | Path | None = None,
        share_memory: bool = True,
        copy_outputs: bool = False,
    ):
        self.engine_dir = Path(engine_dir)
        self.device = torch.device(device) if device is not None else trt_common.engine_device()
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", 0)
        self.components = list(components) if components is not None else None
        self.onnx_dir = Path(onnx_dir) if onnx_dir is not None else None
        self.share_memory = share_memory
        self.copy_outputs = copy_outputs
        index = read_index(self.engine_dir / INDEX_FILE)
        self.config = PresetConfig.from_dict(index["config"])
        lo, opt, hi = index["batch"]
        self.batch = (int(lo), int(opt), int(hi))
        self.weights: str = index["weights"]  # identity of the weights the export was made from
        self._index = index
        self._records: dict[str, dict[str, Any]] = {}  # component -> its engine's checked cache record
        self._runtime: trt.Runtime | None = None
        self._loaded: dict[str, _Loaded] = {}
        self._shared_memory: torch.Tensor | None = None
        self.streams: Streams | None = None
        self.stream: Any = None

    def has(self, component: str) -> bool:
        """Whether the folder has an engine for `component` (e.g. the fused denoise_step) that this backend may load."""
        return component in self._index.get("engines", {}) and (self.components is None or component in self.components)

    @property
    def max_batch(self) -> int:  # type: ignore[override]
        """The engines' optimisation profile ends here."""
        return self.batch[2]

    def limits(self, component: str) -> Limits:
        """The batch range of the folder and each run-time dim's range in the engine's profile (its record)."""
        if self._runtime is None:
            raise EngineError("TrtBackend is not open: use `with TrtBackend(engine_dir) as backend:`")
        record = self._records.get(component)
        if record is None:
            raise self._no_engine(component)
        spec = get_component(component)
        profile = record["parts"]["options"]["profile"]  # input -> [min, opt, max] shapes
        ranges: dict[str, tuple[int, int]] = {}
        for tensor in spec.inputs:
            for axis, name in tensor.dynamic.items():
                ranges[name] = (profile[tensor.name][0][axis], profile[tensor.name][2][axis])
        return Limits((self.batch[0], self.batch[2]), ranges)

    # lifecycle

    def __enter__(self) -> TrtBackend:
        _require_device(self.device)
        require_trt()
        try:
            self.streams = streams_for(self.device)
            self.stream = self.streams.new_stream()
            self._runtime = trt.Runtime(logger())
            self._check_records()
            for name in self.components or ():
                self._load(name)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Wait for the engine stream, then release contexts before engines before the runtime, and every buffer."""
        if self.streams is not None and self.stream is not None:
            self.streams.synchronize(self.stream)  # queued work still reads and writes these buffers
        for loaded in self._loaded.values():
            loaded.bound.clear()  # contexts before their engine
        self._loaded.clear()
        self._runtime = None
        self._shared_memory = None
        self.stream = None

    def _no_engine(self, component: str) -> EngineError:
        have = ", ".join(self._index.get("engines", {})) or "none"
        return EngineError(f"{self.engine_dir} has no engine for {component} (it has: {have}): "
                           f"build it with `interlcm-trt build --components {component}`")

    def _check_records(self) -> None:
        """Every engine's cache record against this machine (and the export): one-line refusals, nothing loaded."""
        engines = self._index.get("engines", {})
        names = self.components if self.components is not None else list(engines)
        unknown = [n for n in names if n not in engines]
        if unknown:
            raise EngineError(f"{self.engine_dir} has no engine for {', '.join(unknown)} "
                              f"(it has: {', '.join(engines) or 'none'}): build it with `interlcm-trt build`")
        current = {"tensorrt": trt.__version__, "gpu": trt_common.gpu_identity(self.device)}
        manifest = load_export(self.onnx_dir) if self.onnx_dir is not None else None
        for name in names:
            engine_path = self.engine_dir / engines[name]["file"]
            sidecar = read_sidecar(sidecar_path(engine_path))
            if sidecar is None or sidecar.get("key") != engines[name]["key"]:
                raise EngineError(f"{engine_path.name} has no valid cache record in {self.engine_dir}: "
                                  "rebuild with `interlcm-trt build`")
            parts = sidecar["parts"]
            expected = {**parts, **current}
            if manifest is not None:
                entry = manifest.entry(name, PRECISION)
                expected["onnx_sha256"], expected["external_sha256"] = entry.sha256, entry.external_sha256
            reason = stale_reason(name, parts, expected)
            if reason is not None:
                raise EngineError(f"{reason}: rebuild with `interlcm-trt build`")
            self._records[name] = sidecar

    def _load(self, name: str) -> _Loaded:
        """The engine of `name`, deserialized and activated on first use."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            return loaded
        if self._runtime is None:
            raise EngineError("TrtBackend is not open: use `with TrtBackend(engine_dir) as backend:`")
        record = self._records.get(name)
        if record is None:
            raise self._no_engine(name)
        engine_path = self.engine_dir / self._index["engines"][name]["file"]
        try:
            data = engine_path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read {engine_path}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != record.get("engine_sha256"):
            raise EngineError(f"{engine_path.name} does not match its cache record (partial copy or edited?): "
                              "rebuild with `interlcm-trt build --rebuild always`")
        engine = self._runtime.deserialize_cuda_engine(data)
        del data
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {engine_path} (see its log above): "
                              "rebuild with `interlcm-trt build --rebuild always`")
        loaded = self._loaded[name] = self._activate(name, engine)
        if self.share_memory:
            self._share_memory(_device_memory_size(engine))
        return loaded

    def _share_memory(self, size: int) -> None:
        """Grow the one activation buffer every context uses to `size` bytes if this engine needs more."""
        assert self.streams is not None and self.stream is not None
        if self._shared_memory is not None and self._shared_memory.numel() >= size:
            return
        if self._shared_memory is not None:
            self.streams.synchronize(self.stream)  # the engines may still use the smaller one
        # torch's allocator aligns to 512 bytes; TensorRT asks for 256
        self._shared_memory = self.streams.empty((max(size, 1),), torch.uint8)
        for loaded in self._loaded.values():
            for bound in loaded.bound.values():
                self._bind_memory(bound.context)

    def _bind_memory(self, context: trt.IExecutionContext) -> None:
        if self._shared_memory is not None:
            _bind_device_memory(context, self._shared_memory.data_ptr(), self._shared_memory.numel())

    def _activate(self, name: str, engine: trt.ICudaEngine) -> _Loaded:
        component = get_component(name)
        io: dict[str, TensorMeta] = {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            profile = None
            if is_input:
                lo, opt, hi = (dims_tuple(d) for d in engine.get_tensor_profile_shape(tensor, 0))
                profile = (lo, opt, hi)
            io[tensor] = TensorMeta(tensor, is_input, torch_dtype(engine.get_tensor_dtype(tensor)),
                                    dims_tuple(engine.get_tensor_shape(tensor)), profile)
        check_names(f"engine {name}{ENGINE_SUFFIX}", component,
                    (m.name for m in io.values() if m.is_input), (m.name for m in io.values() if not m.is_input))
        specs = {t.name: t for t in (*component.inputs, *component.outputs)}
        wrong = [f"{m.name} {m.dtype}" for m in io.values() if m.dtype != specs[m.name].dtype]
        if wrong:
            raise EngineError(f"engine {name}{ENGINE_SUFFIX} has tensors {', '.join(wrong)}, the component description "
                              "says float32: rebuild it from an export of this version (interlcm-export --fp16)")
        return _Loaded(component, engine, io)

    # running

    def _run(self, component: Component, inputs: dict[str, torch.Tensor], batch: int,
             dims: dict[str, int]) -> dict[str, torch.Tensor]:
        """One engine call (inputs checked by `run`; see the class doc for contexts, buffers and streams)."""
        loaded = self._load(component.name)
        streams = self.streams
        assert streams is not None
        signature = tuple(tuple(inputs[m.name].shape) for m in loaded.inputs)
        bound = loaded.bound.get(signature)
        if bound is None:
            bound = self._bind(loaded, signature, batch, dims)
        caller = streams.current()
        streams.wait(caller, self.stream)  # the engine's earlier work read these input buffers: done first
        for meta in loaded.inputs:  # on the caller's stream, where the inputs were written
            streams.copy(bound.inputs[meta.name], inputs[meta.name], caller)
        streams.wait(self.stream, caller)  # the engine starts after the copies
        if not bound.context.execute_async_v3(streams.handle(self.stream)):
            raise EngineError(f"{component.name}: TensorRT failed to enqueue the engine (see its log above)")
        streams.launched(self.stream, component.name)
        streams.wait(caller, self.stream)  # the caller reads the outputs after the engine wrote them
        if self.copy_outputs:
            return {name: buffer.clone() for name, buffer in bound.outputs.items()}
        return dict(bound.outputs)

    def _bind(self, loaded: _Loaded, signature: tuple[Shape, ...], batch: int, dims: dict[str, int]) -> _Bound:
        """A context for one signature: input shapes set, buffers allocated (outputs at the shapes the engine
        resolves from the inputs) and their addresses set, once."""
        streams = self.streams
        assert streams is not None
        name = loaded.component.name
        if loaded.component.dims and loaded.bound:  # photos and tiles of many sizes: only the latest is kept
            streams.synchronize(self.stream)  # a context is not destroyed while its work may run
            loaded.bound.clear()
        if self.share_memory:
            context = loaded.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        else:
            context = loaded.engine.create_execution_context()
        if context is None:
            raise EngineError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self._bind_memory(context)
        for meta, shape in zip(loaded.inputs, signature):
            if not context.set_input_shape(meta.name, shape):
                raise EngineError(f"{name}: TensorRT rejected shape {shape} for {meta.name} "
                                  f"(the engine's profile: {meta.profile})")

        def empty(shape: Shape, dtype: torch.dtype) -> torch.Tensor:
            return aligned_empty(shape, dtype, streams)

        inputs = {meta.name: empty(shape, meta.dtype) for meta, shape in zip(loaded.inputs, signature)}
        outputs = allocate_outputs(loaded.component, self.config, batch, dims, empty,
                                   engine_shape=lambda tensor: dims_tuple(context.get_tensor_shape(tensor)))
        bound = _Bound(context, inputs, outputs)
        for tensor, buffer in bound.tensors():
            address = buffer.data_ptr()
            if address % ALIGNMENT:
                raise EngineError(f"{name}: {tensor} at {address:#x} is not {ALIGNMENT}-byte aligned, as TensorRT requires")
            if not context.set_tensor_address(tensor, address):
                raise EngineError(f"{name}: TensorRT refused the address of {tensor} "
                                  f"({str(buffer.dtype).removeprefix('torch.')} {tuple(buffer.shape)} on {buffer.device})")
        loaded.bound[signature] = bound
        return bound

    def synchronize(self) -> None:
        if self.streams is not None and self.stream is not None:
            self.streams.synchronize(self.stream)
