"""The GPU paths users run, each compared with torch on the CPU: torch CUDA (fp32 with the fused step and the
CUDA-graph chain, fp16, bf16), ONNX Runtime CUDA, the face networks and Real-ESRGAN, a non-square photo with more
faces than a batch, and `interlcm-trt restore` on photos and a video.

Every test is marked `gpu` and skips with the reason on a machine without a CUDA device (tests/conftest.py);
`make gpu-check` (scripts/gpu_check.py) runs them on a GPU machine. TensorRT's own GPU tests are in test_trt.py
and test_trt_graph.py (`gpu` and `trt`).

Limits on a GPU: torch's cuDNN convolutions and ONNX Runtime CUDA run fp32 in TF32 by default (a 10-bit
mantissa, like fp16's), so fp32 on CUDA is judged by the fp16 limits of components.py; the same device with and
without the fast paths runs the same kernels and is judged by the fp32 limits.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from interlcm.components import BY_NAME
from interlcm.engines.backend import FastPath, fast_path
from interlcm.engines.photo import PhotoOptions, PhotoRestorer
from interlcm.engines.restorer import RestoreOptions, Restorer
from interlcm.parity import compare, compare_traces, format_table, require, tolerance
from interlcm.sampler import Trace
from interlcm.testing import PlacedFaces, group_photo, write_clip
from interlcm.torch_backend import TorchBackend

pytestmark = pytest.mark.gpu

CUDA_FP32 = "fp16"  # the limits fp32 on CUDA is judged by (TF32 convolutions, see the module docstring)
MIN_PSNR = 35.0  # dB, uint8 photos and frames against torch on the CPU (tiny fp16 vs fp32 measures ~50)
# a 1024x768 group photo with six faces: more than a batch of 4, so two batches per photo
SIX = ((0.15, 0.25, 0.05, 0), (0.4, 0.22, 0.04, 8), (0.7, 0.25, 0.05, -6), (0.2, 0.55, 0.045, 4),
       (0.5, 0.55, 0.05, 0), (0.8, 0.55, 0.04, -10))
HEADS = tuple((x, y / 0.75, gap * 1024 * 3, angle) for x, y, gap, angle in SIX)  # heads drawn about there


def _on_gpu(models, precision: str = "fp32") -> TorchBackend:
    return TorchBackend(copy.deepcopy(models).to("cuda"), "cuda", precision=precision)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_torch_cuda_runs_the_fast_paths_by_default_and_matches_the_cpu(tiny_models, lq_photo):
    backend = _on_gpu(tiny_models)
    fast = fast_path(backend)
    assert fast == FastPath(True, True)
    cpu = Restorer(TorchBackend(tiny_models), RestoreOptions(seed=3)).restore(lq_photo)
    plain = Restorer(backend, RestoreOptions(seed=3)).restore(lq_photo)
    graphed = Restorer(backend, fast.apply(RestoreOptions(seed=3)))
    first, again = graphed.restore(lq_photo), graphed.restore(lq_photo)  # capture, then replay
    assert sorted(graphed.chain.captured) == [2]
    limit = tolerance("colorfix_wavelet", "fp32")
    require([compare(("graph+fused vs plain",), first, plain, limit), compare(("replay",), again, first, limit),
             compare(("cuda vs cpu",), plain, cpu, tolerance("colorfix_wavelet", CUDA_FP32), image=True)],
            "torch CUDA")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_reduced_precision_matches_fp32_on_the_cpu(tiny_models, lq_photo, precision):
    """Every stage within the precision's limit of torch fp32 on the CPU; its graph replay equals its plain run."""
    backend = _on_gpu(tiny_models, precision)
    ours, ref = Trace(), Trace()
    Restorer(TorchBackend(tiny_models), RestoreOptions(seed=3)).restore(lq_photo, ref)
    plain = Restorer(backend, RestoreOptions(seed=3)).restore(lq_photo, ours)
    rows = require(compare_traces(ours, ref, precision), f"torch CUDA {precision} vs torch CPU fp32")
    assert next(r for r in rows if r.name == "image").psnr > MIN_PSNR, format_table(rows)
    graphed = Restorer(backend, RestoreOptions(seed=3, fused_step=True, cuda_graph=True)).restore(lq_photo)
    require([compare(("graph",), graphed, plain, tolerance("colorfix_wavelet", precision))], "graph vs plain")


@pytest.fixture
def ort_cuda():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider: pip install -e '.[gpu]' "
                    "(it replaces onnxruntime)")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_restores_like_torch(ort_cuda, tiny_onnx, tiny_models, lq_photo, precision):
    from interlcm.engines.ort import OrtBackend

    backend = OrtBackend(tiny_onnx, precision, provider="cuda")
    assert backend.device.type == "cuda" and not fast_path(backend).cuda_graph
    ours, ref = Trace(), Trace()
    Restorer(TorchBackend(tiny_models), RestoreOptions(seed=3)).restore(lq_photo, ref)
    Restorer(backend, RestoreOptions(seed=3)).restore(lq_photo, ours)
    require(compare_traces(ours, ref, CUDA_FP32 if precision == "fp32" else precision), f"ORT CUDA {precision}")


@pytest.mark.parametrize("name, batch, dims", [
    ("retinaface_resnet50", 2, {"height": 768, "width": 1024}),  # non-square, not the traced 640
    ("parsenet", 1, {"size": 512}),  # 469 GFLOP per face on the CPU reference
    ("realesrgan", 2, {"tile_height": 96, "tile_width": 128}),
])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_face_networks_and_realesrgan_on_torch_cuda(tiny_cfg, name, batch, dims, precision):
    from interlcm.models.container import build_random
    from interlcm.models.rrdbnet import build_random_upsampler

    make = (lambda: build_random_upsampler(tiny_cfg, 0)) if name == "realesrgan" else (
        lambda: build_random(tiny_cfg, 0, faces=[name]))
    component = BY_NAME[name]
    inputs = component.sample_inputs(tiny_cfg, batch, dims=dims)
    ref = TorchBackend(make()).run(name, **inputs)
    ours = TorchBackend(make().to("cuda"), "cuda", precision=precision).run(name, **inputs)
    limit = tolerance(name, CUDA_FP32 if precision == "fp32" else precision)
    require([compare((name, out), ours[out], ref[out], limit) for out in component.output_names], f"{name} {precision}")


def _photo_restorer(backend, fast: FastPath | None = None) -> PhotoRestorer:
    options = fast.apply(RestoreOptions(seed=1, batch=4)) if fast else RestoreOptions(seed=1, batch=4)
    return PhotoRestorer(Restorer(backend, options), PhotoOptions(save_faces=True), PlacedFaces(*SIX))


def test_a_non_square_photo_with_six_faces_restores_on_the_gpu_like_on_the_cpu(tiny_models, tiny_onnx, request):
    """1024x768, six faces in batches of 4: torch CUDA (fp32 with the fast paths, fp16), and ONNX Runtime CUDA
    and TensorRT (engines of batch 1..4, with the fused step) where they are installed."""
    import contextlib

    import onnxruntime as ort

    from interlcm.engines.trt import TrtBackend, check_cuda

    photo = group_photo((1024, 768), HEADS)
    ref = _photo_restorer(TorchBackend(tiny_models)).restore_photos([photo])[0]
    assert ref.found == 6 and ref.image.shape == (1536, 2048, 3)
    runs = {"torch cuda fp32": _on_gpu(tiny_models), "torch cuda fp16": _on_gpu(tiny_models, "fp16")}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        from interlcm.engines.ort import OrtBackend

        runs["onnxruntime cuda fp16"] = OrtBackend(tiny_onnx, "fp16", provider="cuda")
    with contextlib.ExitStack() as stack:
        if check_cuda()[0]:
            runs["tensorrt fp16"] = stack.enter_context(TrtBackend(request.getfixturevalue("real_engines")))
        for what, backend in runs.items():
            got = _photo_restorer(backend, fast_path(backend)).restore_photos([photo])[0]
            assert got.found == 6 and got.image.shape == ref.image.shape, what
            assert _psnr(got.image, ref.image) > MIN_PSNR, what
            assert min(_psnr(a, b) for a, b in zip(got.faces, ref.faces)) > MIN_PSNR, what


def test_interlcm_trt_restore_on_the_gpu(tmp_path, tiny_weights, monkeypatch):
    """The CLI on a 1024x768 photo (RetinaFace on the GPU) and a 10-frame clip of faces, with the GPU defaults,
    then at fp16, against the same command on the CPU."""
    from interlcm.engines.cli import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(group_photo((1024, 768), HEADS)).save(src / "group.png")
    face = np.asarray(Image.open(src / "group.png").resize((256, 192)))[10:74, 20:84]
    write_clip(src / "clip.mp4", [np.roll(face, i, axis=1) for i in range(10)], fps=5)

    def restore(name: str, *flags: str):
        out = tmp_path / name
        for inputs, mode in (([src / "group.png"], []), ([src / "clip.mp4"], ["--aligned"])):
            result = CliRunner().invoke(main, ["restore", *map(str, inputs), *mode, "--weights", str(tiny_weights),
                                               "--batch", "4", "--seed", "1", "--save-frames", "--out", str(out), *flags])
            assert result.exit_code == 0, result.output
        return out, result.output

    gpu, said = restore("gpu")
    assert " on cuda," in said and "; fused SE+UNet step, CUDA graph" in said and "10 frames at 5 fps" in said
    half, said = restore("fp16", "--precision", "fp16")
    assert "torch fp16 weights (fp32 norms and timestep embedding, SDPA attention, channels-last convolutions)" in said
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu, said = restore("cpu")
    assert " on cpu," in said and "; separate SE and UNet (on the CPU)" in said
    for out in (gpu, half):
        files = sorted(p.relative_to(cpu) for p in cpu.rglob("*.png"))
        assert len(files) == 11 and sorted(p.relative_to(out) for p in out.rglob("*.png")) == files
        for name in files:
            assert _psnr(np.asarray(Image.open(out / name)), np.asarray(Image.open(cpu / name))) > MIN_PSNR, name
