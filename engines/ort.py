"""ONNX Runtime backend: runs the exported components, CPU or CUDA/TensorRT providers."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from interlcm.components import BY_NAME, DEFAULT_COMPONENTS, Component
from interlcm.config import PresetConfig

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def cuda_device_count() -> tuple[int, str]:
    """Ask the CUDA driver itself how many devices there are.

    onnxruntime-gpu lists the CUDA and TensorRT providers on machines without a
    GPU and then falls back to the CPU, so its provider list proves nothing.
    """
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        if cuda.cuInit(0) != 0:
            return 0, "the CUDA driver is installed but found no usable device"
        count = ctypes.c_int(0)
        if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return 0, "the CUDA driver reports no device"
        return count.value, f"{count.value} CUDA device(s)"
    return 0, "no CUDA driver on this machine"


def _installed_distributions() -> set[str]:
    from importlib.metadata import PackageNotFoundError, distribution

    found = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            distribution(name)
            found.add(name)
        except PackageNotFoundError:
            pass
    return found


def pick_providers(requested: str = "auto") -> tuple[list[str], str]:
    """Execution providers to ask for, and why, for `auto`, `tensorrt`, `cuda` or `cpu`."""
    import onnxruntime as ort

    if {"onnxruntime", "onnxruntime-gpu"} <= _installed_distributions():
        # both install the same `onnxruntime` package folder: whichever came last wins, half-overwritten
        raise RuntimeError(
            "both onnxruntime and onnxruntime-gpu are installed and break each other: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install -e '.[cpu]' (or '.[gpu]' on a GPU)"
        )

    available = set(ort.get_available_providers())
    if requested == "cpu":
        return [PROVIDERS["cpu"]], "CPU provider requested"
    devices, why = cuda_device_count()
    if requested in ("tensorrt", "cuda"):
        if PROVIDERS[requested] not in available:
            raise RuntimeError(
                f"ONNX Runtime has no {PROVIDERS[requested]}: pip install onnxruntime-gpu (and uninstall onnxruntime)"
            )
        if not devices:
            raise RuntimeError(f"{requested} provider requested but {why}; use --provider cpu")
        chain = ["tensorrt", "cuda", "cpu"] if requested == "tensorrt" else ["cuda", "cpu"]
        return [PROVIDERS[p] for p in chain], f"{requested} provider requested, {why}"
    if devices and PROVIDERS["cuda"] in available:
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]], f"{why} and onnxruntime-gpu"
    return [PROVIDERS["cpu"]], f"{why}, so the CPU provider"


def open_session(
    path: Path | str,
    providers: Sequence[str] = (PROVIDERS["cpu"],),
    threads: int | None = None,
    provider_options: Sequence[dict[str, str]] | None = None,
):  # -> onnxruntime.InferenceSession
    """The one way this project opens an ONNX file (export validation and `OrtBackend`).

    From the path, not bytes: external data (`.onnx.data`) is resolved next to the file.
    Refuses to fall back silently: if the first provider asked for did not start, it
    raises with the provider that did.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: fallback warnings are handled by pick_providers
    sess = ort.InferenceSession(
        os.fspath(path), sess_options=opts, providers=list(providers),
        provider_options=list(provider_options) if provider_options is not None else None,
    )
    if sess.get_providers()[0] != providers[0]:
        raise RuntimeError(
            f"ONNX Runtime could not start {providers[0]} for {Path(path).name} "
            f"(running on {sess.get_providers()[0]}): check the CUDA/TensorRT installation or use --provider cpu"
        )
    return sess


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
        from interlcm.export.manifest import load_manifest

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
