"""The sampler bound to one backend and one set of options: aligned faces in, restored faces out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interlcm.backend import Backend, TimedBackend
from interlcm.choices import COLORFIXES, GUIDANCE_SCALE
from interlcm.config import PresetConfig
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
        noise = self.noise(lq.shape[0]).to(lq.device)  # once per batch: the steps read it where they run
        out = restore(self.backend, lq, noise, self.settings, trace)
        return out.float().cpu()
