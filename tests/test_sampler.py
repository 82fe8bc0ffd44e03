"""The sampler equals the release's loop: diffusers' LCMScheduler stepped by hand."""

import torch
from diffusers import LCMScheduler
from diffusers.utils.torch_utils import randn_tensor

from interlcm.sampler import SamplerSettings, Trace, restore
from interlcm.schedule import guidance_embedding, make_schedule
from interlcm.torch_backend import TorchBackend


@torch.no_grad()
def release_loop(models, lq, generators, n):
    """What the release's patched pipeline computes, with diffusers' own scheduler and modules."""
    cfg = models.config
    sched = LCMScheduler(**cfg.scheduler)
    sched.set_timesteps(n)
    context = models.visual_encoder(models.clip(lq))
    latents = models.vae.encode(lq).latent_dist.mean * cfg.scaling_factor
    w = guidance_embedding(8.0, cfg.guidance_dim, lq.shape[0])
    for i, t in enumerate(sched.timesteps):
        if i == 0:  # the LQ latent is the first step's output; noise it to the next timestep by hand
            a_next = sched.alphas_cumprod[sched.timesteps[1]]
            noise = randn_tensor(latents.shape, generator=generators[0])
            latents, denoised = a_next.sqrt() * latents + (1 - a_next).sqrt() * noise, latents
            sched._step_index = 1
            continue
        down, mid = models.spatial_encoder(latents, t, encoder_hidden_states=context, controlnet_cond=lq, return_dict=False)
        eps = models.unet(
            latents,
            t,
            timestep_cond=w,
            encoder_hidden_states=context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        latents, denoised = sched.step(eps, t, latents, generator=generators[i], return_dict=False)
    return models.vae.decode(denoised / cfg.scaling_factor).sample


def test_sampler_equals_diffusers_scheduler(tiny_models, lq_photo):
    n = 4
    cfg = tiny_models.config
    shape = (lq_photo.shape[0], cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    seeds = [11, 12, 13, 14]
    # the same noise both ways: the scheduler draws step i's noise from generators[i]
    noise = torch.stack([randn_tensor(shape, generator=torch.Generator().manual_seed(s)) for s in seeds[: n - 1]])
    ref = release_loop(tiny_models, lq_photo, [torch.Generator().manual_seed(s) for s in seeds], n)
    settings = SamplerSettings(make_schedule(cfg.scheduler, n), colorfix="none", guidance_dim=cfg.guidance_dim)
    trace = Trace()
    ours = restore(TorchBackend(tiny_models), lq_photo, noise, settings, trace)
    assert ref.abs().max() > 0.1  # a real image, not zeros
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert set(trace) >= {"context", "cond", "z0_lq", "step3.eps", "decoded", "image"}


def test_sampler_rejects_wrong_noise(tiny_models, lq_photo):
    cfg = tiny_models.config
    settings = SamplerSettings(make_schedule(cfg.scheduler, 4), guidance_dim=cfg.guidance_dim)
    bad = torch.zeros(2, 2, 4, 8, 8)  # 2 steps of noise for a 3-step schedule
    try:
        restore(TorchBackend(tiny_models), lq_photo, bad, settings)
    except ValueError as exc:
        assert "make_noise" in str(exc)
    else:
        raise AssertionError("wrong noise shape accepted")
