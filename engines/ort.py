"""ONNX Runtime backend: runs the exported components, CPU or CUDA/TensorRT providers."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import torch

from interlcm.components import BY_NAME, DEFAULT_COMPONENTS

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


def pick_providers(requested: str = "auto") -> tuple[list[str], str]:
    """Execution providers to ask for, and why, for `auto`, `tensorrt`, `cuda` or `cpu`."""
    import onnxruntime as ort

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


class OrtBackend:
    """Runs the components of an export folder (see interlcm.export.manifest) with ONNX Runtime."""

    name = "onnxruntime"
    max_batch: int | None = None  # the graphs have a dynamic batch axis

    def __init__(
        self,
        onnx_dir: Path,
        precision: str = "fp32",
        provider: str = "auto",
        threads: int | None = None,
        verify: bool = True,
    ):
        from interlcm.export.manifest import load_manifest

        self.root = Path(onnx_dir)
        self.manifest = load_manifest(self.root, verify=verify)
        self.config = self.manifest.config
        self.precision = precision
        self.providers, self.reason = pick_providers(provider)
        self.threads = threads
        self._sessions: dict = {}
        for name in DEFAULT_COMPONENTS:
            self.manifest.entry(name, precision)  # fail now, not after minutes of work

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.providers[0] != PROVIDERS["cpu"] else "cpu")

    def session(self, component: str):  # -> onnxruntime.InferenceSession
        if component not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.threads:
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # errors only: fallback warnings are handled by pick_providers
            # from the path, not bytes: external data (.onnx.data) is resolved next to the file
            path = self.manifest.path(self.root, component, self.precision)
            sess = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=self.providers)
            if sess.get_providers()[0] != self.providers[0]:
                raise RuntimeError(
                    f"ONNX Runtime could not start {self.providers[0]} for {component} "
                    f"(running on {sess.get_providers()[0]}): check the CUDA/TensorRT installation or use --provider cpu"
                )
            self._sessions[component] = sess
        return self._sessions[component]

    @property
    def running_on(self) -> str:
        return self.providers[0].replace("ExecutionProvider", "")

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        spec = BY_NAME[component]
        entry = self.manifest.entry(component, self.precision)
        _check_inputs(component, entry, inputs)
        sess = self.session(component)
        if self.device.type == "cuda":
            return self._run_bound(sess, spec, inputs)
        feeds = {n: inputs[n].detach().cpu().numpy() for n in spec.input_names}
        outs = sess.run(list(spec.output_names), feeds)
        return {n: torch.from_numpy(np.ascontiguousarray(o)) for n, o in zip(spec.output_names, outs)}

    def _run_bound(self, sess, spec, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CUDA: bind torch device tensors directly, so nothing visits the host between components."""
        binding = sess.io_binding()
        for n in spec.input_names:
            t = inputs[n].contiguous().to("cuda")
            binding.bind_input(n, "cuda", 0, np.float32, list(t.shape), t.data_ptr())
        for n in spec.output_names:
            binding.bind_output(n, "cuda")
        sess.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return {n: torch.from_dlpack(o.to_dlpack()) for n, o in zip(spec.output_names, outs)}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

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
