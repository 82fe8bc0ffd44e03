"""Opening an ONNX file with ONNX Runtime: which execution providers, and the session itself.

Export validation runs the files it writes through this, and the ONNX Runtime backend
(interlcm.engines.ort) opens every session here, so both see the same graph optimisations,
threads and provider checks.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class OrtError(RuntimeError):
    """ONNX Runtime refused a file or failed a run; one sentence naming what and the fix."""


def _ort_exceptions() -> tuple[type[BaseException], ...]:
    """ONNX Runtime's own exception types (Fail, RuntimeException, InvalidGraph, ...): plain Exceptions, not RuntimeError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


@contextmanager
def ort_errors(what: str, fix: str) -> Iterator[None]:
    """ONNX Runtime's exceptions inside the block (its own types, and the RuntimeError a failed run raises)
    become one OrtError: "{what}: {ONNX Runtime's reason}; {fix}"."""
    try:
        yield
    except (*_ort_exceptions(), RuntimeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        reason = reason.rsplit("[ONNXRuntimeError] : ", 1)[-1]  # "2 : INVALID_ARGUMENT : the reason"
        raise OrtError(f"{what}: {reason}; {fix}") from None


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
    import onnxruntime as ort  # an extra (cpu or gpu): torch-only installs never get here

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
        if not torch.cuda.is_available():  # the runtime binds torch tensors by device address
            raise RuntimeError(f"the {requested} provider binds torch tensors on the GPU, but torch {torch.__version__} "
                               "has no CUDA: install a CUDA build of torch, or use --provider cpu")
        return [PROVIDERS[p] for p in chain], f"{requested} provider requested, {why}"
    if devices and PROVIDERS["cuda"] in available:
        if not torch.cuda.is_available():
            return [PROVIDERS["cpu"]], f"{why} and onnxruntime-gpu, but torch {torch.__version__} has no CUDA, so the CPU provider"
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
    with ort_errors(f"ONNX Runtime cannot open {path}", "re-export it (interlcm-export --force)"):
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
