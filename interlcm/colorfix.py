"""Colour correction of the restored face towards the LQ input's colours.

`wavelet` (the paper's choice) keeps the restored image's high frequencies and
takes the low frequencies from the LQ image; `adain` matches per-channel mean
and standard deviation. Both are modules so they export like the networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaInColorFix(nn.Module):
    """Give `image` the per-channel mean and std of `reference` (both (B, 3, H, W))."""

    eps = 1e-5

    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            flat = x.flatten(2)  # (B, C, H*W)
            std = (flat.var(dim=2, unbiased=True) + self.eps).sqrt()  # unbiased as released
            return flat.mean(dim=2)[..., None, None], std[..., None, None]

        mean_i, std_i = stats(image)
        mean_r, std_r = stats(reference)
        return (image - mean_i) / std_i * std_r + mean_r


class WaveletColorFix(nn.Module):
    """High frequencies of `image` plus the low-frequency band of `reference`.

    The low band is the result of `levels` successive blurs with a 3x3 binomial
    kernel dilated by 1, 2, 4, ... (an a-trous wavelet), replicate padding.
    """

    def __init__(self, levels: int = 5):
        super().__init__()
        self.levels = levels
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        self.register_buffer("kernel", k.expand(3, 1, 3, 3).clone(), persistent=False)

    def low_band(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.levels):
            d = 2**i
            x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), self.kernel, groups=3, dilation=d)
        return x

    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return image - self.low_band(image) + self.low_band(reference)
