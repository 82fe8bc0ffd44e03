"""Restore batches of faces on any backend, and stream folders of images through it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from interlcm.choices import COLORFIXES, GUIDANCE_SCALE
from interlcm.config import PresetConfig
from interlcm.engines.backend import Backend, TimedBackend
from interlcm.imageio import ImageReadError, read_image, write_image
from interlcm.sampler import SamplerSettings, Trace, restore
from interlcm.schedule import inference_steps_for, make_schedule, noise_for


@dataclass(frozen=True)
class RestoreOptions:
    steps: int = 3  # network steps: 3 (paper) or 1; the LCM schedule has steps + 1 timesteps
    seed: int = 0
    colorfix: str = COLORFIXES[0]
    batch: int = 1
    guidance_scale: float = GUIDANCE_SCALE
    fused_step: bool = False  # SE + UNet as one `denoise_step` call per step (the backend must have it)


class Restorer:
    """The sampler bound to one backend, preset and set of options."""

    def __init__(self, backend: Backend, options: RestoreOptions, timing: bool = False):
        self.backend: Backend = TimedBackend(backend) if timing else backend
        self.config: PresetConfig = backend.config
        self.options = options
        self.settings = SamplerSettings(
            make_schedule(self.config.scheduler, inference_steps_for(options.steps)),
            guidance_scale=options.guidance_scale,
            guidance_dim=self.config.guidance_dim,
            colorfix=options.colorfix,
            fused_step=options.fused_step,
        )

    def noise(self, batch: int) -> torch.Tensor:
        return noise_for(self.config, self.settings.schedule, self.options.seed, batch)

    @property
    def timings(self) -> TimedBackend | None:
        return self.backend if isinstance(self.backend, TimedBackend) else None

    def restore(self, lq: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> restored (B, 3, R, R), on the CPU."""
        lq = lq.to(self.backend.device)
        out = restore(self.backend, lq, self.noise(lq.shape[0]), self.settings, trace)
        return out.float().cpu()


@dataclass
class RestoreReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "x.gif: has 3 frames ...; only the first was used"
    seconds: float = 0.0


def restore_files(
    restorer: Restorer,
    paths: list[Path],
    out_dir: Path,
    progress: bool = True,
) -> RestoreReport:
    """Restore image files in batches; a bad image is reported and skipped, the rest go on."""
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
                pending.append((path, read_image(path, restorer.config.resolution, notes=report.notes)))
            except ImageReadError as exc:
                report.failed.append((path, str(exc)))
                bar.update(1)
                continue
            if len(pending) == batch_size:
                flush(bar)
        flush(bar)
    report.seconds = time.perf_counter() - start
    return report
