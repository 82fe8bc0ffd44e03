"""InterLCM's restoration loop (Algorithm 1 of the paper, as released), written once.

Every backend (torch, ONNX Runtime, TensorRT) runs this same function; it talks
to the networks only through `run(component, **tensors)` (`ComponentRunner`; the
full backend interface is `interlcm.engines.backend.Backend`), with the
component and tensor names of `interlcm.components`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from interlcm.choices import COLORFIXES, GUIDANCE_SCALE, check_colorfix
from interlcm.schedule import Schedule, guidance_embedding


class ComponentRunner(Protocol):
    """Runs one named component on named tensors and returns its named outputs."""

    def run(self, component: str, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class SamplerSettings:
    schedule: Schedule
    guidance_scale: float = GUIDANCE_SCALE  # the UNet sees w = guidance_scale - 1
    guidance_dim: int = 256  # the UNet's time_cond_proj_dim
    colorfix: str = COLORFIXES[0]  # one of interlcm.choices.COLORFIXES; wavelet is the paper's

    def __post_init__(self) -> None:
        check_colorfix(self.colorfix)  # fail before the chain runs, not after


class Trace(dict):
    """Optional record of every intermediate, keyed by stage (for parity tests and `check`)."""

    def add(self, key: str, value: torch.Tensor) -> None:
        self[key] = value.detach().clone()


def restore(
    backend: ComponentRunner,
    lq: torch.Tensor,  # (B, 3, H, W) aligned faces in [-1, 1]
    noise: torch.Tensor,  # (N - 1, B, C, h, w) from schedule.make_noise
    settings: SamplerSettings,
    trace: Trace | None = None,
) -> torch.Tensor:
    """Restore a batch of LQ faces; returns (B, 3, H, W) images in about [-1, 1]."""
    steps = settings.schedule.steps
    if noise.shape[0] != len(steps) or noise.shape[1] != lq.shape[0]:
        raise ValueError(
            f"noise has shape {tuple(noise.shape)} but {len(steps)} steps and batch {lq.shape[0]} need "
            f"({len(steps)}, {lq.shape[0]}, ...): draw it with make_noise for this schedule and batch"
        )
    record = trace.add if trace is not None else (lambda key, value: None)
    batch = lq.shape[0]

    # 1. Image-only work, once per image: visual context c_v, the SE's view of the LQ
    #    image, and the LQ latent, which stands in for the first LCM step's output.
    tokens = backend.run("clip", image=lq)["tokens"]
    context = backend.run("visual_encoder", tokens=tokens)["context"]
    cond = backend.run("se_condition", image=lq)["cond"]
    z0 = backend.run("vae_encoder", image=lq)["latent"]
    guidance = guidance_embedding(settings.guidance_scale, settings.guidance_dim, batch).to(z0)
    for key, value in (("tokens", tokens), ("context", context), ("cond", cond), ("z0_lq", z0)):
        record(key, value)

    # 2. The remaining LCM steps: noise the current estimate to t, predict eps with
    #    the SE-conditioned UNet, then apply the LCM boundary condition.
    for k, step in enumerate(steps):
        z_t = step.sqrt_alpha * z0 + step.sqrt_one_minus_alpha * noise[k].to(z0)
        t = torch.full((batch,), float(step.timestep), device=z0.device)
        residuals = backend.run("spatial_encoder", sample=z_t, timestep=t, context=context, cond=cond)
        eps = backend.run("unet", sample=z_t, timestep=t, context=context, guidance=guidance, **residuals)["eps"]
        x0 = (z_t - step.sqrt_one_minus_alpha * eps) / step.sqrt_alpha
        z0 = step.c_out * x0 + step.c_skip * z_t
        record(f"step{k + 1}.residuals_mid", residuals["res_12"])
        record(f"step{k + 1}.eps", eps)
        record(f"step{k + 1}.z0", z0)

    # 3. Decode and pull the colours back towards the input.
    image = backend.run("vae_decoder", latent=z0)["image"]
    record("decoded", image)
    if settings.colorfix != "none":
        image = backend.run(f"colorfix_{settings.colorfix}", decoded=image, reference=lq)["image"]
    record("image", image)
    return image
