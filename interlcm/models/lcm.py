"""Thin export-friendly wrappers around the frozen LCM UNet and SD VAE."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn


class UNetStep(nn.Module):
    """eps = UNet(z_t, t, c_v, w-embedding, SE residuals)."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,  # (B, 4, h, w)
        timestep: torch.Tensor,  # (B,) float
        context: torch.Tensor,  # (B, 77, 768)
        guidance: torch.Tensor,  # (B, 256) w-embedding
        *residuals: torch.Tensor,  # 12 down residuals then the mid residual
    ) -> torch.Tensor:
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=context,
            timestep_cond=guidance,
            down_block_additional_residuals=residuals[:-1],
            mid_block_additional_residual=residuals[-1],
            return_dict=False,
        )[0]


class VaeEncode(nn.Module):
    """Image in [-1, 1] -> latent *mean* times the scaling factor (no sampling)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(image).latent_dist.mean  # (B, 4, h, w)
        return mean * self.vae.config.scaling_factor


class VaeDecode(nn.Module):
    """Scaled latent -> image in [-1, 1] (not clamped, as released)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.vae.config.scaling_factor, return_dict=False)[0]
