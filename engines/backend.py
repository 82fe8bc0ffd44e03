"""The one way to open a backend (the interface they all declare: interlcm.backend.Backend).

`open_backend` is what restore, `check`, the benchmark, the export cache and
the Ray actors call: a context manager that opens torch, ONNX Runtime or
TensorRT (or picks the best one `auto` can run here, saying why), yields an
`OpenedBackend` that knows the preset, the weights it runs and the encoder
variant, and closes everything it opened on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from interlcm.backend import Backend
from interlcm.choices import BACKENDS, DEFAULT_VARIANT, get_variant
from interlcm.config import PresetConfig, get_preset
from interlcm.engines.ort import OrtBackend
from interlcm.engines.trt import TrtBackend
from interlcm.export.session import cuda_device_count
from interlcm.identity import WeightsIdentity
from interlcm.models.container import InterLCMModels, build_random
from interlcm.torch_backend import TorchBackend
from interlcm.weights import check_identity, load_models


@dataclass
class OpenedBackend:
    backend: Backend
    description: str  # what runs, on what, and why it was picked
    weights: str  # where the weights came from: "random, seed N" or the folder and its identity
    variant: str  # the encoder pair it runs (interlcm.choices.VARIANTS)
    manifest: object | None = None  # the export manifest (ONNX Runtime) the backend was opened from
    identity: WeightsIdentity | None = None  # typed `weights`; None for a weights folder run by torch (not hashed)

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
def open_backend(
    kind: str = "auto",
    *,
    weights: Path | None = None,
    onnx: Path | None = None,
    engines: Path | None = None,
    preset: str | None = None,
    variant: str = DEFAULT_VARIANT,
    precision: str = "fp32",
    threads: int | None = None,
    batch: int = 1,
    components: Sequence[str] | None = None,
) -> Iterator[OpenedBackend]:
    """Open the backend the user asked for, or the best one `auto` can run here, saying why.

    `batch` is checked against the backend's limit now, not after minutes of work.
    `components` limits the engines loaded (TensorRT) and opens those sessions now
    (ONNX Runtime), so a first run measures running, not loading.
    """
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}: choose one of {', '.join(BACKENDS)}")
    get_variant(variant)
    if kind == "auto":
        kind, why = _auto_kind(weights=weights, onnx=onnx, engines=engines)
    else:
        why = "requested"
    opened = _open(kind, why, weights=weights, onnx=onnx, engines=engines, preset=preset, variant=variant,
                   precision=precision, threads=threads, batch=batch, components=components)
    with opened.backend:  # loads what it must (TensorRT: checks its engines), closes everything on exit
        limit = opened.max_batch
        if limit is not None and batch > limit:
            raise ValueError(f"--batch {batch} is above the {opened.backend.name} backend's limit of {limit}: "
                             f"use --batch {limit} or rebuild the engines with a larger batch profile")
        yield opened


def _open(kind: str, why: str, *, weights, onnx, engines, preset, variant, precision, threads, batch,  # noqa: ANN001
          components) -> OpenedBackend:
    if kind == "tensorrt":
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
        if onnx is None:
            raise ValueError("the onnxruntime backend needs --onnx DIR (make it with `interlcm-export`)")
        ort_backend = OrtBackend(onnx, precision=precision, threads=threads)
        for name in components or ():
            ort_backend.session(name)
        desc = f"onnxruntime {precision} on {ort_backend.running_on} from {onnx} ({why}; {ort_backend.reason})"
        manifest = ort_backend.manifest
        # --onnx A with --weights B, or an export of one variant run as another: refused, not ignored
        check_identity(manifest.identity, weights=weights, variant=variant, what=f"the ONNX folder {onnx}")
        return OpenedBackend(ort_backend, desc, weights=manifest.weights, variant=variant, manifest=manifest,
                             identity=manifest.identity)
    return _open_torch(weights=weights, preset=preset, variant=variant, why=why, threads=threads, batch=batch)


def _auto_kind(*, weights: Path | None, onnx: Path | None, engines: Path | None) -> tuple[str, str]:
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


def _open_torch(*, weights: Path | None, preset: str | None, variant: str, why: str, threads: int | None,
                batch: int) -> OpenedBackend:
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if weights is not None:
        models = load_models(weights, variant)
    else:
        models = build_random(get_preset(preset or "tiny"), seed=0)
    models.to(device)
    desc = f"torch fp32 on {device}, {models.config.name} preset, weights: {models.origin} ({why})"
    # one module call runs at most --batch items (ParseNet, the detector, Real-ESRGAN): memory as the user sized it
    return OpenedBackend(TorchBackend(models, device, max_batch=batch), desc, weights=models.origin, variant=variant,
                         identity=models.identity)


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
