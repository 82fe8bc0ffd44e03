"""Engine-test fixtures: a recording stand-in for the `tensorrt` module and a fake export folder.

TensorRT needs an NVIDIA GPU, so the engine code's orchestration is tested on the
CPU against `FakeTensorRT`: builder, network, parser, config, profile, timing cache,
runtime, engine and context objects that record every call our code makes, and
check the preconditions TensorRT itself would (an address for every I/O tensor and
a shape for every input before `execute_async_v3`). Its "ONNX files" are small
JSON files naming each component's inputs and outputs with their per-sample
shapes; its serialized engines are JSON too, so a built engine knows its tensors.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from interlcm.identity import WeightsIdentity


class _Enum:
    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def _enum(*names: str) -> SimpleNamespace:
    return SimpleNamespace(**{n: _Enum(n, i) for i, n in enumerate(names)})


class FakeTensorRT:
    """Just enough of `tensorrt` for engines/trt.py, recording every call in `calls`."""

    __version__ = "10.13.0.35"
    NetworkDefinitionCreationFlag = SimpleNamespace(EXPLICIT_BATCH=_Enum("EXPLICIT_BATCH", 0),
                                                    STRONGLY_TYPED=_Enum("STRONGLY_TYPED", 1))
    MemoryPoolType = _enum("WORKSPACE")
    TensorIOMode = _enum("NONE", "INPUT", "OUTPUT")
    DataType = _enum("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64")
    ExecutionContextAllocationStrategy = _enum("STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED")

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail_build = False  # build_serialized_network returns None, as TensorRT does on failure
        self.parse_errors: list[str] = []
        self.contexts: list[FakeContext] = []
        self.builds: list[str] = []  # components built, in order
        self.unreadable_cache = False  # create_timing_cache returns None for non-empty bytes (damaged file)
        self.mismatched_cache = False  # set_timing_cache returns False for non-empty caches (other TensorRT/GPU)
        self.no_timing_cache = False  # create_timing_cache and get_timing_cache return None
        fake = self

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity: Any = None) -> None:
                self.severity = severity

        class Builder:
            def __init__(self, logger: Any) -> None:
                fake.calls.append(("Builder",))

            def create_network(self, flags: int = 0) -> FakeNetwork:
                fake.calls.append(("create_network", flags))
                return FakeNetwork(flags)

            def create_builder_config(self) -> FakeConfig:
                return FakeConfig(fake)

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile()

            def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
                fake.calls.append(("build_serialized_network",))
                if fake.fail_build:
                    return None
                fake.builds.append(network.model["component"])
                config.timing_cache.data += f"[{network.model['component']}]".encode()
                payload = {"model": network.model, "profiles": [p.shapes for p in config.profiles],
                           "flags": network.flags, "opt_level": config.builder_optimization_level}
                return json.dumps(payload).encode()

        class OnnxParser:
            def __init__(self, network: FakeNetwork, logger: Any) -> None:
                self.network = network

            @property
            def num_errors(self) -> int:
                return len(fake.parse_errors)

            def get_error(self, index: int) -> str:
                return fake.parse_errors[index]

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse_from_file", path))
                if fake.parse_errors:
                    return False
                self.network.model = json.loads(Path(path).read_text())
                return True

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
                fake.calls.append(("deserialize_cuda_engine",))
                return FakeEngine(fake, json.loads(bytes(data)))

        self.Logger, self.Builder, self.OnnxParser, self.Runtime = Logger, Builder, OnnxParser, Runtime

    @staticmethod
    def Dims(shape: list[int]) -> tuple[int, ...]:  # noqa: N802 - mirrors trt.Dims
        return tuple(shape)


@dataclass
class FakeNetwork:
    flags: int
    model: dict = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return len(self.model["inputs"])

    @property
    def num_outputs(self) -> int:
        return len(self.model["outputs"])

    def get_input(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(name=list(self.model["inputs"])[i])

    def get_output(self, i: int) -> SimpleNamespace:
        return SimpleNamespace(name=list(self.model["outputs"])[i])


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data


class FakeConfig:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake
        self.builder_optimization_level = 3
        self.profiles: list[FakeProfile] = []
        self.timing_cache = FakeTimingCache(b"")
        self.flags_set: list = []

    def set_flag(self, flag: Any) -> None:  # our code must not call this (no FP16 flag: strongly typed)
        self.flags_set.append(flag)
        self.fake.calls.append(("set_flag", flag))

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.fake.calls.append(("set_memory_pool_limit", pool.name, size))

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeTimingCache | None:
        self.fake.calls.append(("create_timing_cache", bytes(data)))
        if (data and self.fake.unreadable_cache) or self.fake.no_timing_cache:
            return None
        return FakeTimingCache(data)

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.fake.calls.append(("set_timing_cache", ignore_mismatch))
        if cache.data and self.fake.mismatched_cache and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return None if self.fake.no_timing_cache else self.timing_cache


class FakeEngine:
    """Tensors in the order TensorRT lists them: inputs, then outputs; -1 for the dynamic batch axis."""

    def __init__(self, fake: FakeTensorRT, payload: dict) -> None:
        self.fake, self.payload = fake, payload
        self.model, self.profile = payload["model"], payload["profiles"][0]
        self.names = [*self.model["inputs"], *self.model["outputs"]]
        self.dtypes = self.model.get("dtypes", {})

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> _Enum:
        return self.fake.TensorIOMode.INPUT if name in self.model["inputs"] else self.fake.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> _Enum:
        return getattr(self.fake.DataType, self.dtypes.get(name, "FLOAT"))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        dims = self.model["inputs"][name] if name in self.model["inputs"] else self.model["outputs"][name]
        return (-1, *dims)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.profile[name]]

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        return 1000 + 10 * len(self.names)

    def create_execution_context(self, strategy: Any = None) -> FakeContext:
        context = FakeContext(self, strategy)
        self.fake.contexts.append(context)
        return context


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy: Any) -> None:
        self.engine, self.strategy = engine, strategy
        self.calls: list[tuple] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None

    def set_device_memory(self, address: int, size: int) -> None:
        self.device_memory = (address, size)

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.calls.append(("set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = next(iter(self.shapes.values()))[0]
        return (batch, *self.engine.model["outputs"][name])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.calls.append(("set_tensor_address", name, address))
        if address % 256:  # TensorRT refuses I/O addresses that are not 256-byte aligned
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append(("execute_async_v3", stream))
        assert stream != 0, "enqueued on the legacy default stream"
        # what TensorRT requires before enqueueing
        missing_shape = set(self.engine.model["inputs"]) - set(self.shapes)
        missing_address = set(self.engine.names) - set(self.addresses)
        assert not missing_shape and not missing_address, (missing_shape, missing_address)
        for name in self.engine.model["outputs"]:  # "compute": zero every output buffer through its address
            nbytes = 4
            for d in self.get_tensor_shape(name):
                nbytes *= d
            ctypes.memset(self.addresses[name], 0, nbytes)
        return True


@dataclass
class FakeManifest:
    """Stands in for interlcm.export.manifest.Manifest (same attribute and method names)."""

    config: Any
    batch: tuple[int, int, int]
    entries: list[SimpleNamespace]
    weights: str = "random, seed 0"
    identity: Any = field(default_factory=lambda: WeightsIdentity.random("tiny", 0))  # what export_all records

    def entry(self, component: str, precision: str) -> SimpleNamespace:
        for e in self.entries:
            if (e.component, e.precision) == (component, precision):
                return e
        raise KeyError((component, precision))

    def path(self, root: Path, component: str, precision: str) -> Path:
        return Path(root) / self.entry(component, precision).file


def write_fake_export(root: Path, cfg: Any, components: list[str], batch=(1, 2, 4)) -> FakeManifest:
    """Fake fp16 "ONNX" files (JSON: per-sample shapes of each component's I/O) and their manifest."""
    from interlcm.components import get_component

    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in components:
        comp = get_component(name)
        model = {
            "component": name,
            "inputs": {n: list(s[1:]) for n, s in comp.input_shapes(cfg, 1).items()},
            "outputs": {n: list(s[1:]) for n, s in comp.output_shapes(cfg, 1).items()},
        }
        file = f"{name}.fp16.onnx"
        data = json.dumps(model).encode()
        (root / file).write_bytes(data)
        entries.append(SimpleNamespace(
            component=name, precision="fp16", file=file, sha256=hashlib.sha256(data).hexdigest(), external_sha256=None,
            inputs=[SimpleNamespace(name=n) for n in model["inputs"]],
            outputs=[SimpleNamespace(name=n) for n in model["outputs"]],
        ))
    return FakeManifest(cfg, batch, entries)


@pytest.fixture(name="write_fake_export")
def write_fake_export_fixture():
    return write_fake_export


class FakeStream:
    """A dedicated stream's handle (not 0, the legacy default stream), counting host waits."""

    cuda_stream = 0x5EED

    def __init__(self) -> None:
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


FAKE_GPU = "NVIDIA L4 (sm_89)"


@pytest.fixture
def fake_trt(monkeypatch):
    """engines/trt.py on the recording stand-in, a CPU 'device', an L4 GPU and a dedicated stream."""
    from interlcm.engines import trt as trt_mod

    fake = FakeTensorRT()
    monkeypatch.setattr(trt_mod, "trt", fake)
    monkeypatch.setattr(trt_mod, "gpu_identity", lambda device=None: FAKE_GPU)
    monkeypatch.setattr(trt_mod, "_require_device", lambda device: None)
    monkeypatch.setattr(trt_mod, "_new_stream", lambda device: FakeStream())
    return fake


@pytest.fixture
def fake_export(tmp_path, tiny_cfg, monkeypatch):
    """A fake export folder of the tiny preset's default components, wired into engines/trt.py."""
    from interlcm.components import DEFAULT_COMPONENTS
    from interlcm.engines import trt as trt_mod

    root = tmp_path / "onnx"
    manifest = write_fake_export(root, tiny_cfg, list(DEFAULT_COMPONENTS))
    monkeypatch.setattr(trt_mod, "_load_manifest", lambda onnx_dir: manifest)
    return SimpleNamespace(root=root, manifest=manifest)


@pytest.fixture(scope="session")
def real_engines(tiny_models, tmp_path_factory):
    """Real fp16 engines of the tiny preset (with the fused step), batch 1..4; skips without CUDA and TensorRT."""
    from interlcm.components import DEFAULT_COMPONENTS
    from interlcm.engines import trt as trt_mod
    from interlcm.export.onnx_export import export_all

    ok, why = trt_mod.check_cuda()
    if not ok:
        pytest.skip(f"needs CUDA and TensorRT: {why}")
    onnx_dir = tmp_path_factory.mktemp("onnx")
    export_all(tiny_models, onnx_dir, [*DEFAULT_COMPONENTS, "denoise_step"], ("fp16",), batch=(1, 2, 4), progress=False)
    out = tmp_path_factory.mktemp("engines")
    trt_mod.build_engines(onnx_dir, out, opt_level=2)
    return out



@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the Ray job and Serve tests: 2 CPUs, the project's own loopback-only start."""
    ray = pytest.importorskip("ray")
    from interlcm.engines.ray_job import start_local_ray

    start_local_ray(num_cpus=2, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def reference_faces(tmp_path_factory, tiny_cfg):
    """12 random face crops at the tiny resolution (ROOT/in) and the single-process CLI's outputs at
    --batch 1 (ROOT/reference), for the Ray job and Serve tests to compare with byte for byte."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from interlcm.engines.cli import main

    args = ["--aligned", "--preset", "tiny", "--backend", "torch", "--seed", "1", "--threads", "1"]
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    for i in range(12):
        pixels = rng.integers(0, 255, (tiny_cfg.resolution, tiny_cfg.resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "in" / f"face{i:02d}.png")
    result = CliRunner().invoke(main, ["restore", str(root / "in"), *args, "--out", str(root / "reference")])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(root=root, args=args, seed=1)
