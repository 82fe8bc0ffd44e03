"""The LCM schedule InterLCM samples with, computed on the host.

Everything here is a handful of floats per step, identical for every backend:
the timesteps, sqrt(alpha_bar), sqrt(1 - alpha_bar) and the LCM boundary
scalings c_skip / c_out. They are derived from the scheduler config exactly as
diffusers' `LCMScheduler` derives them (tests check the two agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from interlcm.config import PresetConfig

SIGMA_DATA = 0.5  # LCM's boundary-condition constant


@dataclass(frozen=True)
class Step:
    """One denoising step at timestep t (the LQ latent is noised to t, then denoised)."""

    timestep: int
    sqrt_alpha: float  # sqrt(alpha_bar_t)
    sqrt_one_minus_alpha: float  # sqrt(1 - alpha_bar_t)
    c_skip: float
    c_out: float


@dataclass(frozen=True)
class Schedule:
    """N-step LCM schedule. `timesteps[0]` is the step the LQ latent stands in for.

    InterLCM treats the LQ image's latent as the *output* of the first LCM step
    (`lq_replaces_first_step`), so only `steps` (timesteps[1:]) run the networks:
    N = 4 is the paper's "3-step" model, N = 2 the "1-step" model.
    """

    timesteps: tuple[int, ...]
    steps: tuple[Step, ...]

    @property
    def num_inference_steps(self) -> int:
        return len(self.timesteps)


def alphas_cumprod(config: dict[str, Any]) -> np.ndarray:
    """alpha_bar for every training timestep, float32 as diffusers computes it."""
    n = config["num_train_timesteps"]
    if config["beta_schedule"] != "scaled_linear":
        raise ValueError(f"unsupported beta_schedule {config['beta_schedule']!r}: the LCM uses scaled_linear")
    # torch, float32, same op order as LCMScheduler: identical alphas to the last bit
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).numpy()


def lcm_timesteps(config: dict[str, Any], num_inference_steps: int) -> tuple[int, ...]:
    """Evenly spaced (by index) picks from the `original_inference_steps` distillation timesteps."""
    n_train = config["num_train_timesteps"]
    n_orig = config["original_inference_steps"]
    if not 1 <= num_inference_steps <= n_orig:
        raise ValueError(f"num_inference_steps must be in 1..{n_orig}, got {num_inference_steps}")
    k = n_train // n_orig
    origin = (np.arange(1, n_orig + 1) * k - 1)[::-1]  # 999, 979, ..., 19
    picks = np.floor(np.linspace(0, n_orig, num_inference_steps, endpoint=False)).astype(np.int64)
    return tuple(int(t) for t in origin[picks])


def boundary_scalings(timestep: int, timestep_scaling: float) -> tuple[float, float]:
    """LCM's c_skip and c_out at a discrete timestep."""
    scaled = timestep * timestep_scaling
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / math.sqrt(scaled**2 + SIGMA_DATA**2)
    return c_skip, c_out


def make_schedule(config: dict[str, Any], num_inference_steps: int) -> Schedule:
    if num_inference_steps < 2:
        raise ValueError("InterLCM needs at least 2 LCM steps (the first one is the LQ latent)")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"unsupported prediction_type {config['prediction_type']!r}: the LCM predicts epsilon")
    alphas = alphas_cumprod(config)
    timesteps = lcm_timesteps(config, num_inference_steps)
    steps = []
    for t in timesteps[1:]:
        a = float(alphas[t])
        c_skip, c_out = boundary_scalings(t, config["timestep_scaling"])
        steps.append(Step(t, math.sqrt(a), math.sqrt(1.0 - a), c_skip, c_out))
    return Schedule(timesteps, tuple(steps))


def inference_steps_for(model_steps: int) -> int:
    """The paper's "K-step InterLCM" runs the networks K times in an N = K + 1 LCM schedule."""
    if model_steps < 1:
        raise ValueError(f"steps must be at least 1, got {model_steps}")
    return model_steps + 1


def guidance_embedding(guidance_scale: float, dim: int, batch: int) -> torch.Tensor:
    """Sinusoidal embedding of w = guidance_scale - 1 (the release passes 8.0, so w = 7).

    LCM distilled classifier-free guidance into the UNet; this embedding is its
    only trace (there is no unconditional pass). Shape (batch, dim), float32.
    """
    w = torch.full((batch,), (guidance_scale - 1.0) * 1000.0, dtype=torch.float32)
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def make_noise(
    seed: int,
    num_inference_steps: int,
    batch: int,
    channels: int,
    size: tuple[int, int],
    per_sample: bool = False,
) -> torch.Tensor:
    """The sampler's noise for a batch, drawn on the CPU in float32 (the project's contract).

    Shape (N - 1, B, C, h, w); step k (1-based) uses slice k - 1. One face's noise
    is `randn((N - 1, 1, C, h, w))` from `seed`, and every face of the batch gets
    that same noise, so a face's result never depends on the batch size, its
    position, the input order or the worker (see "Seeded noise" in the spec).
    `per_sample=True` draws independent noise per sample instead: training wants
    that variety; inference never uses it.
    """
    gen = torch.Generator("cpu").manual_seed(seed)
    if per_sample:
        return torch.randn((num_inference_steps - 1, batch, channels, *size), generator=gen, dtype=torch.float32)
    one = torch.randn((num_inference_steps - 1, 1, channels, *size), generator=gen, dtype=torch.float32)
    return one.expand(-1, batch, -1, -1, -1)


def noise_for(
    config: PresetConfig, schedule: Schedule, seed: int, batch: int, per_sample: bool = False
) -> torch.Tensor:
    """`make_noise` for a preset's latent and a schedule: (N - 1, B, C, h, w)."""
    size = (config.latent_size, config.latent_size)
    return make_noise(seed, schedule.num_inference_steps, batch, config.latent_channels, size, per_sample)
