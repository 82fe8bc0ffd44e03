"""Pick a backend, restore batches of faces, stream folders of images through it."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interlcm.config import PresetConfig
from interlcm.sampler import Backend, SamplerSettings, Trace, restore
from interlcm.schedule import inference_steps_for, make_noise, make_schedule

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


@dataclass(frozen=True)
class RestoreOptions:
    steps: int = 3  # network steps: 3 (paper) or 1; the LCM schedule has steps + 1 timesteps
    seed: int = 0
    colorfix: str = "wavelet"
    batch: int = 1
    guidance_scale: float = 8.0
    fused_step: bool = False  # SE + UNet as one `denoise_step` call per step (the backend must have it)


class TimedBackend:
    """Wraps a backend and adds up wall time per component (synchronising GPU work first)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        sync = getattr(self.inner, "synchronize", None)
        start = time.perf_counter()
        out = self.inner.run(component, **inputs)
        if sync is not None:
            sync()
        self.seconds[component] += time.perf_counter() - start
        self.calls[component] += 1
        return out


class Restorer:
    """The sampler bound to one backend, preset and set of options."""

    def __init__(self, backend: Backend, config: PresetConfig, options: RestoreOptions):
        self.backend = TimedBackend(backend)
        self.config = config
        self.options = options
        n = inference_steps_for(options.steps)
        self.settings = SamplerSettings(
            make_schedule(config.scheduler, n),
            guidance_scale=options.guidance_scale,
            guidance_dim=config.guidance_dim,
            colorfix=options.colorfix,
            fused_step=options.fused_step,
        )

    def noise(self, batch: int) -> torch.Tensor:
        cfg = self.config
        n = self.settings.schedule.num_inference_steps
        return make_noise(self.options.seed, n, batch, cfg.latent_channels, (cfg.latent_size, cfg.latent_size))

    def restore(self, lq: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> restored (B, 3, R, R), on the CPU."""
        device = getattr(self.backend.inner, "device", torch.device("cpu"))
        out = restore(self.backend, lq.to(device), self.noise(lq.shape[0]), self.settings, trace)
        return out.float().cpu()


@dataclass
class RestoreReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def restore_files(
    restorer: Restorer,
    paths: list[Path],
    out_dir: Path,
    progress: bool = True,
) -> RestoreReport:
    """Restore image files in batches; a bad image is reported and skipped, the rest go on."""
    from tqdm import tqdm

    from interlcm.imageio import ImageReadError, read_image, write_image

    report = RestoreReport()
    out_dir = Path(out_dir)
    inputs = {p.resolve() for p in paths}
    batch_size = restorer.options.batch
    pending: list[tuple[Path, torch.Tensor]] = []
    start = time.perf_counter()

    def flush(bar) -> None:  # noqa: ANN001 - tqdm
        if not pending:
            return
        images = restorer.restore(torch.stack([t for _, t in pending]))
        for (src, _), img in zip(pending, images):
            dst = out_dir / f"{src.stem}.png"
            if dst.resolve() in inputs:  # never write over an input
                report.failed.append((src, f"output {dst} would overwrite an input: choose another --out"))
                continue
            write_image(dst, img)
            report.written.append(dst)
        bar.update(len(pending))
        pending.clear()

    with tqdm(total=len(paths), unit="img", disable=not progress, desc="restoring") as bar:
        for path in paths:
            try:
                pending.append((path, read_image(path, restorer.config.resolution)))
            except ImageReadError as exc:
                report.failed.append((path, str(exc)))
                bar.update(1)
                continue
            if len(pending) == batch_size:
                flush(bar)
        flush(bar)
    report.seconds = time.perf_counter() - start
    return report


# --- choosing a backend ---------------------------------------------------------------------------


@dataclass
class OpenedBackend:
    backend: Backend
    config: PresetConfig
    description: str  # what runs, and why it was picked


def open_backend(
    kind: str = "auto",
    *,
    weights: Path | None = None,
    onnx: Path | None = None,
    engines: Path | None = None,
    preset: str | None = None,
    steps: int = 3,
    precision: str = "fp32",
    threads: int | None = None,
    batch: int | None = None,
) -> OpenedBackend:
    """Open the backend the user asked for, or the best one `auto` can run here, saying why."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}: choose one of {', '.join(BACKENDS)}")
    if kind == "auto":
        kind, why = _auto_kind(weights=weights, onnx=onnx, engines=engines, preset=preset)
    else:
        why = "requested"
    if kind == "tensorrt":
        if engines is None:
            raise ValueError("the tensorrt backend needs --engines DIR (build them with `interlcm-trt build`)")
        from interlcm.engines.trt import TrtBackend

        backend = TrtBackend(engines, batch=batch)  # a batch over the profile's max fails here, in one line
        backend.__enter__()
        return OpenedBackend(backend, backend.config, f"tensorrt engines from {engines} ({why})")
    if kind == "onnxruntime":
        if onnx is None:
            raise ValueError("the onnxruntime backend needs --onnx DIR (make it with `interlcm-export`)")
        from interlcm.engines.ort import OrtBackend

        ort_backend = OrtBackend(onnx, precision=precision, threads=threads)
        desc = f"onnxruntime {precision} on {ort_backend.running_on} from {onnx} ({why}; {ort_backend.reason})"
        return OpenedBackend(ort_backend, ort_backend.config, desc)
    return _open_torch(weights=weights, preset=preset, steps=steps, why=why, threads=threads)


def _auto_kind(*, weights, onnx, engines, preset) -> tuple[str, str]:  # noqa: ANN001
    from interlcm.engines.ort import cuda_device_count

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


def _open_torch(*, weights, preset, steps, why, threads) -> OpenedBackend:  # noqa: ANN001
    from interlcm.config import get_preset
    from interlcm.pipeline import TorchBackend, build_random
    from interlcm.weights import load_models, variant_for_steps

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if weights is not None:
        models = load_models(weights, variant_for_steps(steps))
    else:
        models = build_random(get_preset(preset or "tiny"), seed=0)
    models.to(device)
    desc = f"torch fp32 on {device}, {models.config.name} preset, weights: {models.origin} ({why})"
    return OpenedBackend(TorchBackend(models, device), models.config, desc)


def reference_models(recorded: str, config: PresetConfig, weights: Path | None = None, steps: int = 3):
    """The torch models an export or engine folder was made from (-> InterLCMModels).

    `recorded` is the weights identity the folder records (export manifest, engine index):
    "random, seed N" rebuilds those random weights for `config`; anything else needs the
    weights folder, whose identity must then match.
    """
    import re

    from interlcm.pipeline import build_random
    from interlcm.weights import load_models, variant_for_steps, weights_identity

    if weights is not None:
        variant = variant_for_steps(steps)
        if not recorded.startswith("random") and weights_identity(weights, variant) != recorded:
            raise ValueError(f"{weights} ({variant}) is not the weights the folder was made from "
                             f"(it records {recorded!r}): pass those with --weights")
        return load_models(weights, variant, config.resolution).eval()
    match = re.fullmatch(r"random, seed (\d+)", recorded or "")
    if not match:
        raise ValueError(f"the folder was made from weights {recorded!r}: pass them with --weights DIR")
    return build_random(config, int(match.group(1)))
