"""The paste-back mask from ParseNet's logits, against the release's OpenCV recipe."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from interlcm.faces.parsenet import IN_SIZE, NUM_CLASSES, ParseMask, gaussian_kernel, mask_from_logits

# The release's table: 255 for the classes pasted back, 0 for the others.
MASK_COLORMAP = [0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 0, 255, 0, 0, 0]


def release_mask(logits: np.ndarray) -> np.ndarray:
    """One face's (19, H, W) logits -> mask, written as the release's paste_faces_to_input_image does."""
    out = logits.argmax(axis=0)
    mask = np.zeros(out.shape)
    for idx, color in enumerate(MASK_COLORMAP):
        mask[out == idx] = color
    mask = cv2.GaussianBlur(mask, (101, 101), 11)
    mask = cv2.GaussianBlur(mask, (101, 101), 11)
    thres = 10
    mask[:thres, :] = 0
    mask[-thres:, :] = 0
    mask[:, :thres] = 0
    mask[:, -thres:] = 0
    return mask / 255.0


def blobby_logits(n: int, size: int, seed: int) -> torch.Tensor:
    """Class regions of a few dozen pixels (like a face parse), not per-pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, NUM_CLASSES, size // 32, size // 32, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_gaussian_kernel_is_opencvs():
    np.testing.assert_allclose(
        gaussian_kernel(101, 11.0).numpy(), cv2.getGaussianKernel(101, 11)[:, 0], atol=1e-8
    )


@pytest.mark.parametrize("size", [IN_SIZE, 160])
def test_mask_matches_release_recipe(size):
    logits = blobby_logits(2, size, seed=size)
    ours = mask_from_logits(logits)
    assert ours.shape == (2, size, size) and ours.dtype == torch.float32
    for face, mask in zip(logits.numpy(), ours.numpy()):
        ref = release_mask(face)
        assert 0.05 < ref.mean() < 0.95  # both kept and dropped classes present
        # float32 convolution vs OpenCV's float64 blur
        np.testing.assert_allclose(mask, ref, atol=2e-6)


def test_parse_mask_calls_the_backend_and_checks_the_size():
    calls = []

    def run(component, **tensors):
        calls.append((component, tuple(tensors["face"].shape)))
        return {"parsing": blobby_logits(len(tensors["face"]), IN_SIZE, seed=1)}

    masks = ParseMask(run)(torch.zeros(3, 3, IN_SIZE, IN_SIZE))
    assert calls == [("parsenet", (3, 3, IN_SIZE, IN_SIZE))]
    assert masks.shape == (3, IN_SIZE, IN_SIZE)
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    with pytest.raises(ValueError, match=r"ParseNet takes \(N, 3, 512, 512\) faces, got \(1, 3, 256, 256\)"):
        ParseMask(run)(torch.zeros(1, 3, 256, 256))


def test_the_parser_sends_every_face_and_the_backend_splits_them_to_its_batch():
    """A 5-face photo on a backend that runs 2 at a time: three ParseNet calls of at most 2 faces (0.4 GB of
    activations per face on a CPU), one mask per face."""
    from interlcm.backend import BackendBase
    from interlcm.faces.detectors import open_parser

    class Logits(BackendBase):
        name, config, device, max_batch = "logits", None, torch.device("cpu"), 2

        def __init__(self):
            self.batches = []

        def has(self, component):
            return component == "parsenet"

        def _run(self, component, inputs, batch, dims):
            self.batches.append(batch)
            return {"parsing": blobby_logits(batch, IN_SIZE, seed=len(self.batches))}

    backend = Logits()
    masks = open_parser(backend)([np.zeros((64, 64, 3), np.uint8)] * 5)
    assert backend.batches == [2, 2, 1] and len(masks) == 5 and masks[0].shape == (64, 64)
    assert open_parser(type("Without", (Logits,), {"has": lambda self, c: False})()) is None
