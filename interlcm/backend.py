"""The interface every backend declares, the one place component calls go through, and backend wrappers.

The sampler (interlcm/sampler.py) only calls `run`; the runtime, the checks and the benchmarks
may ask for the rest of `Backend`. Every backend (torch here in interlcm/torch_backend.py, ONNX
Runtime and TensorRT in interlcm.engines, opened by `interlcm.engines.backend.open_backend`)
derives from `BackendBase`, whose `run` is the one home of what every call needs:

1. the inputs moved to the backend's device and checked against the component description
   (`Component.check`, with the backend's `limits`: its engine profile or export);
2. the call split into engine calls of at most `max_batch` (the profile's batch max), the
   results concatenated, so the detector, ParseNet, the LCM chain, Real-ESRGAN tiles and face
   upsampling may hand over any number of items;
3. the backend's own `_run` for each engine call, at the (batch, dims) the check read off the
   inputs; runtimes that bind output buffers allocate them with `allocate_outputs`.

Backends are context managers: `with backend:` (or `open_backend`) closes them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from interlcm.components import Component, Limits, Shape, get_component
from interlcm.config import PresetConfig


class ComponentRunner(Protocol):
    """Runs one named component on named tensors and returns its named outputs."""

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Backend(Protocol):
    """What the runtime, the checks and the benchmarks may ask of any backend."""

    name: str  # "torch", "onnxruntime", "tensorrt"
    config: PresetConfig  # the preset (sizes, resolution) its models or graphs were made for
    device: torch.device  # where its input and output tensors live
    max_batch: int | None  # the largest batch of one engine call (larger calls are split); None: any
    stream: Any  # the CUDA stream its engines run on (TensorRT, ONNX Runtime on CUDA); None: the caller's

    def has(self, component: str) -> bool:
        """Whether `component` can run here (exported, built or loaded)."""
        ...

    def limits(self, component: str) -> Limits:
        """The batch and run-time dims one call of `component` may have here (`Component.check`)."""
        ...

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""
        ...

    def close(self) -> None:
        """Release sessions, engines and buffers."""
        ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


class BackendBase:
    """What every backend shares: the checked, chunked `run`, and the context-manager lifecycle.

    A backend implements `has`, `_run` (one engine call, within `limits`) and, when it holds
    resources, `__enter__`/`close`; `limits` defaults to the component description's ranges.
    """

    name: str
    config: PresetConfig
    device: torch.device
    max_batch: int | None = None
    stream: Any = None

    def __enter__(self) -> BackendBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, component: str) -> bool:
        raise NotImplementedError

    def limits(self, component: str) -> Limits:
        return get_component(component).limits((1, self.max_batch))

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Check, split to `max_batch`, run each part, concatenate (see the module docstring).

        A call that fits in one engine call returns the backend's outputs as they are (TensorRT's are
        its reused buffers, see engines/trt.py); a split call returns new tensors.
        """
        spec = get_component(component)
        inputs = {n: t.to(self.device) if isinstance(t, torch.Tensor) else t for n, t in inputs.items()}
        limits = self.limits(component)
        batch, dims = spec.check(self.config, inputs, limits)
        step = limits.batch[1] or batch
        if batch <= step:
            return self._run(spec, inputs, batch, dims)
        out: dict[str, torch.Tensor] = {}
        for start in range(0, batch, step):
            part = min(step, batch - start)
            got = self._run(spec, {n: t[start : start + part] for n, t in inputs.items()}, part, dims)
            for name, tensor in got.items():
                if name not in out:
                    out[name] = tensor.new_empty((batch, *tensor.shape[1:]))
                out[name][start : start + part].copy_(tensor)  # before the next part reuses the engine's buffers
        return out

    def _run(self, component: Component, inputs: dict[str, torch.Tensor], batch: int,
             dims: dict[str, int]) -> dict[str, torch.Tensor]:
        """One engine call: `inputs` checked, on the device, `batch` within the limits."""
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


def allocate_outputs(
    component: Component,
    config: PresetConfig,
    batch: int,
    dims: Mapping[str, int],
    empty: Callable[[Shape, torch.dtype], torch.Tensor],
    engine_shape: Callable[[str], Shape] | None = None,
) -> dict[str, torch.Tensor]:
    """The output buffers of one call, at the shapes its inputs imply: ONNX Runtime's and TensorRT's one allocator.

    Shapes come from the component description at the call's batch and run-time dims (e.g. RetinaFace's
    prior count from the photo's height and width). `engine_shape(name)`, when given, is the runtime's
    own answer (TensorRT's `get_tensor_shape` after `set_input_shape`); a disagreement raises
    RuntimeError rather than binding a buffer the engine would write past.
    """
    shapes = component.output_shapes(config, batch, {**component.sizes(), **dims})
    out = {}
    for spec in component.outputs:
        shape = shapes[spec.name]
        if engine_shape is not None and tuple(engine_shape(spec.name)) != shape:
            raise RuntimeError(
                f"{component.name}: the engine gives {spec.name} shape {tuple(engine_shape(spec.name))} for inputs of "
                f"batch {batch} {dict(dims)}, the component description says {shape} for the {config.name} preset: "
                "the engines were built from another export; rebuild them (interlcm-trt build)"
            )
        out[spec.name] = empty(shape, spec.dtype)
    return out


class BackendWrapper(BackendBase):
    """A backend around another: everything delegates to `inner`; subclasses override what they add."""

    def __init__(self, inner: Backend):
        self.inner = inner

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def config(self) -> PresetConfig:  # type: ignore[override]
        return self.inner.config

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.inner.device

    @property
    def max_batch(self) -> int | None:  # type: ignore[override]
        return self.inner.max_batch

    @property
    def stream(self) -> Any:
        return self.inner.stream

    def has(self, component: str) -> bool:
        return self.inner.has(component)

    def limits(self, component: str) -> Limits:
        return self.inner.limits(component)

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner.run(component, **inputs)

    def synchronize(self) -> None:
        self.inner.synchronize()

    def close(self) -> None:
        self.inner.close()


class TimedBackend(BackendWrapper):
    """Wraps a backend and records the wall time of every component call.

    Device work is synchronised before and after each call, so the times are the
    component's own; that costs overlap on a GPU, so the runtime only wraps a
    backend when timing is asked for.
    """

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.calls: list[tuple[str, float]] = []  # (component, seconds) since the last take()
        self.seconds: dict[str, float] = defaultdict(float)  # totals since construction
        self.counts: dict[str, int] = defaultdict(int)

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.inner.synchronize()
        start = time.perf_counter()
        out = self.inner.run(component, **inputs)
        self.inner.synchronize()
        seconds = time.perf_counter() - start
        self.calls.append((component, seconds))
        self.seconds[component] += seconds
        self.counts[component] += 1
        return out

    def take(self) -> list[tuple[str, float]]:
        calls, self.calls = self.calls, []
        return calls
