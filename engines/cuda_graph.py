"""CUDA-graph replay of the sampler's whole step chain (SE, UNet, LCM update, every step), per batch size.

NVIDIA's diffusion demo captures each engine call; here the whole of stage 2 of the
sampler (`interlcm.sampler.denoise`: for every step the noising, the SE and UNet engines
or the fused step, and the LCM update) is one graph, so a restoration launches the steps
with one `replay()` and no per-kernel launch cost or host round trip between them.

    chain = GraphedStepChain(backend, settings, backend.stream)
    restore(backend, lq, noise, settings, chain=chain)

What makes it capturable: `denoise` does only torch arithmetic and `backend.run` on the
current stream; `TrtBackend.run` enqueues on its dedicated stream (the capture stream
here) through one execution context per batch size, whose shapes, buffers and addresses
the warm-up run sets up (so capture sets and allocates nothing, and a replay finds its
context as it was captured), and does no host synchronisation. The warm-up run also gives
TensorRT the first enqueue per shape that it needs before capture.
Static buffers: the five inputs are copied into tensors owned by the graph, and the
result is the graph's static output, valid until the next replay of that batch size
(the sampler decodes it at once).

Timing per component (`TimedBackend`) synchronises after every call: it is an option
for the non-graph path, and off here by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from interlcm.backend import ComponentRunner
from interlcm.sampler import SamplerSettings, denoise


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]  # static z0, context, cond, guidance, noise
    output: torch.Tensor  # static z0 after every step


class GraphedStepChain:
    """A `sampler.StepChain`: `denoise` captured once per batch size on `stream`, then replayed."""

    def __init__(self, backend: ComponentRunner, settings: SamplerSettings, stream: Any = None, cuda: Any = None):
        """`stream`: where to capture and replay (TensorRT's engine stream); None: a new stream on the first
        call's device (torch runs on the current stream, and capture needs one other than the default)."""
        self.backend, self.settings, self.stream = backend, settings, stream
        # the torch.cuda functions used; the CPU tests pass stand-ins that record the calls
        self.cuda = cuda or SimpleNamespace(CUDAGraph=torch.cuda.CUDAGraph, graph=torch.cuda.graph,
                                            stream=torch.cuda.stream, current_stream=torch.cuda.current_stream,
                                            Stream=torch.cuda.Stream)
        self.captured: dict[int, _Captured] = {}

    def same_chain(self, settings: SamplerSettings) -> bool:
        """Whether `settings` capture the same graphs (the colour fix and the guidance value are not in them)."""
        return (settings.schedule, settings.fused_step) == (self.settings.schedule, self.settings.fused_step)

    def __call__(self, z0: torch.Tensor, context: torch.Tensor, cond: torch.Tensor, guidance: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
        values = (z0, context, cond, guidance, noise)
        caller = self.cuda.current_stream(z0.device)
        if self.stream is None:
            self.stream = self.cuda.Stream(z0.device)
        self.stream.wait_stream(caller)  # the inputs were written on the caller's stream
        with self.cuda.stream(self.stream):
            captured = self.captured.get(z0.shape[0])
            if captured is None:
                captured = self.captured[z0.shape[0]] = self._capture(values)
            for static, value in zip(captured.inputs, values):
                static.copy_(value)
            captured.graph.replay()
        caller.wait_stream(self.stream)
        return captured.output

    def _capture(self, values: tuple[torch.Tensor, ...]) -> _Captured:
        statics = tuple(v.clone() for v in values)
        # warm-up outside the capture: TensorRT's first enqueue per shape, output buffers allocated
        denoise(self.backend, *statics, self.settings)
        graph = self.cuda.CUDAGraph()
        with self.cuda.graph(graph, stream=self.stream):
            output = denoise(self.backend, *statics, self.settings)
        return _Captured(graph, statics, output)
