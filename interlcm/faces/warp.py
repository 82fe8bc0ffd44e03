"""OpenCV's affine warp, erosion and Gaussian blur as torch ops: alignment and paste-back on a GPU.

The torch paste-back and alignment (``paste.py``, ``align.py``) run the same recipe as their
OpenCV versions, on whatever device the tensors live on (the tests run them on the CPU: the
same code as on CUDA). Each function here matches its OpenCV call to float rounding:

* ``warp_affine``: ``cv2.warpAffine(..., INTER_LINEAR)`` by ``grid_sample`` (bilinear, pixel
  centres at integer coordinates), ``"zeros"`` for ``BORDER_CONSTANT`` 0, ``"border"`` for
  ``BORDER_REPLICATE``. OpenCV 5 samples at float coordinates, as here; OpenCV 4 rounds them
  to 1/32 px, which moves a value by up to 1/64 of the step between two neighbouring pixels.
* ``erode``: ``cv2.erode`` with a k x k box of ones (anchor at k // 2; outside the image does
  not count).
* ``gaussian_blur``: ``cv2.GaussianBlur(x, (k, k), 0)``: OpenCV's own kernel, reflect-101 border.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def warp_affine(image: torch.Tensor, matrix: np.ndarray, size: tuple[int, int], border: str) -> torch.Tensor:
    """(C, H, W) float32 -> (C, h, w) float32, `size` = (w, h); `matrix` (2, 3) maps image pixels to output pixels."""
    if border not in ("zeros", "border"):
        raise ValueError(f"border {border!r}: use 'zeros' (constant 0) or 'border' (replicate)")
    inverse = torch.as_tensor(cv2.invertAffineTransform(np.asarray(matrix, np.float64)), dtype=torch.float32)
    a, b, c = (float(v) for v in inverse[0])
    d, e, f = (float(v) for v in inverse[1])
    w, h = size
    xs = torch.arange(w, dtype=torch.float32, device=image.device)
    ys = torch.arange(h, dtype=torch.float32, device=image.device)[:, None]
    src_x = a * xs + (b * ys + c)  # (h, w) source pixel of each output pixel, as OpenCV computes it
    src_y = d * xs + (e * ys + f)
    height, width = image.shape[-2:]
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the outer edges of the end pixels
    grid = torch.stack(((2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1), dim=-1)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode=border, align_corners=False)[0]


def erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(H, W) float32 minimum over a k x k box (cv2.erode with np.ones((k, k)); the border never erodes)."""
    if k <= 1:
        return mask
    before, after = k // 2, k - 1 - k // 2  # OpenCV's default anchor sits at k // 2
    x = F.pad(-mask[None, None], (before, after, before, after), value=-float("inf"))
    x = F.max_pool2d(x, (1, k), stride=1)  # separable: rows, then columns (exact for a min)
    return -F.max_pool2d(x, (k, 1), stride=1)[0, 0]


def gaussian_blur(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(H, W) float32 -> the same, cv2.GaussianBlur(mask, (k, k), 0): separable, reflect-101 border."""
    kernel = torch.as_tensor(cv2.getGaussianKernel(k, 0, ktype=cv2.CV_32F)[:, 0], device=mask.device)
    r = k // 2
    h, w = mask.shape
    rows = _reflect101(torch.arange(-r, h + r, device=mask.device), h)
    cols = _reflect101(torch.arange(-r, w + r, device=mask.device), w)
    x = mask.index_select(0, rows).index_select(1, cols)[None, None]
    x = F.conv2d(x, kernel.view(1, 1, 1, k))
    return F.conv2d(x, kernel.view(1, 1, k, 1))[0, 0]


def _reflect101(index: torch.Tensor, n: int) -> torch.Tensor:
    """OpenCV's BORDER_REFLECT_101 for any overhang (gfedcb|abcdefgh|gfedcba), also wider than the image."""
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * n - 2
    index = index.abs() % period
    return torch.where(index >= n, period - index, index)
