"""Shared tiny fixtures: seeded `tiny` models, a weights folder, real photos."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_cfg():
    from interlcm.config import TINY

    return TINY


@pytest.fixture(scope="session")
def tiny_models(tiny_cfg):
    from interlcm.pipeline import build_random

    return build_random(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    from interlcm.weights import init_weights

    return init_weights(tmp_path_factory.mktemp("weights") / "tiny", "tiny", seed=0)


def photo(resolution: int, batch: int = 1) -> torch.Tensor:
    """Real face crops from scikit-image's astronaut photo, (B, 3, R, R) in [-1, 1]."""
    from PIL import Image
    from skimage import data

    img = data.astronaut()  # 512x512 RGB, the face is near the top middle
    crops = [img[10:230, 120:340], img[0:256, 100:356], img[30:210, 150:330], img[256:512, 0:256]]
    out = []
    for crop in crops[:batch]:
        pil = Image.fromarray(np.ascontiguousarray(crop)).resize((resolution, resolution), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


@pytest.fixture
def lq_photo(tiny_cfg):
    return photo(tiny_cfg.resolution, batch=2)
