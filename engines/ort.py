"""ONNX Runtime backend: runs the exported components, CPU or CUDA/TensorRT providers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from interlcm.components import BY_NAME, DEFAULT_COMPONENTS, Component
from interlcm.config import PresetConfig
from interlcm.export.manifest import load_manifest
from interlcm.export.session import PROVIDERS, open_session, pick_providers


def provider_options(providers: Sequence[str], device: torch.device, stream: int | None) -> list[dict[str, str]]:
    """Per-provider options: the GPU providers run on `device` and on the CUDA stream `stream`.

    With `user_compute_stream` ONNX Runtime enqueues its kernels on torch's stream, so
    they start only after torch's pending work on the inputs (otherwise ORT's own stream
    does not wait for it).
    """
    options = []
    for provider in providers:
        if provider == PROVIDERS["cpu"]:
            options.append({})
            continue
        opts = {"device_id": str(device.index or 0)}
        if stream is not None:
            opts["user_compute_stream"] = str(stream)
        options.append(opts)
    return options


def run_bound(
    sess,  # onnxruntime.InferenceSession
    component: Component,
    config: PresetConfig,
    inputs: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Run with IOBinding: torch tensors bound by address in and out, nothing visits the host.

    Outputs are torch tensors allocated here at the shapes of the component description
    (`get_outputs()` would give OrtValues, which have no DLPack export), so they belong to
    torch's allocator. Inputs are made fp32 and contiguous on `device` first; the copies are
    kept alive until the run returns.
    """
    kind, index = device.type, device.index or 0
    bound = {}
    binding = sess.io_binding()
    for name in component.input_names:
        t = bound[name] = inputs[name].to(device=device, dtype=torch.float32).contiguous()
        binding.bind_input(name, kind, index, np.float32, list(t.shape), t.data_ptr())
    batch = bound[component.input_names[0]].shape[0]
    outputs = {
        name: torch.empty(shape, dtype=torch.float32, device=device)
        for name, shape in component.output_shapes(config, batch).items()
    }
    for name, t in outputs.items():
        binding.bind_output(name, kind, index, np.float32, list(t.shape), t.data_ptr())
    sess.run_with_iobinding(binding)  # returns after ORT synchronised its stream: outputs are complete
    return outputs


class OrtBackend:
    """Runs the components of an export folder (see interlcm.export.manifest) with ONNX Runtime.

    On CUDA (and on the CPU with `io_binding=True`, which the tests use) tensors are bound
    by address (`run_bound`); on CUDA ONNX Runtime runs on the torch stream current when
    the backend was opened, and a run from another torch stream makes the two wait for
    each other.
    """

    name = "onnxruntime"
    max_batch: int | None = None  # the graphs have a dynamic batch axis

    def __init__(
        self,
        onnx_dir: Path,
        precision: str = "fp32",
        provider: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        io_binding: bool | None = None,  # default: on CUDA
    ):
        """`components`: what this backend will be asked to run, checked against the manifest now."""
        self.root = Path(onnx_dir)
        self.manifest = load_manifest(self.root, verify=verify)
        self.config = self.manifest.config
        self.weights: str = self.manifest.weights  # identity of the weights the export was made from
        self.precision = precision
        self.providers, self.reason = pick_providers(provider)
        self.threads = threads
        self.io_binding = self.device.type == "cuda" if io_binding is None else io_binding
        # ORT enqueues on this torch stream (user_compute_stream); None on the CPU
        self.stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        self._sessions: dict = {}
        for name in components:
            self.manifest.entry(name, precision)  # fail now, not after minutes of work

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0) if self.providers[0] != PROVIDERS["cpu"] else torch.device("cpu")

    def has(self, component: str) -> bool:
        """Whether the export holds `component` in this backend's precision (e.g. the fused denoise_step)."""
        return any(e.component == component and e.precision == self.precision for e in self.manifest.entries)

    def session(self, component: str):  # -> onnxruntime.InferenceSession
        if component not in self._sessions:
            path = self.manifest.path(self.root, component, self.precision)
            handle = self.stream.cuda_stream if self.stream is not None else None
            options = provider_options(self.providers, self.device, handle)
            self._sessions[component] = open_session(path, self.providers, self.threads, options)
        return self._sessions[component]

    @property
    def running_on(self) -> str:
        return self.providers[0].replace("ExecutionProvider", "")

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        spec = BY_NAME[component]
        entry = self.manifest.entry(component, self.precision)
        _check_inputs(component, entry, inputs)
        sess = self.session(component)
        if not self.io_binding:
            feeds = {n: inputs[n].detach().cpu().numpy() for n in spec.input_names}
            outs = sess.run(list(spec.output_names), feeds)
            return {n: torch.from_numpy(np.ascontiguousarray(o)) for n, o in zip(spec.output_names, outs)}
        if self.stream is None:
            return run_bound(sess, spec, self.config, inputs, self.device)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # a no-op when the caller is on our stream
        outputs = run_bound(sess, spec, self.config, inputs, self.device)
        current.wait_stream(self.stream)
        return outputs

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def close(self) -> None:
        self._sessions.clear()


def _check_inputs(component: str, entry, inputs: dict[str, torch.Tensor]) -> None:
    """Names and non-batch dims against the manifest, before anything runs."""
    for info in entry.inputs:
        if info.name not in inputs:
            raise ValueError(f"{component}: missing input {info.name!r} (expects {[i.name for i in entry.inputs]})")
        got = tuple(inputs[info.name].shape)
        fixed = [(i, d) for i, d in enumerate(info.shape) if isinstance(d, int)]
        if len(got) != len(info.shape) or any(got[i] != d for i, d in fixed):
            raise ValueError(
                f"{component}: input {info.name!r} has shape {got}, the exported graph takes {info.shape}: "
                "re-export for this resolution (interlcm-export --resolution ...)"
            )
