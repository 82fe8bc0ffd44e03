"""Real-ESRGAN's generator, RRDBNet, with the released checkpoints' state-dict keys.

Keys of ``RealESRGAN_x2plus.pth`` (under ``params_ema``), for ``num_block`` = 23:
``conv_first``, ``body.{0..22}.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``,
``conv_up2``, ``conv_hr``, ``conv_last`` (each ``.weight`` and ``.bias``). x2 and x1 first
pixel-unshuffle the input (channel order c * u^2 + i * u + j, as torch's
``pixel_unshuffle``), so ``conv_first`` takes 12 (x2) or 48 (x1) channels; the trunk always
ends with two nearest x2 upsamplings.

Input and output are RGB in [0, 1] (the output is not clamped: the caller clamps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from interlcm.config import PresetConfig, RRDBConfig, get_upsampler
from interlcm.identity import WeightsIdentity

_SLOPE = 0.2  # LeakyReLU slope everywhere in the release
_RESIDUAL = 0.2  # the release scales every dense and RRDB residual by 0.2


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class DenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and every earlier conv's output."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        for i in range(4):
            setattr(self, f"conv{i + 1}", _conv(feat + i * grow, grow))
        self.conv5 = _conv(feat + 4 * grow, feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            seen.append(F.leaky_relu(conv(torch.cat(seen, 1)), _SLOPE))
        return self.conv5(torch.cat(seen, 1)) * _RESIDUAL + x


class RRDB(nn.Module):
    """Three dense blocks in a residual."""

    def __init__(self, feat: int, grow: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (DenseBlock(feat, grow) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * _RESIDUAL + x


class RRDBNet(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 3, scale H, scale W); H and W divisible by 4 / scale."""

    def __init__(self, cfg: RRDBConfig, channels: int = 3):
        super().__init__()
        if cfg.scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale {cfg.scale} is not supported: use 1, 2 or 4")
        self.cfg = cfg
        feat = cfg.num_feat
        self.conv_first = _conv(channels * cfg.unshuffle**2, feat)
        self.body = nn.Sequential(*(RRDB(feat, cfg.num_grow_ch) for _ in range(cfg.num_block)))
        self.conv_body = _conv(feat, feat)
        self.conv_up1 = _conv(feat, feat)
        self.conv_up2 = _conv(feat, feat)
        self.conv_hr = _conv(feat, feat)
        self.conv_last = _conv(feat, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.cfg.unshuffle
        feat = self.conv_first(F.pixel_unshuffle(x, u) if u > 1 else x)  # (B, F, H / u, W / u)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):  # (B, F, 4 H / u, 4 W / u) after both
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), _SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), _SLOPE))


def build_random_rrdbnet(cfg: RRDBConfig, seed: int = 0) -> RRDBNet:
    """Seeded random weights, scaled like the release's init (x 0.1) so 23 blocks stay finite."""
    gen = torch.Generator().manual_seed(seed)
    net = RRDBNet(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight"):
                fan_in = p[0].numel()
                # He-normal, x 0.1 inside the dense blocks as basicsr's default_init_weights(.., 0.1)
                gain = 0.1 if name.startswith("body.") else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * gain * (2.0 / fan_in) ** 0.5)
            else:
                p.zero_()
    return net.eval().requires_grad_(False)


@dataclass
class UpsamplerModels:
    """Real-ESRGAN for a preset, shaped like `InterLCMModels` for the component loop.

    Export (`export_all`), validation and `TorchBackend` read `config`, `origin` and the
    attribute each component builds from (`realesrgan`), so the upsampler goes through them
    unchanged.
    """

    config: PresetConfig  # the InterLCM preset whose upsampler this is (interlcm.config.UPSAMPLERS)
    realesrgan: RRDBNet
    origin: str  # "random, seed N" or the checkpoint it was loaded from
    identity: WeightsIdentity | None = None  # random ones: their preset and seed; loaded: the caller's

    def eval(self) -> UpsamplerModels:
        self.realesrgan.eval().requires_grad_(False)
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> UpsamplerModels:
        self.realesrgan.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        return self


def build_random_upsampler(cfg: PresetConfig, seed: int = 0) -> UpsamplerModels:
    net = build_random_rrdbnet(get_upsampler(cfg.name), seed)
    return UpsamplerModels(cfg, net, f"random, seed {seed}", WeightsIdentity.random(cfg.name, seed))
