"""ONNX Runtime backend vs the torch reference, end to end on the tiny preset.

Same input, same noise, every intermediate compared, so a failure names the stage.
Tolerances: fp32 differs from torch only by float reassociation in ORT's fused
kernels (measured ~1e-6 relative per component), and the 3-step chain with the
VAE decoder amplifies it a little: 1e-4 relative on every stage. fp16 carries
fp16 rounding through 3 UNet steps: judged by the output image's PSNR.
"""

from __future__ import annotations

import pytest
import torch

from interlcm.engines.parity import compare_traces, format_table
from interlcm.engines.runtime import RestoreOptions, Restorer
from interlcm.engines.torch_backend import TorchBackend
from interlcm.sampler import Trace

FP32_REL = 1e-4
FP16_MIN_PSNR = 35.0  # dB, output image in [-1, 1]


def _traces(backend, tiny_models, lq, colorfix="wavelet", steps=3):
    options = RestoreOptions(steps=steps, seed=3, colorfix=colorfix)
    ours, ref = Trace(), Trace()
    out = Restorer(backend, options).restore(lq, ours)
    expected = Restorer(TorchBackend(tiny_models), options).restore(lq, ref)
    return out, expected, compare_traces(ours, ref)


@pytest.mark.parametrize("colorfix, steps", [("wavelet", 3), ("adain", 1)])
def test_ort_fp32_matches_torch_at_every_stage(tiny_onnx, tiny_models, lq_photo, colorfix, steps):
    from interlcm.engines.ort import OrtBackend

    out, expected, rows = _traces(OrtBackend(tiny_onnx, "fp32", provider="cpu"), tiny_models, lq_photo, colorfix, steps)
    bad = [r for r in rows if r.max_rel > FP32_REL]
    assert not bad, "stages over tolerance:\n" + format_table(rows)
    assert expected.abs().max() > 0.1 and out.shape == lq_photo.shape


def test_ort_fp16_image_psnr(tiny_onnx, tiny_models, lq_photo):
    from interlcm.engines.ort import OrtBackend

    _, _, rows = _traces(OrtBackend(tiny_onnx, "fp16", provider="cpu"), tiny_models, lq_photo)
    image = next(r for r in rows if r.stage == "image")
    print("\n" + format_table(rows))
    assert image.psnr > FP16_MIN_PSNR, format_table(rows)


def test_parity_detects_a_wrong_backend(tiny_onnx, tiny_models, lq_photo):
    """The comparison must fail when a stage is wrong: perturb the UNet's eps."""
    from interlcm.engines.ort import OrtBackend

    class Broken(OrtBackend):
        def run(self, component, **inputs):
            out = super().run(component, **inputs)
            if component == "unet":
                out = {"eps": out["eps"] * 1.01}
            return out

    _, _, rows = _traces(Broken(tiny_onnx, "fp32", provider="cpu"), tiny_models, lq_photo)
    first_bad = next(r.stage for r in rows if r.max_rel > FP32_REL)
    assert first_bad == "step1.eps"


def test_batch_other_than_export_batch(tiny_onnx, tiny_models):
    from interlcm.engines.ort import OrtBackend
    from interlcm.testing import photo

    lq = photo(tiny_models.config.resolution, batch=3)
    out, expected, rows = _traces(OrtBackend(tiny_onnx, "fp32", provider="cpu"), tiny_models, lq)
    assert out.shape[0] == 3
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


def test_wrong_resolution_is_refused_before_running(tiny_onnx):
    from interlcm.engines.ort import OrtBackend

    backend = OrtBackend(tiny_onnx, "fp32", provider="cpu")
    with pytest.raises(ValueError, match="re-export"):
        backend.run("clip", image=torch.zeros(1, 3, 32, 32))
