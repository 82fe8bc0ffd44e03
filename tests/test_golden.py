"""Golden values: a few numbers of a seeded tiny restoration, pinned (as diffusers' tests do).

Any unintended numeric change anywhere in the chain (preprocessing, a component, the
schedule, the noise, the LCM update, the colour fix) moves these. Tolerance: 1e-4
relative + 2e-5 absolute. Float32 re-association (other CPUs, thread counts, library
versions) moves them by about 1e-6 relative; every real change tried moved them by
more than 1e-3 (a wrong timestep, c_skip/c_out swapped, a per-batch noise draw).
If a change is intended, regenerate the numbers and say why in the commit.
"""

import pytest
import torch

from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.sampler import Trace
from interlcm.testing import photo
from interlcm.torch_backend import TorchBackend

SAMPLED = (0, 37, 101, 211)  # flat indices read from each stage
# "steps:stage": (mean, std, values at SAMPLED)
GOLDEN = {
    '3:context': (-0.0372925, 0.5812798, [0.110379, 0.188151, -0.434035, -1.097887]),
    '3:z0_lq': (0.003046, 0.0511087, [-0.00816, 0.006475, 0.064155, -0.007195]),
    '3:step1.eps': (-0.089916, 0.3497256, [-0.076107, 0.019469, -0.285015, -0.188309]),
    '3:step3.z0': (0.8429548, 5.2149548, [-5.053703, -2.556829, -2.377849, 6.62525]),
    '3:image': (0.1049604, 0.3954145, [0.615822, 0.491889, 0.676501, 0.578936]),
    '1:context': (-0.0372925, 0.5812798, [0.110379, 0.188151, -0.434035, -1.097887]),
    '1:z0_lq': (0.003046, 0.0511087, [-0.00816, 0.006475, 0.064155, -0.007195]),
    '1:step1.eps': (-0.0977803, 0.347289, [-0.093309, -0.035122, -0.279153, -0.13562]),
    '1:step1.z0': (0.2022743, 1.6910787, [-1.673516, 0.24443, -2.221824, 1.566892]),
    '1:image': (0.1058701, 0.4049119, [0.593208, 0.547256, 0.61609, 0.729856]),
}


@pytest.mark.parametrize("steps", [3, 1])
def test_tiny_restoration_matches_golden_values(tiny_models, steps):
    trace = Trace()
    Restorer(TorchBackend(tiny_models), RestoreOptions(steps=steps, seed=0)).restore(photo(64, 1), trace)
    for key, (mean, std, values) in GOLDEN.items():
        if not key.startswith(f"{steps}:"):
            continue
        got = trace[key.split(":", 1)[1]].double().flatten()
        expected = torch.tensor([mean, std, *values], dtype=torch.float64)
        actual = torch.stack([got.mean(), got.std(), *(got[i] for i in SAMPLED)])
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5, msg=lambda m, k=key: f"{k}: {m}")
