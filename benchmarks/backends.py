"""Backend adapters the benchmark puts between the sampler and a real backend."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from interlcm.components import BY_NAME
from interlcm.sampler import Backend


def synchronizer(backend: object) -> Callable[[], None]:
    """What to call before reading the clock: the backend's own sync, or CUDA's for a torch GPU backend."""
    sync = getattr(backend, "synchronize", None)
    if callable(sync):
        return sync
    device = getattr(backend, "device", None)
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class ComponentClock:
    """Times every component call of the backend it wraps; device work is synchronised on both sides."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.device = torch.device(getattr(inner, "device", "cpu"))
        self.synchronize = synchronizer(inner)
        self.calls: list[tuple[str, float]] = []  # (component, seconds) since the last take()

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.synchronize()
        start = time.perf_counter()
        out = self.inner.run(component, **inputs)
        self.synchronize()
        self.calls.append((component, time.perf_counter() - start))
        return out

    def take(self) -> list[tuple[str, float]]:
        calls, self.calls = self.calls, []
        return calls


class ReleaseStyle:
    """The sampler's calls mapped to the release's Spatial Encoder: its image embedding every step.

    The sampler runs `se_condition` once and `spatial_encoder` per step. The
    release runs the whole ControlNet, conditioning embedding included, at
    every step: here `se_condition` only keeps the image and every
    `spatial_encoder` call runs `spatial_encoder_full` on it.
    """

    FULL = BY_NAME["spatial_encoder_full"]
    CONDITION = BY_NAME["se_condition"]

    def __init__(self, inner: Backend):
        self.inner = inner
        self.device = torch.device(getattr(inner, "device", "cpu"))
        self.synchronize = synchronizer(inner)
        self._image: torch.Tensor | None = None

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if component == self.CONDITION.name:
            (image_name,) = self.CONDITION.input_names
            self._image = inputs[image_name]
            # the release has no separate embedding: the sampler gets a placeholder it only passes along
            return {name: torch.empty(0) for name in self.CONDITION.output_names}
        if component == "spatial_encoder":
            if self._image is None:
                raise RuntimeError("spatial_encoder called before se_condition: the sampler's order changed")
            (image_name,) = self.CONDITION.input_names
            feeds = {n: self._image if n == image_name else inputs[n] for n in self.FULL.input_names}
            return self.inner.run(self.FULL.name, **feeds)
        return self.inner.run(component, **inputs)
