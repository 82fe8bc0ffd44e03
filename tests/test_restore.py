"""Tiny-preset restoration of a real photo through the torch reference."""

import torch

from interlcm.sampler import SamplerSettings, restore
from interlcm.schedule import make_noise, make_schedule
from interlcm.torch_backend import TorchBackend


def _restore(models, lq, seed, n=4, colorfix="wavelet"):
    cfg = models.config
    noise = make_noise(seed, n, lq.shape[0], cfg.latent_channels, (cfg.latent_size, cfg.latent_size))
    settings = SamplerSettings(make_schedule(cfg.scheduler, n), colorfix=colorfix, guidance_dim=cfg.guidance_dim)
    return restore(TorchBackend(models), lq, noise, settings)


def test_restoration_is_deterministic_per_seed(tiny_models, lq_photo):
    a = _restore(tiny_models, lq_photo, seed=1)
    b = _restore(tiny_models, lq_photo, seed=1)
    c = _restore(tiny_models, lq_photo, seed=2)
    assert a.shape == lq_photo.shape and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.abs().max() < 10
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_one_step_model_and_colour_fixes(tiny_models, lq_photo):
    one = _restore(tiny_models, lq_photo, seed=1, n=2, colorfix="none")
    three = _restore(tiny_models, lq_photo, seed=1, n=4, colorfix="none")
    assert one.shape == three.shape and (one - three).abs().max() > 1e-3
    adain = _restore(tiny_models, lq_photo, seed=1, n=4, colorfix="adain")
    # AdaIN gives each channel the LQ image's mean
    torch.testing.assert_close(adain.mean(dim=(2, 3)), lq_photo.mean(dim=(2, 3)), atol=1e-4, rtol=0)
