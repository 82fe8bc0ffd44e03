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


# The values themselves are pinned by tests/test_golden.py; these check properties the golden
# values do not: a rerun is bit-identical, and AdaIN's defining property.


def test_restoration_is_bit_identical_per_seed(tiny_models, lq_photo):
    assert torch.equal(_restore(tiny_models, lq_photo, seed=1), _restore(tiny_models, lq_photo, seed=1))


def test_adain_colour_fix_gives_each_channel_the_inputs_mean(tiny_models, lq_photo):
    adain = _restore(tiny_models, lq_photo, seed=1, n=4, colorfix="adain")
    # AdaIN gives each channel the LQ image's mean
    torch.testing.assert_close(adain.mean(dim=(2, 3)), lq_photo.mean(dim=(2, 3)), atol=1e-4, rtol=0)
