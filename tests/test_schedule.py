import math

import pytest
import torch
from diffusers import LCMScheduler

from interlcm.config import LCM_SCHEDULER
from interlcm.schedule import guidance_embedding, inference_steps_for, make_noise, make_schedule


@pytest.mark.parametrize("n, expected", [(4, (999, 759, 499, 259)), (2, (999, 499))])
def test_timesteps_match_diffusers(n, expected):
    ref = LCMScheduler(**LCM_SCHEDULER)
    ref.set_timesteps(n)
    sched = make_schedule(LCM_SCHEDULER, n)
    assert sched.timesteps == expected == tuple(ref.timesteps.tolist())


@pytest.mark.parametrize("n", [4, 2])
def test_step_constants_match_diffusers(n):
    ref = LCMScheduler(**LCM_SCHEDULER)
    for step in make_schedule(LCM_SCHEDULER, n).steps:
        a = ref.alphas_cumprod[step.timestep]
        assert step.sqrt_alpha == pytest.approx(a.sqrt().item(), rel=1e-7)
        assert step.sqrt_one_minus_alpha == pytest.approx((1 - a).sqrt().item(), rel=1e-7)
        c_skip, c_out = ref.get_scalings_for_boundary_condition_discrete(step.timestep)
        assert (step.c_skip, step.c_out) == pytest.approx((c_skip, c_out), rel=1e-9)


def test_guidance_embedding_matches_diffusers():
    from diffusers import LatentConsistencyModelPipeline as P

    ref = P.get_guidance_scale_embedding(None, torch.tensor([7.0, 7.0]), embedding_dim=256)
    ours = guidance_embedding(8.0, 256, 2)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, guidance_embedding(7.0, 256, 2))


def test_noise_contract():
    # one face's noise: randn((N - 1, 1, C, h, w)) from the seed, the same for every face of a batch
    one = make_noise(7, 4, 1, 4, (8, 8))
    assert one.shape == (3, 1, 4, 8, 8) and one.dtype == torch.float32
    assert torch.equal(one, torch.randn((3, 1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7)))
    three = make_noise(7, 4, 3, 4, (8, 8))
    assert three.shape == (3, 3, 4, 8, 8)
    for i in range(3):
        assert torch.equal(three[:, i : i + 1], one)
    assert not torch.equal(one, make_noise(8, 4, 1, 4, (8, 8)))
    # training draws independent noise per sample
    per = make_noise(7, 4, 2, 4, (8, 8), per_sample=True)
    assert torch.equal(per, torch.randn((3, 2, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7)))


def test_step_counts():
    assert inference_steps_for(3) == 4 and inference_steps_for(1) == 2
    with pytest.raises(ValueError, match="at least 2"):
        make_schedule(LCM_SCHEDULER, 1)
    assert math.isclose(make_schedule(LCM_SCHEDULER, 4).steps[0].c_out, 1.0, abs_tol=1e-8)
