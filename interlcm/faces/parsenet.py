"""ParseNet face parsing (facexlib's `parsing_parsenet.pth`) and the paste-back mask the release builds.

`ParseNet` keeps the released state-dict keys (`encoder.*`, `body.*`, `decoder.*`,
`out_img_conv.*`, `out_mask_conv.*`; norms live at `<conv>.norm.norm.*`). Its 512-px
configuration: four stride-2 residual blocks down to 32 px (64 -> 256 channels), ten
residual blocks, four nearest-upsampling blocks back, then 19 parsing classes (and an
image head the release never reads, kept so the file loads strictly).

`ParseStep` is the exported component ([-1, 1] RGB faces -> class logits) and
`ParseMask` turns logits into the release's soft mask on the logits' device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

IN_SIZE = 512  # the released network's input and output size
NUM_CLASSES = 19
# Classes the release's paste-back keeps (its MASK_COLORMAP entries of 255): every class
# but 0 (background), 14 and 16-18. The numbering is the parsing network's.
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)
# Mask smoothing of the release: two Gaussian blurs (101 x 101, sigma 11, OpenCV's default
# reflect-101 border), then a 10-px frame set to zero "to remove the black borders".
BLUR_SIZE, BLUR_SIGMA, BLUR_PASSES, FRAME = 101, 11.0, 2, 10


class _Norm(nn.Module):
    """Holds the batch norm at `<conv>.norm.norm` (the released key layout)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ConvLayer(nn.Module):
    """[nearest x2 upsampling] -> reflection pad -> 3x3 conv (stride 2 to go down) [-> BN -> LeakyReLU 0.2]."""

    def __init__(self, cin: int, cout: int, scale: str = "none", normed: bool = False, act: bool = False):
        super().__init__()
        self.up = scale == "up"
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not normed)
        self.norm = _Norm(cout) if normed else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm is not None:
            x = self.norm(x)
        return F.leaky_relu(x, 0.2) if self.act else x


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, scale: str = "none"):
        super().__init__()
        # a plain conv shortcut (no norm) where the shape changes, identity otherwise
        self.shortcut_func = ConvLayer(cin, cout, scale) if scale != "none" or cin != cout else None
        self.conv1 = ConvLayer(cin, cout, "up" if scale == "up" else "none", normed=True, act=True)
        self.conv2 = ConvLayer(cout, cout, "down" if scale == "down" else "none", normed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """(B, 3, 512, 512) in [-1, 1] RGB -> class logits (B, 19, 512, 512), image (B, 3, 512, 512)."""

    def __init__(self, base: int = 64, depth: int = 10, steps: int = 4, max_channels: int = 256):
        super().__init__()

        def ch(c: int) -> int:
            return min(c, max_channels)

        encoder: list[nn.Module] = [ConvLayer(3, base)]
        width = base
        for _ in range(steps):  # 512 -> 32 px
            encoder.append(ResidualBlock(ch(width), ch(width * 2), "down"))
            width *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*(ResidualBlock(ch(width), ch(width)) for _ in range(depth)))
        decoder = []
        for _ in range(steps):  # 32 -> 512 px
            decoder.append(ResidualBlock(ch(width), ch(width // 2), "up"))
            width //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = ConvLayer(ch(width), 3)
        self.out_mask_conv = ConvLayer(ch(width), NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(x)
        return self.decoder(feat + self.body(feat))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(x)
        return self.out_mask_conv(feat), self.out_img_conv(feat)


class ParseStep(nn.Module):
    """The exported component: only the parsing logits (the image head is left out of the graph)."""

    def __init__(self, net: ParseNet):
        super().__init__()
        self.net = net

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.net.out_mask_conv(self.net.features(face))  # (B, 19, 512, 512)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size,) normalised 1-D Gaussian, as cv2.getGaussianKernel(size, sigma)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def blur(mask: torch.Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """(N, H, W) separable Gaussian blur with reflect-101 borders (cv2.GaussianBlur's default)."""
    k = gaussian_kernel(size, sigma).to(mask.device)
    x = F.pad(mask[:, None], (size // 2,) * 4, mode="reflect")  # torch's "reflect" is OpenCV's reflect-101
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))[:, 0]


def mask_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, 19, H, W) parsing logits -> (N, H, W) soft face mask in [0, 1], the release's recipe."""
    keep = torch.zeros(logits.shape[1], dtype=torch.float32, device=logits.device)
    keep[list(FACE_CLASSES)] = 1.0
    mask = keep[logits.argmax(dim=1)]  # (N, H, W) 0 or 1
    for _ in range(BLUR_PASSES):
        mask = blur(mask)
    frame = torch.zeros_like(mask)
    frame[:, FRAME:-FRAME, FRAME:-FRAME] = 1.0
    return mask * frame


class ParseMask:
    """(N, 3, 512, 512) aligned faces in [-1, 1] RGB -> (N, 512, 512) float mask in [0, 1].

    `run` is a backend's `run(component, **tensors)` (torch, ONNX Runtime or TensorRT);
    the mask arithmetic runs where the logits are. The release resizes a restored face
    to 512 px (bilinear) before parsing: callers with other crop sizes do the same.
    """

    component = "parsenet"

    def __init__(self, run: Callable[..., dict[str, torch.Tensor]]):
        self.run = run

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        if tuple(faces.shape[1:]) != (3, IN_SIZE, IN_SIZE):
            raise ValueError(f"ParseNet takes (N, 3, {IN_SIZE}, {IN_SIZE}) faces, got {tuple(faces.shape)}")
        return mask_from_logits(self.run(self.component, face=faces)["parsing"].float())
