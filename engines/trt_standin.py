"""A TensorRT stand-in that keeps TensorRT's contracts and computes real numbers, on the CPU.

TensorRT needs an NVIDIA GPU; this replaces the part of its Python API that engines/trt_build.py
and engines/trt.py call (TensorRT 10.x names, as in the `tensorrt-stubs` and NVIDIA's
demo/Diffusion `Engine`), so that CI runs `TrtBackend` itself, end to end:

- Building (a GPU job in reality) is a recording fake: the builder reads the real ONNX file's
  tensors and checks the optimisation profile against them; the "serialized engine" names the
  fp16 ONNX file and holds the profile. Knobs make builds or timing caches fail as TensorRT's do.
- Running computes with ONNX Runtime (CPU) on that fp16 file, through the addresses it is bound
  to (engines/device.py `HOST_MEMORY`), and enforces what TensorRT enforces or leaves undefined:
  the profile's min/max per dim (`set_input_shape` returns False outside it), every input shape
  set and every I/O address set before `execute_async_v3` (else False, as TensorRT), output shapes
  from `get_tensor_shape` (ONNX shape inference, independent of interlcm's descriptions), each
  bound buffer at least as large as its tensor (reading or writing past it raises MemoryError),
  activation memory set for user-managed contexts, never the legacy default stream, and, while a
  CUDA graph is captured (`capture()`), no shape or address change; a replay (`replay()`) must
  launch the captured engines with the captured bindings and set nothing.

Violations that TensorRT would not report (undefined behaviour on a GPU) raise `ContractViolation`,
an AssertionError, so no `except RuntimeError` in the code under test can swallow it.

    with installed() as standin:            # engines/trt_common.py's `trt` is the stand-in, engines run on the CPU
        build_engines(onnx_dir, out)
        with TrtBackend(out) as backend: ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import torch

from interlcm.engines import trt_common
from interlcm.engines.device import ALIGNMENT, HOST_MEMORY
from interlcm.export.session import PROVIDERS, open_session

VERSION = "10.13.0.35"  # the version of the tensorrt-stubs the code is typed against
GPU = "NVIDIA stand-in (sm_90)"
FORMAT = "interlcm-trt-standin-1"

Shape = tuple[int, ...]


class ContractViolation(AssertionError):
    """Something TensorRT leaves undefined (or a GPU would corrupt) was done to the stand-in."""


class _Enum:
    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def _enum(*names: str) -> SimpleNamespace:
    return SimpleNamespace(**{n: _Enum(n, i) for i, n in enumerate(names)})


# ONNX element type -> the stand-in's DataType name
_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
_TORCH_TYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def _tensors(values: Any) -> dict[str, dict[str, Any]]:
    """ONNX graph inputs or outputs -> {name: {"dtype": DataType name, "shape": dims, -1 where dynamic}}."""
    out = {}
    for value in values:
        kind = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        out[value.name] = {"dtype": _ONNX_TYPES.get(kind.elem_type, str(kind.elem_type)), "shape": shape}
    return out


class StandInTensorRT:
    """The `tensorrt` module's subset, recording calls; one instance is one process's TensorRT."""

    __version__ = VERSION
    NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=_Enum("EXPLICIT_BATCH", 0),
                                                    STRONGLY_TYPED=_Enum("STRONGLY_TYPED", 1))
    MemoryPoolType = _enum("WORKSPACE")
    TensorIOMode = _enum("NONE", "INPUT", "OUTPUT")
    DataType = _enum("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64")
    ExecutionContextAllocationStrategy = _enum("STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED")

    def __init__(self) -> None:
        self.calls: list[tuple] = []  # build-side calls, in order
        self.errors: list[str] = []  # what TensorRT would have logged as errors
        self.loggers = 0  # trt.Logger objects made (TensorRT wants one per process)
        self.builds: list[str] = []  # components built, in order
        self.contexts: list[StandInContext] = []
        # knobs: make the build fail as TensorRT's does
        self.fail_build = False  # build_serialized_network returns None
        self.parse_errors: list[str] = []  # parse_from_file returns False with these errors
        self.unreadable_cache = False  # create_timing_cache returns None for non-empty bytes (damaged file)
        self.mismatched_cache = False  # set_timing_cache returns False for non-empty caches (other TensorRT/GPU)
        self.no_timing_cache = False  # create_timing_cache and get_timing_cache return None
        # CUDA-graph state: capture() and replay() (a real graph records kernels; see the module doc)
        self.capturing = False
        self.captured: list[tuple] = []
        self.replaying: list[tuple] | None = None
        standin = self

        class Logger:
            WARNING = "WARNING"
            ERROR = "ERROR"

            def __init__(self, severity: Any = None) -> None:
                standin.loggers += 1
                self.severity = severity

        class Builder:
            def __init__(self, logger: Any) -> None:
                standin.calls.append(("Builder",))

            def create_network(self, flags: int = 0) -> StandInNetwork:
                standin.calls.append(("create_network", flags))
                return StandInNetwork(flags)

            def create_builder_config(self) -> StandInConfig:
                return StandInConfig(standin)

            def create_optimization_profile(self) -> StandInProfile:
                return StandInProfile()

            def build_serialized_network(self, network: StandInNetwork, config: StandInConfig) -> bytes | None:
                standin.calls.append(("build_serialized_network",))
                if standin.fail_build or not standin._profile_fits(network, config):
                    return None
                standin.builds.append(network.component)
                if config.timing_cache is not None:
                    config.timing_cache.data += f"[{network.component}]".encode()
                payload = {"format": FORMAT, "onnx": network.path, "component": network.component,
                           "inputs": network.inputs, "outputs": network.outputs, "flags": network.flags,
                           "opt_level": config.builder_optimization_level,
                           "profiles": [p.shapes for p in config.profiles]}
                return json.dumps(payload).encode()

        class OnnxParser:
            def __init__(self, network: StandInNetwork, logger: Any) -> None:
                self.network = network

            @property
            def num_errors(self) -> int:
                return len(standin.parse_errors)

            def get_error(self, index: int) -> str:
                return standin.parse_errors[index]

            def parse_from_file(self, path: str) -> bool:
                standin.calls.append(("parse_from_file", path))
                if standin.parse_errors:
                    return False
                model = onnx.load(path, load_external_data=False)
                self.network.read(path, model)
                return True

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> StandInEngine | None:
                standin.calls.append(("deserialize_cuda_engine",))
                try:
                    payload = json.loads(bytes(data))
                except ValueError:
                    standin.errors.append("deserialize_cuda_engine: not an engine")
                    return None
                return StandInEngine(standin, payload)

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime

    @staticmethod
    def Dims(shape: list[int]) -> tuple[int, ...]:  # mirrors trt.Dims
        return tuple(shape)

    def _profile_fits(self, network: StandInNetwork, config: StandInConfig) -> bool:
        """TensorRT refuses a profile that misses an input, has another rank, or contradicts a fixed dim."""
        if len(config.profiles) != 1:
            self.errors.append(f"{network.component}: {len(config.profiles)} profiles (this project adds one)")
            return False
        shapes = config.profiles[0].shapes
        for name, info in network.inputs.items():
            if name not in shapes:
                self.errors.append(f"{network.component}: no profile for input {name}")
                return False
            lo, opt, hi = shapes[name]
            for fixed, a, b, c in zip(info["shape"], lo, opt, hi):
                if not a <= b <= c or (fixed >= 0 and not a == b == c == fixed) or len(lo) != len(info["shape"]):
                    self.errors.append(f"{network.component}: profile {shapes[name]} does not fit {name} "
                                       f"{info['shape']}")
                    return False
        return True

    # CUDA graphs

    @contextmanager
    def capture(self) -> Iterator[list[tuple]]:
        """A CUDA-graph capture: launches are recorded (and run); no shape or address may change meanwhile."""
        self.capturing, self.captured = True, []
        try:
            yield self.captured
        finally:
            self.capturing = False

    @contextmanager
    def replay(self, captured: list[tuple]) -> Iterator[None]:
        """A replay re-runs what was captured: every launch must be the captured one, bound as then; nothing is set."""
        self.replaying = list(captured)
        try:
            yield
            if self.replaying:
                raise ContractViolation(f"the replay launched {len(captured) - len(self.replaying)} of the "
                                        f"{len(captured)} captured engines")
        finally:
            self.replaying = None


@dataclass
class StandInNetwork:
    flags: int
    path: str = ""
    component: str = ""
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def read(self, path: str, model: onnx.ModelProto) -> None:
        self.path, self.component = str(Path(path).resolve()), Path(path).name.split(".")[0]
        self.inputs, self.outputs = _tensors(model.graph.input), _tensors(model.graph.output)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(name=list(self.inputs)[i])

    def get_output(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(name=list(self.outputs)[i])


class StandInProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class StandInTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data


class StandInConfig:
    def __init__(self, standin: StandInTensorRT) -> None:
        self.standin = standin
        self.builder_optimization_level = 3
        self.profiles: list[StandInProfile] = []
        self.timing_cache: StandInTimingCache | None = StandInTimingCache(b"")

    def set_flag(self, flag: Any) -> None:  # our code must not call this (no FP16 flag: strongly typed)
        self.standin.calls.append(("set_flag", flag))

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.standin.calls.append(("set_memory_pool_limit", pool.name, size))

    def add_optimization_profile(self, profile: StandInProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> StandInTimingCache | None:
        self.standin.calls.append(("create_timing_cache", bytes(data)))
        if (data and self.standin.unreadable_cache) or self.standin.no_timing_cache:
            return None
        return StandInTimingCache(data)

    def set_timing_cache(self, cache: StandInTimingCache, ignore_mismatch: bool) -> bool:
        self.standin.calls.append(("set_timing_cache", ignore_mismatch))
        if cache.data and self.standin.mismatched_cache and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> StandInTimingCache | None:
        return None if self.standin.no_timing_cache else self.timing_cache


class StandInEngine:
    """A deserialized engine: the fp16 ONNX file it names, run by ONNX Runtime on the CPU."""

    def __init__(self, standin: StandInTensorRT, payload: dict[str, Any]) -> None:
        if payload.get("format") != FORMAT:
            raise ContractViolation("deserialize_cuda_engine: bytes from another builder")
        self.standin, self.payload = standin, payload
        self.component = payload["component"]
        self.inputs, self.outputs = payload["inputs"], payload["outputs"]
        self.profile = payload["profiles"][0]
        self.names = [*self.inputs, *self.outputs]
        self.model = onnx.load(payload["onnx"], load_external_data=False)  # for shape inference
        self.session = open_session(payload["onnx"], [PROVIDERS["cpu"]], threads=torch.get_num_threads())
        self._shapes: dict[tuple, dict[str, Shape]] = {}  # input shapes -> inferred output shapes

    def _meta(self, name: str) -> dict[str, Any]:
        return self.inputs[name] if name in self.inputs else self.outputs[name]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> _Enum:
        return self.standin.TensorIOMode.INPUT if name in self.inputs else self.standin.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> _Enum:
        return getattr(self.standin.DataType, self._meta(name)["dtype"])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._meta(name)["shape"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.profile[name]]

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        return 4096 * len(self.names)

    def create_execution_context(self, strategy: Any = None) -> StandInContext:
        context = StandInContext(self, strategy)
        self.standin.contexts.append(context)
        return context

    def output_shapes(self, inputs: dict[str, Shape]) -> dict[str, Shape]:
        """ONNX shape inference (with data propagation) at these input shapes: what TensorRT resolves."""
        key = tuple(sorted(inputs.items()))
        if key not in self._shapes:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            for value in model.graph.input:
                for dim, size in zip(value.type.tensor_type.shape.dim, inputs[value.name]):
                    dim.Clear()
                    dim.dim_value = size
            for value in model.graph.output:
                for dim in value.type.tensor_type.shape.dim:
                    dim.Clear()
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
            shapes = {name: tuple(info["shape"]) for name, info in _tensors(inferred.graph.output).items()}
            if any(d < 0 for shape in shapes.values() for d in shape):  # inference gave up on a dim: run once on zeros
                feeds = {name: torch.zeros(shape, dtype=_TORCH_TYPES[self.inputs[name]["dtype"]]).numpy()
                         for name, shape in inputs.items()}
                results = self.session.run(list(self.outputs), feeds)
                shapes = {name: tuple(value.shape) for name, value in zip(self.outputs, results)}
            self._shapes[key] = shapes
        return self._shapes[key]


class StandInContext:
    """An execution context: shapes, addresses and activation memory as TensorRT checks them, then ONNX Runtime."""

    def __init__(self, engine: StandInEngine, strategy: Any) -> None:
        self.engine, self.strategy = engine, strategy
        self.standin = engine.standin
        self.calls: list[tuple] = []
        self.shapes: dict[str, Shape] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None

    def _refuse(self, message: str) -> bool:
        self.standin.errors.append(f"{self.engine.component}: {message}")
        return False

    def _settable(self, what: str) -> None:
        if self.standin.capturing:
            raise ContractViolation(f"{self.engine.component}: {what} while a CUDA graph is captured")
        if self.standin.replaying is not None:
            raise ContractViolation(f"{self.engine.component}: {what} during a CUDA-graph replay, which sets nothing")

    def set_device_memory(self, address: int, size: int) -> None:
        self.device_memory = (address, size)

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self._settable(f"set_input_shape({name}, {tuple(shape)})")
        self.calls.append(("set_input_shape", name, tuple(shape)))
        if name not in self.engine.inputs:
            return self._refuse(f"set_input_shape: {name} is not an input")
        lo, _, hi = self.engine.profile[name]
        if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return self._refuse(f"set_input_shape: {name} {tuple(shape)} is outside the profile {lo}..{hi}")
        self.shapes[name] = tuple(int(s) for s in shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.inputs:
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        if set(self.shapes) != set(self.engine.inputs):  # unresolved until every input shape is set
            return self.engine.get_tensor_shape(name)
        return self.engine.output_shapes(self.shapes)[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        if self.addresses.get(name) != address:
            self._settable(f"set_tensor_address({name})")
        self.calls.append(("set_tensor_address", name, address))
        if name not in self.engine.names:
            return self._refuse(f"set_tensor_address: {name} is not an I/O tensor")
        if address % ALIGNMENT:
            return self._refuse(f"set_tensor_address: {name} at {address:#x} is not {ALIGNMENT}-byte aligned")
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.calls.append(("execute_async_v3", stream_handle))
        if stream_handle == 0:
            raise ContractViolation(f"{self.engine.component}: enqueued on the legacy default stream (handle 0)")
        missing_shape = sorted(set(self.engine.inputs) - set(self.shapes))
        missing_address = sorted(set(self.engine.names) - set(self.addresses))
        if missing_shape or missing_address:
            return self._refuse(f"execute_async_v3: no shape for {missing_shape}, no address for {missing_address}")
        if self.strategy is not None and self.strategy.name == "USER_MANAGED":
            need = self.engine.get_device_memory_size_for_profile_v2(0)
            if self.device_memory is None or self.device_memory[1] < need:
                return self._refuse(f"execute_async_v3: user-managed context without {need} bytes of device memory")
        launch = (self.engine.component, id(self), tuple(sorted(self.shapes.items())),
                  tuple(sorted(self.addresses.items())))
        if self.standin.capturing:
            self.standin.captured.append(launch)
        if self.standin.replaying is not None:
            if not self.standin.replaying or self.standin.replaying[0] != launch:
                raise ContractViolation(f"{self.engine.component}: the replay launched an engine, or bindings, "
                                        "other than the capture's")
            self.standin.replaying.pop(0)
        self._compute()
        return True

    def _compute(self) -> None:
        """Read the inputs through their addresses, run ONNX Runtime, write the outputs through theirs."""
        name = self.engine.component
        feeds = {}
        for tensor, info in self.engine.inputs.items():
            view = HOST_MEMORY.view(self.addresses[tensor], self.shapes[tensor], _TORCH_TYPES[info["dtype"]],
                                    f"{name} reads {tensor}")
            feeds[tensor] = view.numpy().copy()
        results = self.engine.session.run(list(self.engine.outputs), feeds)
        for (tensor, info), value in zip(self.engine.outputs.items(), results):
            shape = self.get_tensor_shape(tensor)
            if tuple(value.shape) != shape:
                raise ContractViolation(f"{name}: {tensor} came out {value.shape}, get_tensor_shape said {shape}")
            out = HOST_MEMORY.view(self.addresses[tensor], shape, _TORCH_TYPES[info["dtype"]], f"{name} writes {tensor}")
            out.copy_(torch.from_numpy(np.ascontiguousarray(value)))


@contextmanager
def installed(gpu: str = GPU) -> Iterator[StandInTensorRT]:
    """TensorRT replaced by a new stand-in (engines run on the CPU, built "for" `gpu`) until the block ends."""
    standin = StandInTensorRT()
    previous = trt_common.install(standin, torch.device("cpu"), gpu)
    try:
        yield standin
    finally:
        trt_common.install(*previous)
