"""Model presets as data.

A preset says how big every component is. `sd15` is the released model's
architecture (CLIP ViT-B/16, SD-1.5 UNet/VAE, the LCM scheduler); `tiny` has the
same topology with small widths so a 64x64 face restores in well under a second
on a CPU. The diffusers/transformers parts are kept as the plain config dicts
those libraries read and write (`from_config` / `save_pretrained`), so a preset
and a downloaded checkpoint folder describe a model the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class VisualEncoderConfig:
    """The 1-D conv net mapping CLIP tokens to the UNet's cross-attention context.

    CLIP's tokens are the conv *channels* and CLIP's width is the *length*; the
    output has `out_channels` "tokens" of CLIP's width, like a text embedding.
    """

    nf: int = 64
    ch_mult: tuple[int, ...] = (2, 4, 8)
    res_blocks: int = 2
    out_channels: int = 77  # length of an SD-1.5 text embedding
    norm_groups: int = 32  # GroupNorm(32, eps=1e-6) as in the release
    # Filled from the CLIP config when the model is built (see PresetConfig.ve_dims).
    # in_tokens: CLIP sequence length (197 for ViT-B/16 at 224 px); width: CLIP hidden size.


@dataclass(frozen=True)
class PresetConfig:
    """Everything needed to build InterLCM's components with the right shapes."""

    name: str
    resolution: int  # face crop side in pixels; latents are resolution / 8
    clip: dict[str, Any]  # transformers CLIPVisionConfig kwargs
    visual_encoder: VisualEncoderConfig
    unet: dict[str, Any]  # diffusers UNet2DConditionModel config (the LCM UNet)
    vae: dict[str, Any]  # diffusers AutoencoderKL config
    # ControlNet settings not implied by the UNet config (the SE is built from the
    # UNet config, see models.spatial_encoder.controlnet_config).
    spatial_encoder: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)  # diffusers LCMScheduler config

    @property
    def clip_tokens(self) -> int:
        """CLIP sequence length: one CLS token plus one token per patch."""
        return (self.clip["image_size"] // self.clip["patch_size"]) ** 2 + 1

    @property
    def clip_width(self) -> int:
        return self.clip["hidden_size"]

    @property
    def latent_channels(self) -> int:
        return self.vae["latent_channels"]

    @property
    def vae_scale(self) -> int:
        """Pixels per latent: 2 ** (number of VAE down blocks - 1)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale

    @property
    def scaling_factor(self) -> float:
        return self.vae["scaling_factor"]

    @property
    def guidance_dim(self) -> int:
        return self.unet["time_cond_proj_dim"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PresetConfig:
        data = copy.deepcopy(data)
        ve = data.pop("visual_encoder")
        ve["ch_mult"] = tuple(ve["ch_mult"])
        return cls(visual_encoder=VisualEncoderConfig(**ve), **data)

    def with_resolution(self, resolution: int) -> PresetConfig:
        if resolution % (self.vae_scale * 8) != 0:
            raise ValueError(
                f"resolution {resolution} is not a multiple of {self.vae_scale * 8}: "
                "the VAE divides by 8 and the UNet by 8 again; use e.g. 512"
            )
        return PresetConfig.from_dict({**self.to_dict(), "resolution": resolution})


# The LCM scheduler config of SimianLuo/LCM_Dreamshaper_v7 (what the release samples with).
LCM_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "original_inference_steps": 50,
    "timestep_scaling": 10.0,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "clip_sample": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

_SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

SD15 = PresetConfig(
    name="sd15",
    resolution=512,
    clip={  # openai/clip-vit-base-patch16 vision tower
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 512,
    },
    visual_encoder=VisualEncoderConfig(),
    unet={  # SD-1.5 layout plus the LCM guidance embedding (time_cond_proj_dim)
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": _SD_DOWN,
        "up_block_types": _SD_UP,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 768,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "time_cond_proj_dim": 256,
    },
    vae={  # SD-1.5 AutoencoderKL
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    spatial_encoder={"conditioning_embedding_out_channels": [16, 32, 96, 256]},
    scheduler=LCM_SCHEDULER,
)

TINY = PresetConfig(
    name="tiny",
    resolution=64,
    clip={
        "hidden_size": 48,  # divisible by 3: the VE resamples to 1/3, 2/3 and all of it
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,  # 16 patches + CLS = 17 tokens
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 32,
    },
    visual_encoder=VisualEncoderConfig(nf=16, norm_groups=8),
    unet={
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": _SD_DOWN,
        "up_block_types": _SD_UP,
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 2,  # kept: 12 down residuals as in SD-1.5
        "attention_head_dim": 4,
        "cross_attention_dim": 48,
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "time_cond_proj_dim": 256,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [16, 16, 32, 32],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    },
    spatial_encoder={"conditioning_embedding_out_channels": [8, 8, 16, 16]},
    scheduler=LCM_SCHEDULER,
)

PRESETS: dict[str, PresetConfig] = {p.name: p for p in (SD15, TINY)}


@dataclass(frozen=True)
class RRDBConfig:
    """Real-ESRGAN's RRDBNet (the background and face upsampler), sized like the InterLCM presets.

    For scale 2 (x2plus) the input is pixel-unshuffled by 2, so the trunk runs at half
    resolution on 4x the channels; two nearest x2 upsamplings then bring it to 2x the input.
    """

    num_feat: int = 64  # trunk width
    num_block: int = 23  # RRDB blocks (3 dense blocks of 5 convs each)
    num_grow_ch: int = 32  # channels each dense conv adds
    scale: int = 2  # output pixels per input pixel: 1, 2 or 4 (the release's x2plus: 2)

    @property
    def unshuffle(self) -> int:
        """Pixel-unshuffle factor of the input: the trunk runs at 1 / unshuffle of the input size."""
        return 4 // self.scale

    @property
    def receptive_radius(self) -> int:
        """Input pixels on each side that can reach an output pixel (3x3 convs, counted in input pixels).

        Trunk at 1 / u of the input: conv_first, 15 convs per block, conv_body; plus one trunk pixel
        for the unshuffle grid; conv_up1 at 2 / u, conv_up2, conv_hr, conv_last at 4 / u.
        A tiled run equals an untiled one when the tile padding is at least this.
        """
        u = self.unshuffle
        trunk = u * (2 + 15 * self.num_block + 1)
        return math.ceil(trunk + u / 2 + 3 * u / 4)


# The upsampler each preset uses: sd15 pairs with the release's RealESRGAN_x2plus; tiny is a
# 1-block net whose receptive field (38 px) fits inside the release's 40 px tile padding.
UPSAMPLERS: dict[str, RRDBConfig] = {
    SD15.name: RRDBConfig(),
    TINY.name: RRDBConfig(num_feat=8, num_block=1, num_grow_ch=4),
}


def get_upsampler(preset: str) -> RRDBConfig:
    """The Real-ESRGAN size for a preset name (a loaded model of another name: the released size)."""
    return UPSAMPLERS.get(preset, UPSAMPLERS[SD15.name])


def reject_unknown_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise naming every key of `data` that is not a field of dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; valid keys: {', '.join(sorted(names))}")


def get_preset(name: str) -> PresetConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
