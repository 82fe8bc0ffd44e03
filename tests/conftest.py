"""Shared tiny fixtures: seeded `tiny` models, a weights folder, real photos."""

from __future__ import annotations

import os

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
    from interlcm.models.container import build_random

    return build_random(tiny_cfg, seed=0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    from interlcm.weights import init_weights

    return init_weights(tmp_path_factory.mktemp("weights") / "tiny", "tiny", seed=0)


@pytest.fixture
def lq_photo(tiny_cfg):
    from interlcm.testing import photo

    return photo(tiny_cfg.resolution, batch=2)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_models, tmp_path_factory):
    """Every default tiny component exported fp32 + fp16, batch range 1..4 (traced at 2)."""
    from interlcm.components import DEFAULT_COMPONENTS
    from interlcm.export.onnx_export import export_all

    out = tmp_path_factory.mktemp("onnx")
    export_all(tiny_models, out, DEFAULT_COMPONENTS, ("fp32", "fp16"), batch=(1, 2, 4), progress=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """torch at 1 thread for a module: on a 2-core machine shared with other jobs, two spinning OpenMP
    threads make the tiny model up to 20x slower; one thread is slower only on an idle machine.
    Modules that assert no timing use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def cuda_missing() -> str | None:
    """Why torch cannot use a CUDA device here (None: it can); the reason every `gpu` test skips with."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    from interlcm.export.session import cuda_device_count

    return f"torch {torch.__version__} sees no CUDA device ({cuda_device_count()[1]})"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip with the reason on machines without a CUDA device (make gpu-check runs them on one)."""
    why = cuda_missing()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
