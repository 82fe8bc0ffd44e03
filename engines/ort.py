"""ONNX Runtime backend: runs the exported components, CPU or CUDA/TensorRT providers.

One code path on every device: torch tensors are bound by address (IOBinding) in and out,
outputs allocated at the shapes the inputs imply (`allocate_outputs`), calls split to the
export's batch profile (`BackendBase.run`), ONNX Runtime's exceptions turned into one
sentence at this boundary (`OrtError`). Streams (engines/device.py): ONNX Runtime runs on a
dedicated CUDA stream of its own (`user_compute_stream`), ordered with the caller's stream both
ways by events; on the CPU the same calls are made and recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interlcm.backend import BackendBase, allocate_outputs
from interlcm.components import DEFAULT_COMPONENTS, Component, Limits
from interlcm.engines.device import streams_for
from interlcm.export.manifest import load_manifest
from interlcm.export.session import PROVIDERS, open_session, ort_errors, pick_providers


def provider_options(providers: Sequence[str], device: torch.device, stream: int,
                     dynamic: bool = False) -> list[dict[str, str]]:
    """Per-provider options: the GPU providers run on `device` and on the CUDA stream `stream`.

    `stream` must be a real stream's handle: ONNX Runtime reads 0 (torch's legacy default stream)
    as "no stream given" and then runs on a stream of its own that waits for nothing. `dynamic`
    (a component with run-time dims, e.g. a detector seeing every photo's size): cuDNN picks
    convolution algorithms by heuristics instead of timing every one for each new size.
    """
    if stream == 0:
        raise ValueError("ONNX Runtime needs a dedicated CUDA stream: handle 0 (the legacy default stream) means none")
    options = []
    for provider in providers:
        if provider == PROVIDERS["cpu"]:
            options.append({})
            continue
        opts = {"device_id": str(device.index or 0), "user_compute_stream": str(stream)}
        if provider == PROVIDERS["cuda"]:
            opts["cudnn_conv_algo_search"] = "HEURISTIC" if dynamic else "EXHAUSTIVE"
        options.append(opts)
    return options


class OrtBackend(BackendBase):
    """Runs the components of an export folder (see interlcm.export.manifest) with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_dir: Path,
        precision: str = "fp32",
        provider: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        components: Sequence[str] = DEFAULT_COMPONENTS,
    ):
        """`components`: what this backend will be asked to run, checked against the manifest now."""
        self.root = Path(onnx_dir)
        self.manifest = load_manifest(self.root, verify=verify)
        self.config = self.manifest.config
        self.weights: str = self.manifest.weights  # identity of the weights the export was made from
        self.precision = precision
        self.providers, self.reason = pick_providers(provider)
        self.threads = threads
        lo, _, hi = self.manifest.batch
        self.batch = (int(lo), int(hi))
        self.streams = streams_for(self.device)
        self.stream: Any = self.streams.new_stream()  # ONNX Runtime's user_compute_stream (recorded on the CPU)
        self._sessions: dict = {}
        for name in components:
            self.manifest.entry(name, precision)  # fail now, not after minutes of work

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0) if self.providers[0] != PROVIDERS["cpu"] else torch.device("cpu")

    @property
    def max_batch(self) -> int:  # type: ignore[override]
        """The export's batch profile ends here: the CPU splits calls as TensorRT must."""
        return self.batch[1]

    def has(self, component: str) -> bool:
        """Whether the export holds `component` in this backend's precision (e.g. the fused denoise_step)."""
        return any(e.component == component and e.precision == self.precision for e in self.manifest.entries)

    def limits(self, component: str) -> Limits:
        """The export's batch range and the run-time dims range its file was exported for."""
        return self.manifest.entry(component, self.precision).spec().limits(self.batch)

    def session(self, component: str):  # -> onnxruntime.InferenceSession
        if component not in self._sessions:
            entry = self.manifest.entry(component, self.precision)
            options = provider_options(self.providers, self.device, self.streams.handle(self.stream),
                                       dynamic=bool(entry.dims))
            self._sessions[component] = open_session(self.root / entry.file, self.providers, self.threads, options)
        return self._sessions[component]

    @property
    def running_on(self) -> str:
        return self.providers[0].replace("ExecutionProvider", "")

    def _run(self, component: Component, inputs: dict[str, torch.Tensor], batch: int,
             dims: dict[str, int]) -> dict[str, torch.Tensor]:
        """Bind torch tensors in and out by address and run: nothing visits the host.

        Outputs are torch tensors allocated here (`get_outputs()` would give OrtValues, which have
        no DLPack export), so they belong to torch's allocator. The inputs were made contiguous on
        the caller's stream; ONNX Runtime's stream waits for it, and it for ONNX Runtime's.
        """
        sess = self.session(component.name)
        kind, index = self.device.type, self.device.index or 0
        binding = sess.io_binding()
        # fp32 and contiguous, on the caller's stream; alive until the run returns
        bound = {name: inputs[name].to(torch.float32).contiguous() for name in component.input_names}
        for name, tensor in bound.items():
            binding.bind_input(name, kind, index, np.float32, list(tensor.shape), tensor.data_ptr())
        outputs = allocate_outputs(component, self.config, batch, dims,
                                   lambda shape, dtype: torch.empty(shape, dtype=dtype, device=self.device))
        for name, tensor in outputs.items():
            binding.bind_output(name, kind, index, np.float32, list(tensor.shape), tensor.data_ptr())
        caller = self.streams.current()
        self.streams.wait(self.stream, caller)  # the inputs were written on the caller's stream
        with ort_errors(f"ONNX Runtime failed running {component.name}",
                        "check the inputs, or re-export the component (interlcm-export --force)"):
            sess.run_with_iobinding(binding)  # returns after ONNX Runtime synchronised its stream
        self.streams.launched(self.stream, component.name)
        self.streams.wait(caller, self.stream)  # the caller reads the outputs after ONNX Runtime wrote them
        return outputs

    def synchronize(self) -> None:
        self.streams.synchronize(self.stream)

    def close(self) -> None:
        self._sessions.clear()
