"""The TensorRT module, imported on first use, and what building (trt_build.py) and running (trt.py) share.

`trt` is the one module-level name holding TensorRT; `require_trt()` imports TensorRT into it
(`install` puts the stand-in of engines/trt_standin.py there instead). The other TensorRT
files call through `INSTALLED`, which forwards to whatever `trt` holds now:

    if TYPE_CHECKING:
        import tensorrt as trt                                   # mypy sees the real stubs
    else:
        from interlcm.engines.trt_common import INSTALLED as trt

(`python -m interlcm.engines.trt_typecheck` checks every call). One `trt.Logger` serves every
Builder and Runtime of the process (`logger()`), as TensorRT expects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = None  # imported by require_trt() on first use; engines/trt_standin.py installs its stand-in here

Shape = tuple[int, ...]
PRECISION = "fp16"  # engines are built from the manifest's fp16 entries, strongly typed
_INSTALL_HINT = "pip install tensorrt on a machine with an NVIDIA GPU and CUDA"
_LOGGER: trt.ILogger | None = None
# Where engines run and the GPU they are built for: CUDA device 0 and the machine's GPU, or what an
# installed stand-in says (engines/trt_standin.py runs engines on the CPU)
_ENGINE_DEVICE = torch.device("cuda", 0)
_STAND_IN_GPU: str | None = None


class EngineError(RuntimeError):
    """An engine cannot be built, loaded or run; the message says why and what to do."""


def tensorrt_problem() -> str | None:
    """Import TensorRT into the module-level name `trt`; None if it worked, else a short reason."""
    if globals()["trt"] is not None:
        return None
    try:
        module = importlib.import_module("tensorrt")
    except Exception as exc:
        return f"tensorrt does not import ({type(exc).__name__}: {exc})"
    if not hasattr(module, "Builder"):
        # `tensorrt-stubs` installs a bare tensorrt/ folder of .pyi files: Python imports it as an empty namespace
        return "tensorrt is not installed (only its type stubs are)"
    globals()["trt"] = module
    return None


def require_trt() -> None:
    problem = tensorrt_problem()
    if problem is not None:
        raise EngineError(f"{problem}: {_INSTALL_HINT}")


class _Installed:
    """Attribute access forwarded to the module in `trt` (TensorRT or its stand-in) at the time of the call."""

    def __getattr__(self, name: str) -> object:
        module = globals()["trt"]
        if module is None:
            require_trt()
            module = globals()["trt"]
        return getattr(module, name)


INSTALLED = _Installed()


def install(module: object | None, device: torch.device | None = None, gpu: str | None = None) -> tuple:
    """Put `module` in `trt`: a TensorRT stand-in that runs engines on `device` as if on `gpu`, or None
    to import the real TensorRT again. Returns what was installed before (for `install(*previous)`)."""
    global _LOGGER, _ENGINE_DEVICE, _STAND_IN_GPU
    previous = (globals()["trt"], _ENGINE_DEVICE, _STAND_IN_GPU)
    globals()["trt"], _LOGGER = module, None
    _ENGINE_DEVICE = device if device is not None else torch.device("cuda", 0)
    _STAND_IN_GPU = gpu
    return previous


def engine_device() -> torch.device:
    """The device engines run on: CUDA device 0 (the CPU only under a stand-in)."""
    return _ENGINE_DEVICE


def logger() -> trt.ILogger:
    """The process's one TensorRT logger (warnings and errors), created on first use."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _compute_capability(device: torch.device | None = None) -> str:
    """The GPU's architecture tag, e.g. 'sm_89'; part of every engine's cache key."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def gpu_identity(device: torch.device | None = None) -> str:
    """Name and architecture of the GPU, e.g. 'NVIDIA H100 80GB HBM3 (sm_90)'; part of every cache key."""
    if _STAND_IN_GPU is not None:
        return _STAND_IN_GPU
    return f"{torch.cuda.get_device_name(device)} ({_compute_capability(device)})"


def check_cuda(device: int = 0) -> tuple[bool, str]:
    """(usable, reason): a CUDA device that really allocates, and a TensorRT that really imports.

    onnxruntime-gpu and pip's tensorrt stubs both "install" on machines without a GPU, so
    this checks by doing: an allocation on the device and a TensorRT runtime.
    """
    reasons = []
    gpu = ""
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__} built for CUDA {torch.version.cuda}" if torch.version.cuda else \
            f"torch {torch.__version__} is a CPU-only build"
        reasons.append(f"no CUDA device ({built})")
    else:
        try:
            torch.empty(1, device=f"cuda:{device}").add_(1)
            torch.cuda.synchronize(device)
            gpu = gpu_identity(torch.device("cuda", device))
        except Exception as exc:
            reasons.append(f"CUDA device {device} cannot allocate ({type(exc).__name__}: {exc})")
    problem = tensorrt_problem()
    if problem is not None:
        reasons.append(problem)
    else:
        try:
            if trt.Runtime(logger()) is None:
                reasons.append("tensorrt cannot create a runtime")
        except Exception as exc:
            reasons.append(f"tensorrt cannot create a runtime ({type(exc).__name__}: {exc})")
    if reasons:
        return False, "; ".join(reasons)
    return True, f"CUDA device {gpu}, TensorRT {trt.__version__}"


def dims(value: trt.Dims) -> Shape:
    """A TensorRT Dims as a tuple (the stubs give Dims indexing and len, not iteration)."""
    return tuple(int(value[i]) for i in range(len(value)))


def torch_dtype(dtype: trt.DataType) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    try:
        return table[dtype]
    except KeyError:
        raise EngineError(f"engine tensor dtype {dtype} has no torch equivalent") from None
