"""The Spatial Encoder: a ControlNet with the SD-1.5 UNet layout.

The release builds it with `ControlNetModel.from_unet(sd15_unet)`. That call
refuses the LCM UNet (its time embedding has `cond_proj`, the ControlNet's has
not) and would instantiate a full UNet first, so we build the ControlNet from
the UNet *config* instead: same modules, same state-dict keys.

The LQ image is the conditioning input and is the same at every step, so its
embedding (`controlnet_cond_embedding`) is split out: `SpatialCondition`
computes it once per image and `SpatialEncoderStep` runs the rest per step.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import ControlNetModel
from torch import nn

# UNet config keys a ControlNet does not take (from_unet drops them as well).
_UNET_ONLY = {"time_cond_proj_dim", "sample_size", "out_channels", "up_block_types", "center_input_sample"}


def controlnet_config(unet_config: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """ControlNetModel kwargs mirroring a UNet config, plus ControlNet-only settings."""
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    cfg = {k: v for k, v in unet_config.items() if k in accepted and k not in _UNET_ONLY}
    cfg.update(extra or {})
    return cfg


def build_spatial_encoder(unet_config: dict[str, Any], extra: dict[str, Any] | None = None) -> ControlNetModel:
    return ControlNetModel(**controlnet_config(dict(unet_config), extra))


class SpatialCondition(nn.Module):
    """LQ image (B, 3, H, W) in [-1, 1] -> conditioning features (B, 320, H/8, W/8)."""

    def __init__(self, controlnet: ControlNetModel):
        super().__init__()
        self.embedding = controlnet.controlnet_cond_embedding

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.embedding(image)


class SpatialEncoderStep(nn.Module):
    """One ControlNet pass given a precomputed conditioning embedding.

    Computes what `ControlNetModel.forward` computes for the release's call
    (conditioning_scale 1, guess_mode off, no class or added embeddings), with
    the image embedding taken as an input. Returns the 12 down residuals and the
    mid residual, in the order the UNet consumes them.
    """

    def __init__(self, controlnet: ControlNetModel):
        super().__init__()
        cfg = controlnet.config
        unsupported = {
            k: cfg[k]
            for k in ("class_embed_type", "addition_embed_type", "num_class_embeds", "encoder_hid_dim_type")
            if cfg.get(k) is not None
        }
        if unsupported or cfg.get("global_pool_conditions"):
            raise ValueError(f"spatial encoder config not supported by InterLCM: {unsupported}")
        self.cn = controlnet

    def forward(
        self,
        sample: torch.Tensor,  # (B, 4, h, w) noisy latent z_t
        timestep: torch.Tensor,  # (B,) float
        context: torch.Tensor,  # (B, 77, 768) c_v
        cond: torch.Tensor,  # (B, 320, h, w) from SpatialCondition
    ) -> tuple[torch.Tensor, ...]:
        cn = self.cn
        t_emb = cn.time_proj(timestep).to(sample.dtype)
        emb = cn.time_embedding(t_emb)
        h = cn.conv_in(sample) + cond
        down_res: tuple[torch.Tensor, ...] = (h,)
        for block in cn.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, res = block(hidden_states=h, temb=emb)
            down_res += res
        if getattr(cn.mid_block, "has_cross_attention", False):
            h = cn.mid_block(h, emb, encoder_hidden_states=context)
        else:
            h = cn.mid_block(h, emb)
        outs = tuple(proj(r) for r, proj in zip(down_res, cn.controlnet_down_blocks))
        return outs + (cn.controlnet_mid_block(h),)
