"""The sampler bound to one backend and one set of options: aligned faces in, restored faces out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interlcm.backend import Backend, TimedBackend
from interlcm.choices import COLORFIXES, GUIDANCE_SCALE
from interlcm.config import PresetConfig
from interlcm.engines.cuda_graph import GraphedStepChain
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
    cuda_graph: bool = False  # replay the step chain as a CUDA graph per batch size (engines/cuda_graph.py)


class Restorer:
    """The sampler bound to one backend, preset and set of options.

    Which step form to run (`fused_step`, `cuda_graph`) is decided when the backend opens
    (engines/backend.py `FastPath.apply`); here it is only carried out.
    """

    def __init__(self, backend: Backend, options: RestoreOptions, timing: bool = False,
                 graphs: GraphedStepChain | None = None):
        """`graphs`: another restorer's `chain` to reuse (its captured graphs) when the step chain is the same:
        a server builds a restorer per request's options, but captures each batch size once."""
        if options.cuda_graph and timing:
            raise ValueError("--timing synchronises after every call, which a CUDA graph cannot contain: "
                             "pass --no-cuda-graph with --timing")
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
        # the step chain as one graph replay, captured per batch size on the backend's stream (a new one for torch)
        self.chain: GraphedStepChain | None = None
        if options.cuda_graph:
            same = graphs is not None and graphs.backend is backend and graphs.same_chain(self.settings)
            self.chain = graphs if same else GraphedStepChain(backend, self.settings, backend.stream)

    def noise(self, batch: int) -> torch.Tensor:
        return noise_for(self.config, self.settings.schedule, self.options.seed, batch)

    @property
    def timings(self) -> TimedBackend | None:
        return self.backend if isinstance(self.backend, TimedBackend) else None

    def restore(self, lq: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> restored (B, 3, R, R), on the CPU. A `trace` runs without the graph."""
        device = self.backend.device
        lq = lq.to(device)
        noise = self.noise(lq.shape[0]).to(device)  # on the device once per batch, not copied at every step
        chain = self.chain if trace is None else None
        out = restore(self.backend, lq, noise, self.settings, trace, chain=chain)
        return out.float().cpu()
