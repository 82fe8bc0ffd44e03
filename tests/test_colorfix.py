import pytest
import torch

from interlcm.choices import COLORFIXES
from interlcm.colorfix import AdaInColorFix, WaveletColorFix
from interlcm.config import LCM_SCHEDULER
from interlcm.sampler import SamplerSettings
from interlcm.schedule import make_schedule


def test_wavelet_takes_low_band_from_reference():
    fix = WaveletColorFix()
    flat_ref = torch.full((1, 3, 64, 64), 0.3)
    image = torch.rand(1, 3, 64, 64)
    out = fix(image, flat_ref)
    # the reference is flat, so out = high band of image + 0.3: its mean moves to about 0.3
    assert abs(out.mean().item() - 0.3) < 0.02
    # identical inputs are a fixed point
    torch.testing.assert_close(fix(image, image), image, atol=1e-6, rtol=0)


def test_adain_matches_statistics():
    ref = torch.randn(2, 3, 16, 16) * 0.2 + 0.5
    out = AdaInColorFix()(torch.randn(2, 3, 16, 16), ref)
    torch.testing.assert_close(out.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.flatten(2).std(dim=2), ref.flatten(2).std(dim=2), atol=1e-3, rtol=0)


def test_unknown_colour_fix_fails_before_the_chain_runs():
    schedule = make_schedule(LCM_SCHEDULER, 4)
    with pytest.raises(ValueError, match="unknown colour fix 'histogram': choose one of wavelet"):
        SamplerSettings(schedule, colorfix="histogram")
    for mode in COLORFIXES:
        SamplerSettings(schedule, colorfix=mode)
