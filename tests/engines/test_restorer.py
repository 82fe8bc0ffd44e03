"""engines/restorer.py: the sampler bound to a backend."""

from __future__ import annotations

import torch

from interlcm.engines import restorer
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.torch_backend import TorchBackend


def test_the_noise_is_made_on_the_backends_device_once_per_batch(tiny_models, monkeypatch):
    """The sampler's noise was a CPU tensor copied from pageable memory at every step (and no CUDA graph can
    capture such a copy): the restorer hands it over on the backend's device."""
    seen = []

    def restore(backend, lq, noise, settings, trace=None, chain=None):
        seen.append((lq.device, noise.device, tuple(noise.shape)))
        return torch.zeros(lq.shape)

    monkeypatch.setattr(restorer, "restore", restore)
    Restorer(TorchBackend(tiny_models, "meta"), RestoreOptions(batch=2)).restore(torch.zeros(2, 3, 64, 64))
    meta = torch.device("meta")
    assert seen == [(meta, meta, (3, 2, tiny_models.config.latent_channels, 8, 8))]
