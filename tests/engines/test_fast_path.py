"""The fused SE+UNet step and the CUDA-graph step chain: on by default on GPUs, off on the CPU, named in the
backend line, refused in one sentence where they cannot run; and one `BackendOptions` for restore, Ray and Serve.

A GPU runs them for real in tests/engines/test_gpu.py; here a stand-in backend on a "cuda" device shows the
decision, and the torch CPU backend runs the fused step through the whole CLI.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from interlcm.engines.backend import BackendOptions, FastPath, fast_path
from interlcm.engines.cli import main, serve_main
from interlcm.engines.restorer import RestoreOptions


class Opened:
    """A backend as `fast_path` sees it: a name, a device, whether it has the fused `denoise_step`."""

    def __init__(self, name: str, device: str, fused: bool = True):
        self.name, self.device, self.fused = name, torch.device(device), fused

    def has(self, component: str) -> bool:
        return component == "denoise_step" and self.fused


@pytest.mark.parametrize("name", ["torch", "tensorrt"])
def test_on_a_gpu_both_fast_paths_run_by_default(name):
    fast = fast_path(Opened(name, "cuda"))
    assert fast == FastPath(True, True) and fast.describe() == "fused SE+UNet step, CUDA graph"
    assert fast.apply(RestoreOptions(seed=4)) == RestoreOptions(seed=4, fused_step=True, cuda_graph=True)


def test_on_a_cpu_nothing_changes_by_default():
    fast = fast_path(Opened("torch", "cpu"))
    assert fast == FastPath(False, False, "on the CPU")
    assert fast.describe() == "separate SE and UNet (on the CPU)"
    assert fast.apply(RestoreOptions()) == RestoreOptions()


def test_what_is_off_on_a_gpu_says_why():
    assert fast_path(Opened("onnxruntime", "cuda")).describe() == (
        "fused SE+UNet step (no CUDA graph: onnxruntime synchronises inside every call)")
    assert fast_path(Opened("tensorrt", "cuda", fused=False)).describe() == (
        "separate SE and UNet, CUDA graph (no denoise_step in the export)")
    assert fast_path(Opened("torch", "cuda"), fused_step=False, cuda_graph=False).describe() == (
        "separate SE and UNet (--no-fused-step; --no-cuda-graph)")
    # asked for on a CPU backend that has the fused step: it runs (the two forms agree within fp32)
    assert fast_path(Opened("onnxruntime", "cpu"), fused_step=True) == FastPath(True, False)


@pytest.mark.parametrize("opened, fused, graph, match", [
    (Opened("torch", "cpu"), None, True, r"^--cuda-graph needs a CUDA device and this backend runs on the CPU"),
    (Opened("onnxruntime", "cuda"), None, True, r"^--cuda-graph is not available on onnxruntime"),
    (Opened("onnxruntime", "cpu", fused=False), True, None, r"^--fused-step needs the denoise_step component"),
])
def test_impossible_requests_are_one_sentence(opened, fused, graph, match):
    with pytest.raises(ValueError, match=match) as info:
        fast_path(opened, fused, graph)
    assert "\n" not in str(info.value) and str(info.value).count(": ") == 1


def _restore(tmp_path, name: str, *flags: str):
    result = CliRunner().invoke(main, ["restore", "--aligned", "--preset", "tiny", "--backend", "torch", "--seed", "2",
                                       "--threads", "1", "--out", str(tmp_path / name), *flags])
    image = tmp_path / name / "face.png"
    return result, (np.asarray(Image.open(image), dtype=np.int16) if image.is_file() else None)


def test_the_cli_runs_the_fused_step_when_asked_and_says_so(tmp_path):
    """The demo face (no input) on torch CPU: two-call by default, fused with --fused-step, same picture."""
    plain, two_call = _restore(tmp_path, "plain")
    assert plain.exit_code == 0, plain.output
    assert "; separate SE and UNet (on the CPU)" in plain.output
    asked, fused = _restore(tmp_path, "fused", "--fused-step", "--timing")  # --timing lists the calls made
    assert asked.exit_code == 0, asked.output
    assert "; fused SE+UNet step\n" in asked.output
    assert "  denoise_step " in asked.output and "spatial_encoder" not in asked.output
    assert np.abs(fused - two_call).max() <= 1  # the same arithmetic in one call: 8-bit rounding at most


def test_the_cli_refuses_a_cuda_graph_on_the_cpu(tmp_path):
    result, image = _restore(tmp_path, "graph", "--cuda-graph")
    assert result.exit_code == 1 and image is None
    notice, error = result.output.strip().splitlines()  # "no input given: restoring the embedded demo face ..."
    assert notice.startswith("no input given")
    assert error == "Error: --cuda-graph needs a CUDA device and this backend runs on the CPU: leave --cuda-graph out"


def test_restore_ray_and_serve_get_the_same_backend_options(tmp_path, monkeypatch):
    """The same flags build one BackendOptions; `--ray` hands it to the job, interlcm-serve to its replicas."""
    from interlcm.engines import backend, ray_job, serve

    flags = ["--preset", "tiny", "--backend", "torch", "--precision", "bf16", "--steps", "1", "--threads", "1",
             "--no-fused-step", "--no-cuda-graph", "--batch", "3"]
    seen = {}

    class Stop(RuntimeError):
        pass

    def open_backend(options, components=None):
        seen["restore"] = options
        raise Stop("stop here")

    def run_job(spec, inputs, out, overwrite=False):
        seen["ray"] = spec.backend
        raise ValueError("stop here")

    def build_app(options, **kwargs):
        seen["serve"] = options
        raise RuntimeError("stop here")

    monkeypatch.setattr(backend, "open_backend", open_backend)
    monkeypatch.setattr(ray_job, "connect", lambda address: False)
    monkeypatch.setattr(ray_job, "run_job", run_job)
    monkeypatch.setattr(serve, "build_app", build_app)
    out = str(tmp_path / "out")
    assert CliRunner().invoke(main, ["restore", "--aligned", *flags, "--out", out]).exit_code == 1
    assert CliRunner().invoke(main, ["restore", "--aligned", *flags, "--out", out, "--ray", "local"]).exit_code == 1
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert CliRunner().invoke(serve_main, flags).exit_code == 1
    expected = BackendOptions("torch", preset="tiny", variant="1step", precision="bf16", threads=1, batch=3,
                              fused_step=False, cuda_graph=False)
    assert seen == {"restore": expected, "ray": expected, "serve": expected}
