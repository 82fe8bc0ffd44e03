"""The Visual Encoder: CLIP tokens (B, 197, 768) -> c_v (B, 77, 768).

A 1-D conv net whose channels are CLIP's tokens and whose length is CLIP's
width. Module order and names reproduce the released state dict (`blocks.N.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interlcm.config import VisualEncoderConfig


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class Resample1D(nn.Module):
    """Nearest resampling of the length to a fixed size, then a k3 conv."""

    def __init__(self, channels: int, length: int):
        super().__init__()
        self.length = length
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=self.length, mode="nearest"))


class ResBlock1D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1)
        # the 1x1 shortcut exists only when the width changes (released key: conv_out)
        self.conv_out = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock1D(nn.Module):
    """Self-attention over the length axis with 1x1 q, k, v and output projection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv1d(channels, channels, 1)
        self.k = nn.Conv1d(channels, channels, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)  # (B, C, L)
        scale = q.shape[1] ** -0.5
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * scale, dim=2)  # (B, L, L)
        out = torch.bmm(v, weights.transpose(1, 2))  # (B, C, L)
        return x + self.proj_out(out)


class VisualEncoder(nn.Module):
    def __init__(self, cfg: VisualEncoderConfig, in_tokens: int, width: int):
        super().__init__()
        g = cfg.norm_groups
        top = cfg.nf * cfg.ch_mult[-1]  # 512 for the released settings
        # the length goes width/3 -> 2 width/3 -> width (768 -> 256 -> 512 -> 768)
        lengths = iter([width // 3, 2 * width // 3, width])
        blocks: list[nn.Module] = [
            nn.Conv1d(in_tokens, top, kernel_size=3, padding=1),
            Resample1D(top, next(lengths)),
            ResBlock1D(top, top, g),
            AttnBlock1D(top, g),
            ResBlock1D(top, top, g),
        ]
        ch = top
        for level in reversed(range(len(cfg.ch_mult))):
            out = cfg.nf * cfg.ch_mult[level]
            for _ in range(cfg.res_blocks):
                blocks.append(ResBlock1D(ch, out, g))
                ch = out
                if out == top:  # attention only at the widest level, as released
                    blocks.append(AttnBlock1D(ch, g))
            if level != 0:
                blocks.append(Resample1D(ch, next(lengths)))
        blocks += [_norm(ch, g), nn.Conv1d(ch, cfg.out_channels, kernel_size=3, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens  # (B, 197, 768)
        for block in self.blocks:
            x = block(x)
        return x  # (B, 77, 768)
