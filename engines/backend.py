"""The one way to open a backend (the interface they all declare: interlcm.backend.Backend).

`open_backend(BackendOptions(...))` is what restore, `check`, the benchmark, the Ray
actors and the Serve replicas call: a context manager that opens torch, ONNX Runtime or
TensorRT (or picks the best one `auto` can run here, saying why), yields an
`OpenedBackend` that knows the preset, the weights it runs, the encoder variant and the
step form its restorers run (`FastPath`: the fused SE+UNet step and the CUDA-graph step
chain, on by default on GPUs), and closes everything it opened on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from interlcm.backend import Backend
from interlcm.choices import (
    BACKEND_PRECISIONS,
    BACKENDS,
    DEFAULT_VARIANT,
    PRECISIONS,
    check_precision,
    get_variant,
)
from interlcm.config import PresetConfig, get_preset
from interlcm.engines.ort import OrtBackend
from interlcm.engines.restorer import RestoreOptions
from interlcm.engines.trt import TrtBackend
from interlcm.export.session import cuda_device_count
from interlcm.identity import WeightsIdentity
from interlcm.models.container import InterLCMModels, build_random
from interlcm.sampler import FUSED_STEP
from interlcm.torch_backend import TorchBackend, check_torch_precision
from interlcm.weights import check_identity, load_models


@dataclass(frozen=True)
class BackendOptions:
    """Which backend runs and how: what `restore`, the Ray job's actors and the Serve replicas all open.

    The CLI's backend options build one (engines/cli.py `backend_options`); the Ray job and
    Serve carry the same object to their actors and replicas. `fused_step` and `cuda_graph`
    are requests: None lets `open_backend` pick (on for GPUs where the backend can), False
    turns them off, True insists (refused in one sentence where they cannot run).
    """

    kind: str = "auto"  # interlcm.choices.BACKENDS
    weights: Path | None = None  # weights folder (interlcm-weights); torch runs it, exports are checked against it
    onnx: Path | None = None  # export folder (interlcm-export) for onnxruntime
    engines: Path | None = None  # engine folder (interlcm-trt build) for tensorrt
    preset: str | None = None  # torch without weights: seeded random weights of this size (default tiny)
    variant: str = DEFAULT_VARIANT  # the encoder pair (interlcm.choices.VARIANTS)
    precision: str | None = None  # None: the backend's own (torch and onnxruntime fp32, tensorrt fp16)
    threads: int | None = None  # CPU threads (torch intra-op, ONNX Runtime intra-op); None: all cores
    batch: int = 1  # most faces per call: checked against the backend's limit when it opens
    fused_step: bool | None = None  # SE + UNet as one `denoise_step` call per step
    cuda_graph: bool | None = None  # the step chain replayed as one CUDA graph per batch size

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise ValueError(f"unknown backend {self.kind!r}: choose one of {', '.join(BACKENDS)}")
        get_variant(self.variant)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class FastPath:
    """What the step chain runs as, decided when the backend opens (see `fast_path`)."""

    fused_step: bool  # one `denoise_step` call per step instead of `spatial_encoder` then `unet`
    cuda_graph: bool  # the whole step chain replayed as a CUDA graph (engines/cuda_graph.py)
    why: str = ""  # why a fast path is off, e.g. "on the CPU"; "" when both run

    def describe(self) -> str:
        """The backend line's second half: "fused SE+UNet step, CUDA graph", or what is off and why."""
        step = "fused SE+UNet step" if self.fused_step else "separate SE and UNet"
        graph = ", CUDA graph" if self.cuda_graph else ""
        return f"{step}{graph}" + (f" ({self.why})" if self.why else "")

    def apply(self, options: RestoreOptions) -> RestoreOptions:
        """`options` with this step form: what every Restorer on the opened backend runs."""
        return replace(options, fused_step=self.fused_step, cuda_graph=self.cuda_graph)


GRAPH_KINDS = ("torch", "tensorrt")  # backends whose `run` can be captured (ONNX Runtime synchronises inside)
GRAPH_NEEDS_CUDA = "--cuda-graph needs a CUDA device and this backend runs on the CPU: leave --cuda-graph out"


def fast_path(backend: Backend, fused_step: bool | None = None, cuda_graph: bool | None = None) -> FastPath:
    """Resolve the fused-step and CUDA-graph requests for an opened backend.

    None: on where they run (a CUDA device and, for the fused step, a `denoise_step` in the
    backend; a graph, a backend whose calls capture); a CPU keeps the two-call chain. True
    where they cannot run: a ValueError of one sentence.
    """
    cuda = backend.device.type == "cuda"
    has_fused = backend.has(FUSED_STEP)
    if fused_step and not has_fused:
        raise ValueError(f"--fused-step needs the {FUSED_STEP} component, which {backend.name} does not have: "
                         f"export it (interlcm-export --components ...,{FUSED_STEP}) or leave --fused-step out")
    if cuda_graph and not cuda:
        raise ValueError(GRAPH_NEEDS_CUDA)
    if cuda_graph and backend.name not in GRAPH_KINDS:
        raise ValueError(f"--cuda-graph is not available on {backend.name} (it synchronises inside every call): "
                         "use --engines, --backend torch, or leave --cuda-graph out")
    why = []
    if fused_step is None:
        fused_step = cuda and has_fused
        if not cuda:
            why.append("on the CPU")
        elif not has_fused:
            why.append(f"no {FUSED_STEP} in the export")
    elif not fused_step:
        why.append("--no-fused-step")
    if cuda_graph is None:
        cuda_graph = cuda and backend.name in GRAPH_KINDS
        if cuda and not cuda_graph:
            why.append(f"no CUDA graph: {backend.name} synchronises inside every call")
    elif not cuda_graph and cuda:
        why.append("--no-cuda-graph")
    return FastPath(bool(fused_step), bool(cuda_graph), "; ".join(why))


@dataclass
class OpenedBackend:
    backend: Backend
    description: str  # what runs, on what, and why it was picked
    weights: str  # where the weights came from: "random, seed N" or the folder and its identity
    variant: str  # the encoder pair it runs (interlcm.choices.VARIANTS)
    manifest: object | None = None  # the export manifest (ONNX Runtime) the backend was opened from
    identity: WeightsIdentity | None = None  # typed `weights`; None for a weights folder run by torch (not hashed)
    fast: FastPath = FastPath(False, False)  # the step form restorers on this backend run (`fast_path`)

    @property
    def config(self) -> PresetConfig:
        return self.backend.config

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def max_batch(self) -> int | None:
        return self.backend.max_batch

    @property
    def random_weights(self) -> bool:
        return self.identity is not None and self.identity.kind == "random"


@contextmanager
def open_backend(options: BackendOptions, components: Sequence[str] | None = None) -> Iterator[OpenedBackend]:
    """Open the backend `options` ask for, or the best one `auto` can run here, saying why.

    The batch, the precision and the fast-path requests are checked now, not after minutes
    of work. `components` limits the engines loaded (TensorRT) and opens those sessions now
    (ONNX Runtime), so a first run measures running, not loading.
    """
    if options.cuda_graph and not torch.cuda.is_available():  # before minutes of loading
        raise ValueError(GRAPH_NEEDS_CUDA)
    kind, why = (options.kind, "requested") if options.kind != "auto" else _auto_kind(options)
    precision = check_precision(kind, options.precision or BACKEND_PRECISIONS[kind][0])
    opened = _open(kind, why, replace(options, precision=precision), components)
    with opened.backend:  # loads what it must (TensorRT: checks its engines), closes everything on exit
        limit = opened.max_batch
        if limit is not None and options.batch > limit:
            raise ValueError(f"--batch {options.batch} is above the {opened.backend.name} backend's limit of {limit}: "
                             f"use --batch {limit} or rebuild the engines with a larger batch profile")
        opened.fast = fast_path(opened.backend, options.fused_step, options.cuda_graph)
        yield opened


def _open(kind: str, why: str, options: BackendOptions, components: Sequence[str] | None) -> OpenedBackend:
    weights, variant = options.weights, options.variant
    if kind == "tensorrt":
        engines = options.engines
        if engines is None:
            raise ValueError("the tensorrt backend needs --engines DIR (build them with `interlcm-trt build`)")
        trt_backend = TrtBackend(engines, components=components)  # opened and closed by open_backend's `with`
        recorded = trt_backend._index.get("identity")  # the export manifest's identity, when the index records it
        identity = WeightsIdentity.from_dict(recorded) if recorded else None
        if identity is not None:
            check_identity(identity, weights=weights, variant=variant, what=f"the engine folder {engines}")
        return OpenedBackend(trt_backend, f"tensorrt engines from {engines} ({why})",
                             weights=trt_backend.weights, variant=variant, identity=identity)
    if kind == "onnxruntime":
        onnx, precision = options.onnx, options.precision
        if onnx is None:
            raise ValueError("the onnxruntime backend needs --onnx DIR (make it with `interlcm-export`)")
        ort_backend = OrtBackend(onnx, precision=precision, threads=options.threads)
        for name in components or ():
            ort_backend.session(name)
        desc = f"onnxruntime {precision} on {ort_backend.running_on} from {onnx} ({why}; {ort_backend.reason})"
        manifest = ort_backend.manifest
        # --onnx A with --weights B, or an export of one variant run as another: refused, not ignored
        check_identity(manifest.identity, weights=weights, variant=variant, what=f"the ONNX folder {onnx}")
        return OpenedBackend(ort_backend, desc, weights=manifest.weights, variant=variant, manifest=manifest,
                             identity=manifest.identity)
    return _open_torch(options, why)


def _auto_kind(options: BackendOptions) -> tuple[str, str]:
    weights, onnx, engines = options.weights, options.onnx, options.engines
    devices, cuda_why = cuda_device_count()
    if engines is not None:
        if devices:
            return "tensorrt", f"engines given and {cuda_why}"
        if onnx is not None:
            return "onnxruntime", f"engines need a GPU but {cuda_why}"
        raise ValueError(f"--engines given but {cuda_why}: TensorRT engines need an NVIDIA GPU; pass --onnx DIR instead")
    if onnx is not None:
        return "onnxruntime", "ONNX folder given"
    return "torch", "weights given" if weights is not None else "no weights, ONNX or engines given"


def _open_torch(options: BackendOptions, why: str) -> OpenedBackend:
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_torch_precision(options.precision, device)  # before minutes of loading
    if options.weights is not None:
        models = load_models(options.weights, options.variant)
    else:
        models = build_random(get_preset(options.preset or "tiny"), seed=0)
    # one module call runs at most --batch items (ParseNet, the detector, Real-ESRGAN): memory as the user sized it
    backend = TorchBackend(models.to(device), device, precision=options.precision, max_batch=options.batch)
    desc = (f"torch {backend.describe()} on {device.type}, {models.config.name} preset, weights: {models.origin} "
            f"({why})")
    return OpenedBackend(backend, desc, weights=models.origin, variant=options.variant, identity=models.identity)


def reference_models(opened: OpenedBackend, weights: Path | None = None) -> InterLCMModels:
    """The torch models an export/engine folder was made from: its weights, or its random preset."""
    identity = opened.identity
    if identity is None:
        raise ValueError(f"{opened.description} does not record its weights: re-export it with --force")
    check_identity(identity, weights=weights, what="the export")  # `check --onnx A --weights B`: refused
    if weights is not None:
        return load_models(weights, identity.variant, opened.config.resolution).eval()
    if identity.kind != "random":
        raise ValueError(f"the export was made from {identity.describe()}: pass those weights with --weights DIR")
    return build_random(opened.config, identity.seed)
