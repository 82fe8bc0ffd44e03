"""The interface every backend declares, and the wrapper that times one.

The sampler (interlcm/sampler.py) only calls `run`; the runtime, the checks and the benchmarks
may ask for the rest of `Backend`. The torch reference backend is interlcm/torch_backend.py;
ONNX Runtime and TensorRT live in interlcm.engines, and `interlcm.engines.backend.open_backend`
opens any of them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Protocol

import torch

from interlcm.config import PresetConfig


class ComponentRunner(Protocol):
    """Runs one named component on named tensors and returns its named outputs."""

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...


class Backend(Protocol):
    """What the runtime, the checks and the benchmarks may ask of any backend."""

    name: str  # "torch", "onnxruntime", "tensorrt"
    config: PresetConfig  # the preset (sizes, resolution) its models or graphs were made for
    device: torch.device  # where its input and output tensors live
    max_batch: int | None  # the largest batch it accepts (an engine profile's max); None: any

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""
        ...

    def close(self) -> None:
        """Release sessions, engines and buffers."""
        ...


class TimedBackend:
    """Wraps a backend and records the wall time of every component call.

    Device work is synchronised before and after each call, so the times are the
    component's own; that costs overlap on a GPU, so the runtime only wraps a
    backend when timing is asked for.
    """

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name, self.config, self.device, self.max_batch = inner.name, inner.config, inner.device, inner.max_batch
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

    def synchronize(self) -> None:
        self.inner.synchronize()

    def close(self) -> None:
        self.inner.close()
