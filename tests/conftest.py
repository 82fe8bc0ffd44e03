"""Shared tiny fixtures: seeded `tiny` models, a weights folder, real photos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# One torch thread for the whole session. The suite runs on 2 cores next to its own Ray workers,
# subprocesses and browser; two spinning OpenMP threads then make a tiny restoration up to 80x slower
# (tests/test_restore.py: 0.5 s alone, 42 s beside two busy processes; 0.5 s at one thread). Tests that
# time or compare thread counts set their own (benchmarks' harness, `--threads`).
torch.set_num_threads(1)


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


def linked_export(out: Path, *sources: Path, batch: tuple[int, int, int] | None = None) -> Path:
    """An export folder of links to the files of `sources` (export folders of one preset and weights) under one
    manifest holding all their entries, with another batch range if given. Never write through the links."""
    from interlcm.export.manifest import MANIFEST, load_manifest

    manifest = load_manifest(sources[0])
    for source in sources:
        for path in source.iterdir():
            if path.name != MANIFEST and not (out / path.name).exists():
                (out / path.name).symlink_to(path.resolve())
        for entry in load_manifest(source).entries:
            manifest.upsert(entry)
    if batch is not None:
        manifest.batch = batch
    manifest.save(out)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_models, tmp_path_factory):
    """Every default tiny component exported fp32 + fp16, batch range 1..4 (traced at 2)."""
    from interlcm.components import DEFAULT_COMPONENTS
    from interlcm.export.onnx_export import export_all

    out = tmp_path_factory.mktemp("onnx")
    export_all(tiny_models, out, DEFAULT_COMPONENTS, ("fp32", "fp16"), batch=(1, 2, 4), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_photo(tiny_models, tiny_onnx, tmp_path_factory):
    """`tiny_onnx` plus the mobile RetinaFace detector and Real-ESRGAN (the seed-0 networks `tiny_weights` holds
    too): what whole photos need. Links to tiny_onnx's files (read-only: never write through them)."""
    from dataclasses import replace

    from interlcm.export.onnx_export import export_all
    from interlcm.faces.networks import FACE_NETWORKS, random_network
    from interlcm.models.rrdbnet import build_random_upsampler
    extra = tmp_path_factory.mktemp("onnx-photo-extra")
    detector = "retinaface_mobile"  # seeded as build_random(..., faces=[detector]) and init_weights seed it
    models = replace(tiny_models, faces={detector: random_network(detector, 10 + list(FACE_NETWORKS).index(detector))})
    export_all(models, extra, [detector], ("fp32", "fp16"), batch=(1, 2, 4), progress=False)
    export_all(build_random_upsampler(tiny_models.config, 0), extra, ["realesrgan"], ("fp32", "fp16"),
               batch=(1, 2, 4), progress=False, identity=tiny_models.identity)
    return linked_export(tmp_path_factory.mktemp("onnx-photo"), tiny_onnx, extra)


@pytest.fixture(scope="session")
def tiny_onnx_batch2(tiny_onnx_photo, tmp_path_factory):
    """`tiny_onnx_photo` as `interlcm-export --batch 1:1:2` records it: the same graphs (their batch axis is
    dynamic; the traced batch does not change them) under a manifest whose profile ends at batch 2."""
    return linked_export(tmp_path_factory.mktemp("onnx-batch2"), tiny_onnx_photo, batch=(1, 1, 2))


@pytest.fixture(scope="session")
def tiny_engines_batch2(tiny_onnx_batch2, tmp_path_factory):
    """fp16 "engines" of `tiny_onnx_batch2` built by the TensorRT stand-in (engines/trt_standin.py): each
    names its fp16 ONNX file, which the stand-in runs with ONNX Runtime on the CPU."""
    from interlcm.engines.trt_build import build_engines
    from interlcm.engines.trt_standin import installed

    out = tmp_path_factory.mktemp("engines-batch2")
    with installed():
        build_engines(tiny_onnx_batch2, out)
    return out


@pytest.fixture
def trt_standin():
    """TensorRT is the stand-in (engines run on the CPU) for one test."""
    from interlcm.engines.trt_standin import installed

    with installed() as standin:
        yield standin


@pytest.fixture(scope="session")
def tiny_weights_unparsed(tiny_weights, tmp_path_factory):
    """`tiny_weights` without ParseNet (links): the soft box mask alone, as exports without parsenet paste.
    A 512-px ParseNet forward takes seconds per face on a CPU."""
    out = tmp_path_factory.mktemp("weights-unparsed") / "tiny"
    for path in tiny_weights.rglob("*"):
        if path.is_file() and path.name != "parsing_parsenet.pth":
            target = out / path.relative_to(tiny_weights)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return out


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
