"""InterLCM's restoration loop (Algorithm 1 of the paper, as released), written once.

Every backend (torch, ONNX Runtime, TensorRT) runs this same function; it talks
to the networks only through `run(component, **tensors)` (`ComponentRunner`; the
full backend interface is `interlcm.backend.Backend`), with the
component and tensor names of `interlcm.components`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from interlcm.backend import ComponentRunner
from interlcm.choices import COLORFIXES, GUIDANCE_SCALE, check_colorfix
from interlcm.schedule import Schedule, guidance_embedding

FUSED_STEP = "denoise_step"  # the component of the fused SE + UNet step (interlcm.components)


@dataclass(frozen=True)
class SamplerSettings:
    schedule: Schedule
    guidance_scale: float = GUIDANCE_SCALE  # the UNet sees w = guidance_scale - 1
    guidance_dim: int = 256  # the UNet's time_cond_proj_dim
    colorfix: str = COLORFIXES[0]  # one of interlcm.choices.COLORFIXES; wavelet is the paper's
    # one `denoise_step` call (SE + UNet in one graph) per step instead of `spatial_encoder` then `unet`:
    # no residual tensors cross between engines; the backend must have that component
    fused_step: bool = False

    def __post_init__(self) -> None:
        check_colorfix(self.colorfix)  # fail before the chain runs, not after


# (z0, context, cond, guidance, noise) -> z0 after every step: stage 2 as one call
StepChain = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Trace(dict):
    """Optional record of every intermediate, keyed by stage (for parity tests and `check`).

    `components[stage]` names the component whose output the stage is, so a comparison
    can judge each stage by that component's tolerance (engines/parity.py).
    """

    def __init__(self) -> None:
        super().__init__()
        self.components: dict[str, str] = {}

    def add(self, key: str, value: torch.Tensor, component: str) -> None:
        self[key] = value.detach().clone()
        self.components[key] = component


def restore(
    backend: ComponentRunner,
    lq: torch.Tensor,  # (B, 3, H, W) aligned faces in [-1, 1]
    noise: torch.Tensor,  # (N - 1, B, C, h, w) from schedule.make_noise
    settings: SamplerSettings,
    trace: Trace | None = None,
    chain: StepChain | None = None,
) -> torch.Tensor:
    """Restore a batch of LQ faces; returns (B, 3, H, W) images in about [-1, 1].

    `chain` replaces stage 2 (`denoise` over every step) by a callable with the same
    result, e.g. a CUDA-graph replay of it (engines/cuda_graph.py `GraphedStepChain`).
    """
    steps = settings.schedule.steps
    if noise.shape[0] != len(steps) or noise.shape[1] != lq.shape[0]:
        raise ValueError(
            f"noise has shape {tuple(noise.shape)} but {len(steps)} steps and batch {lq.shape[0]} need "
            f"({len(steps)}, {lq.shape[0]}, ...): draw it with make_noise for this schedule and batch"
        )
    if chain is not None and trace is not None:
        raise ValueError("a replayed step chain records no intermediates: trace without chain")
    record = trace.add if trace is not None else (lambda key, value, component: None)
    batch = lq.shape[0]

    # 1. Image-only work, once per image: visual context c_v, the SE's view of the LQ
    #    image, and the LQ latent, which stands in for the first LCM step's output.
    tokens = backend.run("clip", image=lq)["tokens"]
    context = backend.run("visual_encoder", tokens=tokens)["context"]
    cond = backend.run("se_condition", image=lq)["cond"]
    z0 = backend.run("vae_encoder", image=lq)["latent"]
    guidance = guidance_embedding(settings.guidance_scale, settings.guidance_dim, batch).to(z0)
    for key, value, component in (
        ("tokens", tokens, "clip"),
        ("context", context, "visual_encoder"),
        ("cond", cond, "se_condition"),
        ("z0_lq", z0, "vae_encoder"),
    ):
        record(key, value, component)

    # 2. The remaining LCM steps (a CUDA-graph replay of them, when the caller passes one).
    if chain is not None:
        z0 = chain(z0, context, cond, guidance, noise)
    else:
        z0 = denoise(backend, z0, context, cond, guidance, noise, settings, record)

    # 3. Decode and pull the colours back towards the input.
    image = backend.run("vae_decoder", latent=z0)["image"]
    record("decoded", image, "vae_decoder")
    last = "vae_decoder"
    if settings.colorfix != "none":
        last = f"colorfix_{settings.colorfix}"
        image = backend.run(last, decoded=image, reference=lq)["image"]
    record("image", image, last)
    return image


def denoise(
    backend: ComponentRunner,
    z0: torch.Tensor,  # (B, C, h, w) the LQ latent: the first LCM step's output
    context: torch.Tensor,  # (B, 77, 768) visual context c_v
    cond: torch.Tensor,  # the SE's view of the LQ image
    guidance: torch.Tensor,  # (B, guidance_dim) embedding of w
    noise: torch.Tensor,  # (N - 1, B, C, h, w)
    settings: SamplerSettings,
    record: Callable[[str, torch.Tensor, str], None] = lambda key, value, component: None,
) -> torch.Tensor:
    """Stage 2: for each remaining step, noise the current estimate to t, predict eps with the
    SE-conditioned UNet, then apply the LCM boundary condition. Only torch arithmetic and
    `backend.run`, all on the caller's stream: capturable as one CUDA graph."""
    batch = z0.shape[0]
    for k, step in enumerate(settings.schedule.steps):
        z_t = step.sqrt_alpha * z0 + step.sqrt_one_minus_alpha * noise[k].to(z0)
        t = torch.full((batch,), float(step.timestep), device=z0.device)
        if settings.fused_step:
            eps_from = FUSED_STEP
            eps = backend.run(eps_from, sample=z_t, timestep=t, context=context, guidance=guidance, cond=cond)["eps"]
        else:
            residuals = backend.run("spatial_encoder", sample=z_t, timestep=t, context=context, cond=cond)
            eps = backend.run("unet", sample=z_t, timestep=t, context=context, guidance=guidance, **residuals)["eps"]
            eps_from = "unet"
            record(f"step{k + 1}.residuals_mid", residuals["res_12"], "spatial_encoder")
        x0 = (z_t - step.sqrt_one_minus_alpha * eps) / step.sqrt_alpha
        z0 = step.c_out * x0 + step.c_skip * z_t
        record(f"step{k + 1}.eps", eps, eps_from)
        record(f"step{k + 1}.z0", z0, eps_from)  # the LCM update is exact arithmetic on eps
    return z0
