"""Test inputs shared by the test suite and `interlcm-trt check`-style tools."""

from __future__ import annotations

import numpy as np
import torch


def photo(resolution: int, batch: int = 1) -> torch.Tensor:
    """Real face crops from scikit-image's astronaut photo, (B, 3, R, R) in [-1, 1]."""
    from PIL import Image
    from skimage import data  # scikit-image ships the photo (a dev dependency)

    img = data.astronaut()  # 512x512 RGB, the face is near the top middle
    crops = [img[10:230, 120:340], img[0:256, 100:356], img[30:210, 150:330], img[256:512, 0:256]]
    out = []
    for crop in crops[:batch]:
        pil = Image.fromarray(np.ascontiguousarray(crop)).resize((resolution, resolution), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)
